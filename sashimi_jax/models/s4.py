"""S4 / S4D block: SSM convolution + D skip + GELU + output linear (GLU or identity).

Matches the reference's standalone S4Block (state-spaces/s4 models/s4/s4.py, as
used by SaShiMi): FFTConv(kernel) -> + D u -> dropout -> GELU -> dropout ->
Linear(H, 2H) + GLU (final_act="glu") or Linear(H, H) (final_act="id").
With `pre_conv_width` W > 0, a residual causal convolution of W tokens (`input_conv.py`) runs
first (as the short convolutions before the SSM in H3 and Mamba): the SSM and its D skip see
u + conv(u); its recurrent state is then {"conv": last W-1 inputs, "ssm": the kernel's state}.

The SSM parameters live in the child module `kernel` (`models/kernels.py`, one class per layer
type); all of them except `C` take the SSM learning rate and no weight decay (see
docs/ARCHITECTURE.md).
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from sashimi_jax.models import kernels
from sashimi_jax.models import layers
from sashimi_jax.models.input_conv import CausalInputConv
from sashimi_jax.models.ssm import chunkconv
from sashimi_jax.models.ssm import fftconv
from sashimi_jax.models.ssm import freqconv

FINAL_ACTS = ("glu", "id")
# How the long convolution is computed (see README "Speed"): "fft" builds the kernel in time and
# uses three FFTs; "fft_freq" evaluates the kernel's spectrum directly (two FFTs); "chunked" passes
# the SSM state between chunks (matmuls, no FFT); "auto" picks for jax.default_backend() when
# traced (an AOT compile for another platform resolves it first: benchmarks/tpu_aot.py). Not
# lax.platform_dependent: under autodiff a switch pads each branch's residuals with zeros shaped
# like the others', which scanned layers can materialise (SC09 on TPU read 7.6 GiB/chip with it).
CONV_IMPLS = ("auto", "fft", "fft_freq", "chunked")
# Chosen by benchmarks/conv_cost.py, tpu_aot.py and model_speed.py (README "Speed"): on CPU chunks
# were 5% slower in the whole train step; on TPU the SC09 train step with `chunked` needs 2.3x
# fewer FLOPs (every loop trip counted) and 0.76x the peak memory of `fft`.
AUTO_CONV_IMPL = {"tpu": "chunked", "cpu": "fft", "cuda": "fft", "rocm": "fft"}
DEFAULT_CHUNK_TOKENS = 64
CHUNK_TOKENS = {"tpu": 64, "cpu": 64, "cuda": 64, "rocm": 64}


def resolve_conv_impl(conv_impl: str, platform: str) -> str:
  """`auto` -> the implementation chosen for `platform` ("cpu", "tpu", "cuda", ...)."""
  if conv_impl != "auto":
    return conv_impl
  return AUTO_CONV_IMPL.get(platform, "fft")


class S4Block(nnx.Module):
  """S4 (DPLR) or S4D layer with output projection, (B, L, H) -> (B, L, H)."""

  def __init__(self, d_model: int, *, l_max: int, layer: str, d_state: int = 64, n_ssm: int = 1,
               final_act: str = "glu", dropout: float = 0.0, init: Optional[str] = None,
               disc: Optional[str] = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
               conv_impl: str = "auto", pre_conv_width: int = 0, pre_conv_kind: str = "dense",
               rngs: nnx.Rngs):
    if conv_impl not in CONV_IMPLS:
      raise ValueError(f"unknown conv_impl {conv_impl!r}; expected one of {CONV_IMPLS}")
    if final_act not in FINAL_ACTS:
      raise ValueError(f"unknown final_act {final_act!r}; expected one of {FINAL_ACTS}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    self.d_model = d_model
    self.conv_impl = conv_impl
    self.final_act = final_act
    self.dropout = float(dropout)
    self.kernel = kernels.ssm_kernel(d_model, layer=layer, d_state=d_state, n_ssm=n_ssm,
                                     init=init, disc=disc, dt_min=dt_min, dt_max=dt_max,
                                     l_max=l_max, rngs=rngs)
    self.D = nnx.Param(jax.random.normal(rngs.params(), (d_model,), jnp.float32))
    self.pre_conv = nnx.data(CausalInputConv(d_model, pre_conv_width, kind=pre_conv_kind,
                                             rngs=rngs) if pre_conv_width > 0 else None)
    d_out = 2 * d_model if final_act == "glu" else d_model
    self.output_linear = layers.Dense(d_model, d_out, rngs=rngs)

  def _dropout(self, y, deterministic, rngs):
    if deterministic or self.dropout == 0.0:
      return y
    if rngs is None:
      raise ValueError("S4Block with dropout > 0 needs rngs when deterministic=False")
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.dropout, y.shape)
    return jnp.where(keep, y / (1.0 - self.dropout), 0.0).astype(y.dtype)

  def _output(self, y):
    y = self.output_linear(y)  # a 2-D (B*L, H) matmul inside: see layers.Dense.
    if self.final_act == "glu":
      a, b = jnp.split(y, 2, axis=-1)
      y = a * jax.nn.sigmoid(b)
    return y

  def __call__(self, x: jax.Array, *, deterministic: bool = True,
               rngs: Optional[nnx.Rngs] = None) -> jax.Array:
    """x (B, L, H) -> (B, L, H), causal."""
    if x.ndim != 3 or x.shape[-1] != self.d_model:
      raise ValueError(f"S4Block expects (B, L, {self.d_model}) input, got shape {x.shape}")
    if self.pre_conv is not None:
      x = self.pre_conv(x).astype(x.dtype)
    y = self._convolve(x) + x.astype(jnp.float32) * self.D[...]
    y = y.astype(x.dtype)
    y = self._dropout(y, deterministic, rngs)  # Reference: FFTConv's dropout, before its GELU.
    y = layers.gelu(y)
    y = self._dropout(y, deterministic, rngs)  # Reference: S4Block's dropout.
    return self._output(y)

  def _convolve(self, x: jax.Array, conv_impl: Optional[str] = None,
                platform: Optional[str] = None) -> jax.Array:
    """Causal SSM convolution of x (B, L, H) -> (B, L, H) float32 by `conv_impl`."""
    conv_impl = conv_impl or self.conv_impl
    length = x.shape[1]
    self.kernel.check_length(length)
    if conv_impl == "auto":
      platform = jax.default_backend()
      conv_impl = resolve_conv_impl(conv_impl, platform)
    if conv_impl == "fft":
      return fftconv.causal_fft_conv(x, self.kernel(length))
    if conv_impl == "fft_freq":
      return freqconv.causal_spectrum_conv(x, self.kernel.spectrum(length))
    chunk = min(CHUNK_TOKENS.get(platform, DEFAULT_CHUNK_TOKENS), length)
    return chunkconv.chunked_causal_conv(x, self.kernel.chunk_ops(chunk))

  def setup_recurrence(self) -> dict:
    """Discretised recurrence matrices; compute once, outside any sampling loop."""
    return self.kernel.setup_recurrence()

  def init_state(self, batch_size: int):
    """Zero recurrent state (fixed-shape float32 pytree) for `batch_size` sequences."""
    if self.pre_conv is None:
      return self.kernel.init_state(batch_size)
    return {"conv": self.pre_conv.init_state(batch_size),
            "ssm": self.kernel.init_state(batch_size)}

  def step(self, rec: dict, state, x: jax.Array):
    """One token: x (B, H) -> (y (B, H), new state). Pure; no dropout."""
    if self.pre_conv is not None:
      dtype = x.dtype
      x, conv_state = self.pre_conv.step(state["conv"], x)
      x = x.astype(dtype)
      y, ssm_state = self.kernel.step(rec, state["ssm"], x)
      state = {"conv": conv_state, "ssm": ssm_state}
    else:
      y, state = self.kernel.step(rec, state, x)
    y = y + x.astype(jnp.float32) * self.D[...]
    y = layers.gelu(y.astype(x.dtype))
    return self._output(y), state

  def prefill_state(self, rec: dict, x: jax.Array):
    """State after consuming x (B, L, H) (the block's input) from the zero state."""
    if self.pre_conv is None:
      return self.kernel.prefill_state(rec, x)
    return {"conv": self.pre_conv.prefill_state(x),
            "ssm": self.kernel.prefill_state(rec, self.pre_conv(x))}
