"""SSM kernel modules: S4D (diagonal) and DPLR (S4), chosen by name through `KERNELS`.

Each module owns one layer's SSM parameters and hands them, as explicit arrays, to the pure
functions in `models/ssm/` that build convolution kernels, spectra, chunk operators and the
recurrence. As in the reference's `kernel_registry`, a layer name maps to one class.

Parameters (float32; complex values as (..., 2) real/imag pairs), H channels, S = n_ssm copies,
N2 = d_state / 2 modes:
  log_dt (H,), log_A_real (S, N2) = log(-Re A) (keeps Re A < 0), A_imag (S, N2) = Im A,
  B (S, N2, 2), C (H, N2, 2); DPLR also has P (1, S, N2, 2), the rank-1 term, and its C is the
  reference's C~ = C (I - A_bar^l_max).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax.models.ssm import chunkconv
from sashimi_jax.models.ssm import complex_pairs
from sashimi_jax.models.ssm import discretize
from sashimi_jax.models.ssm import dplr
from sashimi_jax.models.ssm import freqconv
from sashimi_jax.models.ssm import init as ssm_init
from sashimi_jax.models.ssm import s4d


class _SSMKernel(nnx.Module):
  """Parameters and checks shared by both kernel types; subclasses define the math."""

  default_init: str
  default_disc: str
  inits: tuple

  def __init__(self, d_model: int, *, d_state: int, n_ssm: int, init: str | None,
               disc: str | None, dt_min: float, dt_max: float, l_max: int, rngs: nnx.Rngs):
    if d_state <= 0 or d_state % 2:
      raise ValueError(f"d_state must be a positive even number, got {d_state}")
    if n_ssm <= 0 or d_model % n_ssm:
      raise ValueError(f"n_ssm={n_ssm} must be positive and divide d_model={d_model}")
    if l_max is None or l_max <= 0:
      raise ValueError(f"l_max must be a positive int, got {l_max}")
    init = init if init is not None else self.default_init
    disc = disc if disc is not None else self.default_disc
    discretize.check_disc(disc)
    self.disc = disc
    self.l_max = int(l_max)
    A, B, extra = self._init_matrices(init, d_state, disc)
    tile = lambda x: np.broadcast_to(x, (n_ssm,) + x.shape).copy()
    self.log_dt = nnx.Param(discretize.sample_log_dt(rngs.params(), d_model, dt_min, dt_max))
    self.log_A_real = nnx.Param(jnp.asarray(np.log(np.maximum(-tile(A.real), 1e-4)), jnp.float32))
    self.A_imag = nnx.Param(jnp.asarray(tile(A.imag), jnp.float32))
    self.B = nnx.Param(complex_pairs.to_pairs(tile(B)))
    # Complex standard normal C: each of Re, Im has variance 1/2 (torch.randn, cfloat).
    C = jax.random.normal(rngs.params(), (d_model, d_state // 2, 2), jnp.float32) * np.sqrt(0.5)
    self._init_extra(extra, tile)
    self.C = nnx.Param(self._stored_c(C))

  def _init_matrices(self, init, d_state, disc):
    raise NotImplementedError

  def _init_extra(self, extra, tile):
    """Parameters beyond (log_dt, A, B, C)."""

  def _stored_c(self, C):
    return C

  def ssm_args(self) -> tuple:
    """The parameters as the positional arrays of the `models/ssm/` functions."""
    return (self.log_dt[...], self.log_A_real[...], self.A_imag[...], self.B[...], self.C[...])

  def check_length(self, length: int):
    """Raises if this kernel cannot produce `length` taps."""


class S4DKernel(_SSMKernel):
  """Diagonal SSM (S4D): kernels of any length, O(N) diagonal recurrence."""

  default_init = "diag-lin"
  default_disc = "zoh"
  inits = ssm_init.DIAG_INITS

  def _init_matrices(self, init, d_state, disc):
    A, B = ssm_init.diag_init(init, d_state)
    return A, B, None

  def __call__(self, length: int) -> jax.Array:
    """Convolution kernel (H, length) float32."""
    return s4d.s4d_kernel(*self.ssm_args(), length=length, disc=self.disc)

  def spectrum(self, length: int) -> jax.Array:
    """rfft at n = 2 length of the kernel's first `length` taps: (H, length + 1) complex64."""
    return freqconv.s4d_spectrum(*self.ssm_args(), length=length, disc=self.disc)

  def chunk_ops(self, chunk: int) -> dict:
    """Operators of chunkconv.chunked_causal_conv for chunks of `chunk` tokens."""
    return chunkconv.s4d_chunk_ops(*self.ssm_args(), chunk=chunk, disc=self.disc)

  def setup_recurrence(self) -> dict:
    """Discretised step matrices (a pytree of float32 arrays); call once, outside loops."""
    return s4d.s4d_recurrence(*self.ssm_args(), disc=self.disc)

  def init_state(self, batch_size: int):
    """Zero state: a pair of (N2, B, H) float32 arrays (s4d.s4d_step's sheared basis)."""
    return s4d.s4d_init_state(batch_size, self.C.shape[0], self.C.shape[1])

  def step(self, rec: dict, state, u: jax.Array):
    """u (B, H) -> (y (B, H), state)."""
    return s4d.s4d_step(rec, state, u)

  def prefill_state(self, rec: dict, u: jax.Array):
    """State after consuming u (B, L, H) from the zero state."""
    return s4d.s4d_prefill_state(rec, u)


