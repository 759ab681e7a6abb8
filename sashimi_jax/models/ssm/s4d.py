"""S4D: diagonal SSM kernels, recurrence and prefill as pure functions.

Parameters (explicit arrays, float32):
  log_dt (H,), log_A_real (S, N2) = log(-Re A), A_imag (S, N2),
  B (S, N2, 2), C (H, N2, 2); S = n_ssm divides H, channel h uses SSM h % S.
Complex values are real/imag pairs; the state is conjugate-symmetric, so only
N2 = N / 2 modes are kept and outputs take 2 Re(.).
"""

import jax
import jax.numpy as jnp

from sashimi_jax.models.ssm import complex_pairs
from sashimi_jax.models.ssm import discretize
from sashimi_jax.models.ssm import sheared
from sashimi_jax.models.ssm import vandermonde


def tile_ssm(x: jax.Array, num_channels: int) -> jax.Array:
  """(S, ...) -> (H, ...): channel h uses SSM copy h % S (the reference's order)."""
  num_ssm = x.shape[0]
  if num_channels % num_ssm:
    raise ValueError(f"n_ssm={num_ssm} must divide the number of channels H={num_channels}")
  return jnp.tile(x, (num_channels // num_ssm,) + (1,) * (x.ndim - 1))


def continuous_params(log_dt, log_A_real, A_imag, B, C):
  """Stored parameters -> (dt (H, 1) float32, A, B, C (H, N2) complex64)."""
  num_channels = log_dt.shape[0]
  A = jax.lax.complex(-jnp.exp(log_A_real), A_imag)
  A = tile_ssm(A, num_channels)
  B = tile_ssm(complex_pairs.to_complex(B), num_channels)
  dt = jnp.exp(log_dt)[:, None]
  return dt, A, B, complex_pairs.to_complex(C)


def s4d_kernel(log_dt, log_A_real, A_imag, B, C, *, length: int, disc: str) -> jax.Array:
  """Convolution kernel K[h, l] = 2 Re sum_n C A_bar^l B_bar: (H, length) float32."""
  dt, A, B, C = continuous_params(log_dt, log_A_real, A_imag, B, C)
  log_A_bar, _, B_bar = discretize.discretize_diag(dt, A, B, disc)
  return vandermonde.vandermonde_kernel(C * B_bar, log_A_bar, length)


def _split(z):
  """complex -> (Re, Im) float32 pair of arrays."""
  return jnp.real(z).astype(jnp.float32), jnp.imag(z).astype(jnp.float32)


def s4d_recurrence(log_dt, log_A_real, A_imag, B, C, *, disc: str) -> dict:
  """Discretised matrices for stepping and prefill.

  The step works on real arrays laid out like the state (plain elementwise arithmetic); see
  `s4d_step` for its sheared form. Prefill uses log A_bar and 2 C B_bar.

  Returns:
    {"shear": the sheared step's (N2, 1, H) float32 coefficients, "CB_bar" (= 2 C B_bar) and
    "log_A_bar": (Re, Im) pairs of (H, N2) float32}.
  """
  dt, A, B, C = continuous_params(log_dt, log_A_real, A_imag, B, C)
  log_A_bar, A_bar, B_bar = discretize.discretize_diag(dt, A, B, disc)
  return {"shear": sheared.coefficients(A_bar, {"u": 2.0 * C * B_bar}),
          "CB_bar": _split(2.0 * C * B_bar), "log_A_bar": _split(log_A_bar)}


def s4d_init_state(batch_size: int, num_channels: int, num_modes: int):
  """Zero state: (q_x, q_y), each (N2, B, H) float32 (see `s4d_step`; batch on axis 1)."""
  zeros = jnp.zeros((num_modes, batch_size, num_channels), jnp.float32)
  return (zeros, zeros)


def s4d_step(rec: dict, state, u: jax.Array):
  """One step x_k = A_bar x_{k-1} + B_bar u_k, y_k = 2 Re(C x_k), as two in-place updates.

  Each mode's state is scaled by its 2 C (a diagonal change of basis, exact whenever C has no
  zero entry and harmless otherwise: such a mode never reaches the output): s = 2 C x steps as
  s_k = A_bar s_{k-1} + (2 C B_bar) u_k with y_k = sum_n Re s_k, in the sheared basis of
  `sheared.py` (q_x = Re s), so y = sum_n q_x.

  Args:
    rec: from s4d_recurrence.
    state: (q_x, q_y) pair of (N2, B, H) float32.
    u: (B, H).

  Returns:
    y (B, H) float32, new state.
  """
  q_x, q_y = sheared.step(rec["shear"], state, {"u": u})
  return jnp.sum(q_x, axis=0), (q_x, q_y)


def s4d_prefill_state(rec: dict, u: jax.Array):
  """State after consuming u (B, L, H) from zero: s = 2 C sum_l A_bar^(L-1-l) B_bar u_l.

  Returns:
    (q_x, q_y) pair of (N2, B, H) float32 (`s4d_step`'s basis and layout).
  """
  to_c = lambda pair: jax.lax.complex(*pair)
  s = vandermonde.vandermonde_state(u, to_c(rec["log_A_bar"])) * to_c(rec["CB_bar"])[None]
  return sheared.from_parts(rec["shear"], *_split(jnp.transpose(s, (2, 0, 1))))
