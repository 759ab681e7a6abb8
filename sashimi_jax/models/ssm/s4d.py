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


def s4d_recurrence(log_dt, log_A_real, A_imag, B, C, *, disc: str) -> dict:
  """Discretised matrices for stepping.

  Returns:
    {"A_bar", "log_A_bar", "B_bar", "C"}, each (H, N2, 2) float32 pairs.
  """
  dt, A, B, C = continuous_params(log_dt, log_A_real, A_imag, B, C)
  log_A_bar, A_bar, B_bar = discretize.discretize_diag(dt, A, B, disc)
  return {"A_bar": complex_pairs.to_pairs(A_bar), "log_A_bar": complex_pairs.to_pairs(log_A_bar),
          "B_bar": complex_pairs.to_pairs(B_bar), "C": complex_pairs.to_pairs(C)}


def s4d_init_state(batch_size: int, num_channels: int, num_modes: int) -> jax.Array:
  """Zero state (B, H, N2, 2) float32."""
  return jnp.zeros((batch_size, num_channels, num_modes, 2), jnp.float32)


def s4d_step(rec: dict, state: jax.Array, u: jax.Array):
  """One step x_k = A_bar x_{k-1} + B_bar u_k, y_k = 2 Re(C x_k).

  Args:
    rec: from s4d_recurrence.
    state: (B, H, N2, 2) float32.
    u: (B, H) float32.

  Returns:
    y (B, H) float32, new state (B, H, N2, 2).
  """
  a_re, a_im = rec["A_bar"][..., 0], rec["A_bar"][..., 1]
  b_re, b_im = rec["B_bar"][..., 0], rec["B_bar"][..., 1]
  c_re, c_im = rec["C"][..., 0], rec["C"][..., 1]
  s_re, s_im = state[..., 0], state[..., 1]
  u = u[..., None].astype(jnp.float32)
  new_re = a_re * s_re - a_im * s_im + b_re * u
  new_im = a_re * s_im + a_im * s_re + b_im * u
  y = 2.0 * jnp.sum(c_re * new_re - c_im * new_im, axis=-1)
  return y, jnp.stack([new_re, new_im], axis=-1)


def s4d_prefill_state(rec: dict, u: jax.Array) -> jax.Array:
  """State after consuming u (B, L, H) from zero: sum_l A_bar^(L-1-l) B_bar u_l.

  Returns:
    (B, H, N2, 2) float32.
  """
  log_A_bar = complex_pairs.to_complex(rec["log_A_bar"])
  B_bar = complex_pairs.to_complex(rec["B_bar"])
  s = vandermonde.vandermonde_state(u, log_A_bar) * B_bar[None]
  return complex_pairs.to_pairs(s)
