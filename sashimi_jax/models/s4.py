"""S4 / S4D block: SSM convolution + D skip + GELU + output linear (GLU or identity).

Matches the reference's standalone S4Block (state-spaces/s4 models/s4/s4.py, as
used by SaShiMi): FFTConv(kernel) -> + D u -> dropout -> GELU -> dropout ->
Linear(H, 2H) + GLU (final_act="glu") or Linear(H, H) (final_act="id").

The SSM parameters live in the child module `kernel`; all of them except `C`
take the SSM learning rate and no weight decay (see docs/ARCHITECTURE.md).
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax.models import layers
from sashimi_jax.models.ssm import chunkconv
from sashimi_jax.models.ssm import complex_pairs
from sashimi_jax.models.ssm import discretize
from sashimi_jax.models.ssm import dplr
from sashimi_jax.models.ssm import fftconv
from sashimi_jax.models.ssm import freqconv
from sashimi_jax.models.ssm import init as ssm_init
from sashimi_jax.models.ssm import s4d

LAYERS = ("s4", "s4d")
FINAL_ACTS = ("glu", "id")
DEFAULT_INIT = {"s4": "legs", "s4d": "diag-lin"}
DEFAULT_DISC = {"s4": "bilinear", "s4d": "zoh"}
INITS = {"s4": ssm_init.DPLR_INITS, "s4d": ssm_init.DIAG_INITS}
# How the long convolution is computed (see README "Speed"): "fft" builds the kernel in time and
# uses three FFTs; "fft_freq" evaluates the kernel's spectrum directly (two FFTs); "chunked" passes
# the SSM state between chunks (matmuls, no FFT); "auto" picks for jax.default_backend() when
# traced (an AOT compile for another platform resolves it first: benchmarks/tpu_aot.py). Not
# lax.platform_dependent: under autodiff a switch pads each branch's residuals with zeros shaped
# like the others', which scanned layers can materialise (SC09 on TPU read 7.6 GiB/chip with it).
CONV_IMPLS = ("auto", "fft", "fft_freq", "chunked")
# Chosen by benchmarks/conv_cost.py, tpu_aot.py and model_speed.py (README "Speed"): on CPU chunks
# were 5% slower in the whole train step. On TPU `chunked` needs 2.4x fewer FLOPs but 3.1x the
# peak memory of `fft` in the SC09 train step, so TPU stays on `fft` until that is fixed.
AUTO_CONV_IMPL = {"tpu": "fft", "cpu": "fft", "cuda": "fft", "rocm": "fft"}
DEFAULT_CHUNK_TOKENS = 64
CHUNK_TOKENS = {"tpu": 64, "cpu": 64, "cuda": 64, "rocm": 64}


def resolve_conv_impl(conv_impl: str, platform: str) -> str:
  """`auto` -> the implementation chosen for `platform` ("cpu", "tpu", "cuda", ...)."""
  if conv_impl != "auto":
    return conv_impl
  return AUTO_CONV_IMPL.get(platform, "fft")


class SSMKernel(nnx.Module):
  """Owns the SSM parameters of one S4 layer and turns them into kernels/recurrences.

  Parameters (float32; complex values as (..., 2) real/imag pairs):
    log_dt (H,), log_A_real (S, N/2) = log(-Re A) (keeps Re A < 0), A_imag (S, N/2) = Im A,
    B (S, N/2, 2),
    C (H, N/2, 2), and for layer="s4" also P (1, S, N/2, 2) (rank-1 term; C is then
    the reference's C~ = C (I - A_bar^l_max)).
  """

  def __init__(self, d_model: int, *, layer: str, d_state: int, n_ssm: int, init: str,
               disc: str, dt_min: float, dt_max: float, l_max: int, rngs: nnx.Rngs):
    if layer not in LAYERS:
      raise ValueError(f"unknown layer {layer!r}; expected one of {LAYERS}")
    if d_state <= 0 or d_state % 2:
      raise ValueError(f"d_state must be a positive even number, got {d_state}")
    if n_ssm <= 0 or d_model % n_ssm:
      raise ValueError(f"n_ssm={n_ssm} must be positive and divide d_model={d_model}")
    if l_max is None or l_max <= 0:
      raise ValueError(f"l_max must be a positive int, got {l_max}")
    discretize.check_disc(disc)
    self.layer = layer
    self.disc = disc
    self.l_max = int(l_max)
    num_modes = d_state // 2
    if layer == "s4d":
      A, B = ssm_init.diag_init(init, d_state)
    else:
      if disc != "bilinear":
        raise ValueError(f"layer 's4' (DPLR) supports only disc='bilinear', got {disc!r}")
      A, P, B = ssm_init.dplr_init(init, d_state)
    tile = lambda x: np.broadcast_to(x, (n_ssm,) + x.shape).copy()
    self.log_dt = nnx.Param(discretize.sample_log_dt(rngs.params(), d_model, dt_min, dt_max))
    self.log_A_real = nnx.Param(jnp.asarray(np.log(np.maximum(-tile(A.real), 1e-4)), jnp.float32))
    self.A_imag = nnx.Param(jnp.asarray(tile(A.imag), jnp.float32))
    self.B = nnx.Param(complex_pairs.to_pairs(tile(B)))
    # Complex standard normal C: each of Re, Im has variance 1/2 (torch.randn, cfloat).
    C = jax.random.normal(rngs.params(), (d_model, num_modes, 2), jnp.float32) * np.sqrt(0.5)
    if layer == "s4":
      self.P = nnx.Param(complex_pairs.to_pairs(tile(P[0])[None]))
      C = self._c_tilde_from_c(C)
    self.C = nnx.Param(C)

  def _ssm_args(self):
    """(log_dt, log_A_real, A_imag, B[, P]) arrays, then C."""
    args = (self.log_dt[...], self.log_A_real[...], self.A_imag[...], self.B[...])
    if self.layer == "s4":
      args += (self.P[...],)
    return args + (self.C[...],)

  def __call__(self, length: int) -> jax.Array:
    """Convolution kernel (H, length) float32.

    S4D: any length. S4 (DPLR): C~ ties the kernel to l_max, so length <= l_max
    and the l_max-long kernel is truncated (as the reference does).
    """
    if self.layer == "s4d":
      return s4d.s4d_kernel(*self._ssm_args(), length=length, disc=self.disc)
    self._check_length(length)
    return dplr.dplr_kernel(*self._ssm_args(), length=self.l_max)[:, :length]

  def spectrum(self, length: int) -> jax.Array:
    """rfft at n = 2 length of the kernel's first `length` taps: (H, length + 1) complex64."""
    if self.layer == "s4d":
      return freqconv.s4d_spectrum(*self._ssm_args(), length=length, disc=self.disc)
    self._check_length(length)
    return freqconv.dplr_spectrum(*self._ssm_args(), length=length, l_max=self.l_max)

  def chunk_ops(self, chunk: int) -> dict:
    """Operators of chunkconv.chunked_causal_conv for chunks of `chunk` tokens."""
    if self.layer == "s4d":
      return chunkconv.s4d_chunk_ops(*self._ssm_args(), chunk=chunk, disc=self.disc)
    return chunkconv.dplr_chunk_ops(*self._ssm_args(), chunk=chunk, l_max=self.l_max)

  def _check_length(self, length: int):
    if self.layer == "s4" and length > self.l_max:
      raise ValueError(f"S4 (DPLR) layer built for l_max={self.l_max} got a sequence of "
                       f"length {length}; its C~ parameterisation fixes the kernel length")

  def _c_tilde_from_c(self, C):
    args = (self.log_dt[...], self.log_A_real[...], self.A_imag[...], self.B[...], self.P[...])
    # One compiled call instead of ~2 log2(l_max) eager matmuls when built eagerly.
    c_tilde = jax.jit(dplr.c_tilde_from_c, static_argnames="length")
    return c_tilde(*args, C, length=self.l_max)

  def setup_recurrence(self) -> dict:
    """Discretised step matrices (a pytree of float32 arrays); call once, outside loops."""
    if self.layer == "s4d":
      return s4d.s4d_recurrence(*self._ssm_args(), disc=self.disc)
    return dplr.dplr_recurrence(*self._ssm_args(), length=self.l_max)

  def init_state(self, batch_size: int):
    """Zero state: a (Re s, Im s) pair of (B, H, N/2) float32 arrays (fixed shapes)."""
    num_channels, num_modes = self.C.shape[0], self.C.shape[1]
    if self.layer == "s4d":
      return s4d.s4d_init_state(batch_size, num_channels, num_modes)
    return dplr.dplr_init_state(batch_size, num_channels, 2 * num_modes)

  def step(self, rec: dict, state, u: jax.Array):
    """u (B, H) -> (y (B, H), state)."""
    if self.layer == "s4d":
      return s4d.s4d_step(rec, state, u)
    return dplr.dplr_step(rec, state, u)

  def prefill_state(self, rec: dict, u: jax.Array):
    """State after consuming u (B, L, H) from the zero state."""
    if self.layer == "s4d":
      return s4d.s4d_prefill_state(rec, u)
    return dplr.dplr_prefill_state(rec, u)


class S4Block(nnx.Module):
  """S4 (DPLR) or S4D layer with output projection, (B, L, H) -> (B, L, H)."""

  def __init__(self, d_model: int, *, l_max: int, layer: str, d_state: int = 64, n_ssm: int = 1,
               final_act: str = "glu", dropout: float = 0.0, init: Optional[str] = None,
               disc: Optional[str] = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
               conv_impl: str = "auto", rngs: nnx.Rngs):
    if conv_impl not in CONV_IMPLS:
      raise ValueError(f"unknown conv_impl {conv_impl!r}; expected one of {CONV_IMPLS}")
    if layer not in LAYERS:
      raise ValueError(f"unknown layer {layer!r}; expected one of {LAYERS}")
    if final_act not in FINAL_ACTS:
      raise ValueError(f"unknown final_act {final_act!r}; expected one of {FINAL_ACTS}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    self.d_model = d_model
    self.conv_impl = conv_impl
    self.final_act = final_act
    self.dropout = float(dropout)
    self.kernel = SSMKernel(
        d_model, layer=layer, d_state=d_state, n_ssm=n_ssm,
        init=init if init is not None else DEFAULT_INIT[layer],
        disc=disc if disc is not None else DEFAULT_DISC[layer],
        dt_min=dt_min, dt_max=dt_max, l_max=l_max, rngs=rngs)
    self.D = nnx.Param(jax.random.normal(rngs.params(), (d_model,), jnp.float32))
    d_out = 2 * d_model if final_act == "glu" else d_model
    self.output_linear = layers.torch_linear(d_model, d_out, rngs=rngs)

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
    y = self._convolve(x) + x.astype(jnp.float32) * self.D[...]
    y = y.astype(x.dtype)
    y = self._dropout(y, deterministic, rngs)  # Reference: FFTConv's dropout, before its GELU.
    y = jax.nn.gelu(y, approximate=False)
    y = self._dropout(y, deterministic, rngs)  # Reference: S4Block's dropout.
    return self._output(y)

  def _convolve(self, x: jax.Array, conv_impl: Optional[str] = None,
                platform: Optional[str] = None) -> jax.Array:
    """Causal SSM convolution of x (B, L, H) -> (B, L, H) float32 by `conv_impl`."""
    conv_impl = conv_impl or self.conv_impl
    length = x.shape[1]
    self.kernel._check_length(length)  # pylint: disable=protected-access
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
    return self.kernel.init_state(batch_size)

  def step(self, rec: dict, state, x: jax.Array):
    """One token: x (B, H) -> (y (B, H), new state). Pure; no dropout."""
    y, state = self.kernel.step(rec, state, x)
    y = y + x.astype(jnp.float32) * self.D[...]
    y = jax.nn.gelu(y.astype(x.dtype), approximate=False)
    return self._output(y), state

  def prefill_state(self, rec: dict, x: jax.Array):
    """State after consuming x (B, L, H) from the zero state."""
    return self.kernel.prefill_state(rec, x)
