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


def _split(z):
  """complex -> (Re, Im) float32 pair of arrays."""
  return jnp.real(z).astype(jnp.float32), jnp.imag(z).astype(jnp.float32)


def _shear_step_coefficients(A_bar, b):
  """Coefficients of the sheared step (see `s4d_step`) for A_bar, b = 2 C B_bar (H, N2) complex.

  Each is (N2, 1, H) float32, laid out like the state (modes, batch, channels).

  A_bar = r' e^(i t') with r' = +-|A_bar| chosen so that |t'| <= pi / 2 (so |tan(t' / 2)| <= 1),
  and the rotation by t' is the three shears Y(tan(t' / 2)) X(-sin t') Y(tan(t' / 2)) of the
  (Re, Im) plane (Y(c): Im += c Re; X(c): Re += c Im).
  """
  flip = jnp.where(jnp.real(A_bar) < 0, -1.0, 1.0)
  a, c = flip * jnp.real(A_bar), flip * jnp.imag(A_bar)  # A_bar / sign(r'): Re >= 0
  r = jnp.abs(A_bar)
  half_tan = c / (r + a)  # tan(t' / 2), stable: r + a >= r > 0
  neg_sin = -c / r
  in_y = jnp.imag(b) - half_tan * jnp.real(b)
  modes_major = lambda x: jnp.transpose(x.astype(jnp.float32))[:, None, :]  # (N2, 1, H)
  return {"scale": modes_major(flip * r), "shear_y": modes_major(2.0 * half_tan * flip * r),
          "shear_x": modes_major(neg_sin), "in_y": modes_major(in_y),
          "in_x": modes_major(jnp.real(b) - neg_sin * in_y), "basis": modes_major(half_tan)}


def s4d_recurrence(log_dt, log_A_real, A_imag, B, C, *, disc: str) -> dict:
  """Discretised matrices for stepping and prefill.

  The step works on real arrays laid out like the state (plain elementwise arithmetic); see
  `s4d_step` for its sheared form. Prefill uses log A_bar and 2 C B_bar.

  Returns:
    {"shear": dict of (N2, 1, H) float32 step coefficients, "CB_bar" (= 2 C B_bar) and
    "log_A_bar": (Re, Im) pairs of (H, N2) float32}.
  """
  dt, A, B, C = continuous_params(log_dt, log_A_real, A_imag, B, C)
  log_A_bar, A_bar, B_bar = discretize.discretize_diag(dt, A, B, disc)
  return {"shear": _shear_step_coefficients(A_bar, 2.0 * C * B_bar),
          "CB_bar": _split(2.0 * C * B_bar), "log_A_bar": _split(log_A_bar)}


def s4d_init_state(batch_size: int, num_channels: int, num_modes: int):
  """Zero state: (q_x, q_y), each (N2, B, H) float32 (see `s4d_step`; batch on axis 1)."""
  zeros = jnp.zeros((num_modes, batch_size, num_channels), jnp.float32)
  return (zeros, zeros)


def s4d_step(rec: dict, state, u: jax.Array):
  """One step x_k = A_bar x_{k-1} + B_bar u_k, y_k = 2 Re(C x_k), as two in-place updates.

  Each mode's state is scaled by its 2 C (a diagonal change of basis, exact whenever C has no
  zero entry and harmless otherwise: such a mode never reaches the output): s = 2 C x steps as
  s_k = A_bar s_{k-1} + (2 C B_bar) u_k with y_k = sum_n Re s_k. Multiplying by A_bar = r' R(t')
  is a scaling and a rotation of the (Re, Im) plane, and the rotation is three shears
  Y(b) X(a) Y(b) (b = tan(t'/2), a = -sin t'). Kept in the basis q = Y(-b) s (q_x = Re s,
  q_y = Im s - b Re s), the outer shears of consecutive steps merge, so a step is
      q_y <- r' q_y + 2 b r' q_x + d_y u,   then   q_x <- r' q_x + a q_y + e_x u,
  and y = sum_n q_x. Each update writes one array reading the other's current value, so XLA:CPU
  updates both in place; the complex product (each new part reading both old ones) cost a state
  copy per step and was 1.2-1.3x slower at batch 8-16 (docs/PERFORMANCE.md). Same values up to
  float32 rounding (shears with |a|, |b| <= 1 are well conditioned). The state is laid out
  (modes, batch, channels): the sum over modes is then over the major axis, which XLA:CPU
  vectorises over B x H (1.7-1.9x faster than over a minor axis of N2 = 32 at batch 8-16).

  Args:
    rec: from s4d_recurrence.
    state: (q_x, q_y) pair of (N2, B, H) float32.
    u: (B, H).

  Returns:
    y (B, H) float32, new state.
  """
  shear = rec["shear"]
  q_x, q_y = state
  u = u[None].astype(jnp.float32)
  q_y = shear["scale"] * q_y + shear["shear_y"] * q_x + shear["in_y"] * u
  q_x = shear["scale"] * q_x + shear["shear_x"] * q_y + shear["in_x"] * u
  return jnp.sum(q_x, axis=0), (q_x, q_y)


def s4d_prefill_state(rec: dict, u: jax.Array):
  """State after consuming u (B, L, H) from zero: s = 2 C sum_l A_bar^(L-1-l) B_bar u_l.

  Returns:
    (q_x, q_y) pair of (N2, B, H) float32 (`s4d_step`'s basis and layout).
  """
  to_c = lambda pair: jax.lax.complex(*pair)
  s = vandermonde.vandermonde_state(u, to_c(rec["log_A_bar"])) * to_c(rec["CB_bar"])[None]
  s_re, s_im = _split(jnp.transpose(s, (2, 0, 1)))
  return s_re, s_im - rec["shear"]["basis"] * s_re