class DPLRKernel(_SSMKernel):
  """Diagonal plus low-rank SSM (S4): C~ ties the kernel to l_max; exact O(N) recurrence."""

  default_init = "legs"
  default_disc = "bilinear"
  inits = ssm_init.DPLR_INITS

  def _init_matrices(self, init, d_state, disc):
    if disc != "bilinear":
      raise ValueError(f"layer 's4' (DPLR) supports only disc='bilinear', got {disc!r}")
    A, P, B = ssm_init.dplr_init(init, d_state)
    return A, B, P

  def _init_extra(self, P, tile):
    self.P = nnx.Param(complex_pairs.to_pairs(tile(P[0])[None]))

  def _stored_c(self, C):
    args = self.ssm_args_without_c()
    # One compiled call instead of ~2 log2(l_max) eager matmuls when built eagerly.
    c_tilde = jax.jit(dplr.c_tilde_from_c, static_argnames="length")
    return c_tilde(*args, C, length=self.l_max)

  def ssm_args_without_c(self) -> tuple:
    return (self.log_dt[...], self.log_A_real[...], self.A_imag[...], self.B[...], self.P[...])

  def ssm_args(self) -> tuple:
    return self.ssm_args_without_c() + (self.C[...],)

  def check_length(self, length: int):
    if length > self.l_max:
      raise ValueError(f"S4 (DPLR) layer built for l_max={self.l_max} got a sequence of "
                       f"length {length}; its C~ parameterisation fixes the kernel length")

  def __call__(self, length: int) -> jax.Array:
    """Convolution kernel (H, length) float32: the l_max-long kernel truncated, as the
    reference does, so length <= l_max."""
    self.check_length(length)
    return dplr.dplr_kernel(*self.ssm_args(), length=self.l_max)[:, :length]

  def spectrum(self, length: int) -> jax.Array:
    """rfft at n = 2 length of the kernel's first `length` taps: (H, length + 1) complex64."""
    self.check_length(length)
    return freqconv.dplr_spectrum(*self.ssm_args(), length=length, l_max=self.l_max)

  def chunk_ops(self, chunk: int) -> dict:
    """Operators of chunkconv.chunked_causal_conv for chunks of `chunk` tokens."""
    return chunkconv.dplr_chunk_ops(*self.ssm_args(), chunk=chunk, l_max=self.l_max)

  def setup_recurrence(self) -> dict:
    """Discretised step matrices (a pytree of float32 arrays); call once, outside loops."""
    return dplr.dplr_recurrence(*self.ssm_args(), length=self.l_max)

  def init_state(self, batch_size: int):
    """Zero state: a pair of (N2, B, H) float32 arrays (dplr.dplr_step's sheared basis)."""
    return dplr.dplr_init_state(batch_size, self.C.shape[0], 2 * self.C.shape[1])

  def step(self, rec: dict, state, u: jax.Array):
    """u (B, H) -> (y (B, H), state)."""
    return dplr.dplr_step(rec, state, u)

  def prefill_state(self, rec: dict, u: jax.Array):
    """State after consuming u (B, L, H) from the zero state."""
    return dplr.dplr_prefill_state(rec, u)


# Layer name (config `model.layer`) -> kernel class.
KERNELS = {"s4": DPLRKernel, "s4d": S4DKernel}
LAYERS = tuple(KERNELS)
INITS = {name: cls.inits for name, cls in KERNELS.items()}
DEFAULT_INIT = {name: cls.default_init for name, cls in KERNELS.items()}
DEFAULT_DISC = {name: cls.default_disc for name, cls in KERNELS.items()}


def ssm_kernel(d_model: int, *, layer: str, d_state: int, n_ssm: int, init: str | None = None,
               disc: str | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1, l_max: int,
               rngs: nnx.Rngs) -> _SSMKernel:
  """The kernel module for `layer` ("s4" or "s4d"); init/disc None take the layer's default."""
  if layer not in KERNELS:
    raise ValueError(f"unknown layer {layer!r}; expected one of {LAYERS}")
  return KERNELS[layer](d_model, d_state=d_state, n_ssm=n_ssm, init=init, disc=disc,
                        dt_min=dt_min, dt_max=dt_max, l_max=l_max, rngs=rngs)
