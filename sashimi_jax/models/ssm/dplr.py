"""DPLR (S4) kernels and exact recurrences as pure functions.

Parameters (explicit arrays, float32; complex as (..., 2) pairs):
  log_dt (H,), log_A_real (S, N2) = log(-Re Lambda), A_imag (S, N2), B (S, N2, 2),
  P (1, S, N2, 2), C (H, N2, 2).
The continuous state matrix is A = diag(Lambda) - P P^* on the conjugate-symmetric
state [s, conj(s)] (N = 2 N2). Discretisation is bilinear. The stored C is the
reference's C~ = C (I - A_bar^L) for the layer's training length L, which turns
the truncated generating function into a rational function that the Cauchy
kernel evaluates at the L-th roots of unity.

Recurrent form: real coordinates x = [Re s, Im s] (N,), in which
  A_r = blocks(Lambda) - 2 p p^T,  p = [Re P, Im P],  B_r = [Re B, Im B],
  y = c^T x with c = [2 Re C, -2 Im C]  (= 2 Re(C s)).
"""

import jax
import jax.numpy as jnp

from sashimi_jax.models.ssm import cauchy
from sashimi_jax.models.ssm import channel_map
from sashimi_jax.models.ssm import complex_pairs
from sashimi_jax.models.ssm import s4d
from sashimi_jax.models.ssm import sheared

_HIGHEST = jax.lax.Precision.HIGHEST


def continuous_params(log_dt, log_A_real, A_imag, B, P):
  """-> dt (H, 1) float32; Lambda, B, P (H, N2) complex64 (rank 1)."""
  if P.ndim != 4 or P.shape[0] != 1:
    raise ValueError(f"only rank-1 DPLR is supported: P must be (1, S, N2, 2), got {P.shape}")
  num_channels = log_dt.shape[0]
  A = s4d.tile_ssm(jax.lax.complex(-jnp.exp(log_A_real), A_imag), num_channels)
  B = s4d.tile_ssm(complex_pairs.to_complex(B), num_channels)
  P = s4d.tile_ssm(complex_pairs.to_complex(P[0]), num_channels)
  return jnp.exp(log_dt)[:, None], A, B, P


def dplr_kernel(log_dt, log_A_real, A_imag, B, P, C, *, length: int) -> jax.Array:
  """Convolution kernel of length L (the C~ length): (H, L) float32.

  K_l = C A_bar^l B_bar for l < L, with C = C~ (I - A_bar^L)^{-1}.
  """
  dt, A, B, P = continuous_params(log_dt, log_A_real, A_imag, B, P)
  C = complex_pairs.to_complex(C)
  Q = jnp.conj(P)
  w = A * dt
  # Numerators v = b c dt for b in (B, P), c in (C~, Q): order BC, BQ, PC, PQ.
  v = jnp.stack([B * C, B * Q, P * C, P * Q]) * dt[None]
  rho = cauchy.cauchy_rho(v, w, length)  # r / (1 + omega)
  _, b = cauchy.roots_of_unity_nodes(length)
  one_plus_omega = jnp.asarray(b, jnp.complex64)
  # Woodbury for the rank-1 term, then the bilinear factor 2 / (1 + omega).
  k_f = 2.0 * (rho[0] - rho[1] * one_plus_omega * rho[2] / (1.0 + one_plus_omega * rho[3]))
  return jnp.fft.irfft(k_f, n=length, axis=-1).astype(jnp.float32)


def _blocks(z):
  """(H, N2) complex -> (H, N, N) real matrix of multiplication by z in [Re, Im] coordinates."""
  re, im = jnp.real(z), jnp.imag(z)
  dr, di = jax.vmap(jnp.diag)(re), jax.vmap(jnp.diag)(im)
  return jnp.concatenate([jnp.concatenate([dr, -di], -1), jnp.concatenate([di, dr], -1)], -2)


def _realvec(z):
  return jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1)


def _sherman_morrison(log_dt, log_A_real, A_imag, B, P):
  """Factors of M^{-1} = (2/dt - A_r)^{-1} = blocks(d) - u2 v^T, with d = 1 / (2/dt - Lambda).

  M = blocks(d)^{-1} + 2 p p^T, so Sherman-Morrison gives u2 = 2 M0^{-1} p / (1 + 2 p^T M0^{-1} p)
  and v = M0^{-T} p (M0 = blocks(d)^{-1}); the denominator is >= 1 since Re d > 0.

  Returns:
    dt (H, 1), d (H, N2) complex64, u2 (H, N), v (H, N), B_r (H, N) float32.
  """
  dt, Lam, B, P = continuous_params(log_dt, log_A_real, A_imag, B, P)
  d = 1.0 / (2.0 / dt - Lam)
  denom = 1.0 + 2.0 * jnp.sum(jnp.abs(P) ** 2 * jnp.real(d), axis=-1, keepdims=True)
  u2 = 2.0 * _realvec(d * P) / denom
  v = _realvec(jnp.conj(d) * P)
  return dt, d, u2, v, _realvec(B)


def dense_discretization(log_dt, log_A_real, A_imag, B, P):
  """Bilinear (A_bar (H, N, N), B_bar (H, N)) float32 in real coordinates.

  A_bar = M^{-1} (2/dt + A_r) = (4/dt) M^{-1} - I and B_bar = 2 M^{-1} B_r, with M^{-1}
  exact from Sherman-Morrison (no dense solve; B_bar from its factors, no matmul).
  """
  dt, d, u2, v, B_r = _sherman_morrison(log_dt, log_A_real, A_imag, B, P)
  m_inv = _blocks(d) - u2[:, :, None] * v[:, None, :]
  num_state = m_inv.shape[-1]
  A_bar = (4.0 / dt)[..., None] * m_inv - jnp.eye(num_state, dtype=jnp.float32)
  d_times_b = complex_pairs.diagonal_times_halves(jnp.real(d), jnp.imag(d), B_r)
  B_bar = 2.0 * (d_times_b - u2 * jnp.sum(v * B_r, axis=-1, keepdims=True))
  return A_bar, B_bar


def _matrix_power_one(a: jax.Array, exponent: int) -> jax.Array:
  """a^exponent for one (N, N) matrix by repeated squaring."""
  result = jnp.eye(a.shape[-1], dtype=a.dtype)
  base = a
  e = int(exponent)
  while e:
    if e & 1:
      result = jnp.matmul(result, base, precision=_HIGHEST)
    e >>= 1
    if e:
      base = jnp.matmul(base, base, precision=_HIGHEST)
  return result


def matrix_power(A: jax.Array, exponent: int) -> jax.Array:
  """A^exponent for (H, N, N) A by repeated squaring, per channel; exponent is a static int >= 0."""
  return channel_map.map_channels(lambda a: _matrix_power_one(a, exponent), A)


def c_to_real(C: jax.Array) -> jax.Array:
  """(H, N2, 2) pairs -> (H, N) real output row with y = c^T x = 2 Re(C s)."""
  return jnp.concatenate([2.0 * C[..., 0], -2.0 * C[..., 1]], axis=-1)


def c_from_real(c: jax.Array) -> jax.Array:
  """Inverse of c_to_real: (H, N) -> (H, N2, 2) pairs."""
  n2 = c.shape[-1] // 2
  return jnp.stack([0.5 * c[..., :n2], -0.5 * c[..., n2:]], axis=-1)


def c_tilde_from_c(log_dt, log_A_real, A_imag, B, P, C, *, length: int) -> jax.Array:
  """C~ = C (I - A_bar^L) as (H, N2, 2) pairs (used once, at initialisation)."""
  A_bar, _ = dense_discretization(log_dt, log_A_real, A_imag, B, P)
  A_pow = matrix_power(A_bar, length)
  c = c_to_real(C)
  return c_from_real(c - jnp.einsum("hn,hnm->hm", c, A_pow, precision=_HIGHEST))


def solve(a: jax.Array, b: jax.Array) -> jax.Array:
  """x with a x = b for (H, N, N) a and (H, N) b: Gauss-Jordan with partial pivoting.

  Lax ops, not jnp.linalg.solve: a program holding a couple of dozen of XLA:CPU's LAPACK LU
  custom calls (one per DPLR layer of the SC09 model) deadlocks when executed on jax 0.10.
  """
  num_state = a.shape[-1]
  aug = jnp.concatenate([a, b[..., None]], axis=-1)  # (H, N, N + 1)
  rows = jnp.arange(num_state)

  def eliminate(j, aug):
    col = jax.lax.dynamic_index_in_dim(aug, j, axis=2, keepdims=False)  # (H, N)
    pivot = jnp.argmax(jnp.where(rows >= j, jnp.abs(col), -1.0), axis=-1)  # (H,)
    pivot_row = jnp.take_along_axis(aug, pivot[:, None, None], axis=1)  # (H, 1, N + 1)
    row_j = jax.lax.dynamic_slice_in_dim(aug, j, 1, axis=1)  # (H, 1, N + 1)
    is_pivot = (rows[None, :] == pivot[:, None])[..., None]
    aug = jnp.where(is_pivot, row_j, aug)  # swap rows j and pivot
    pivot_row = pivot_row / jax.lax.dynamic_slice_in_dim(pivot_row, j, 1, axis=2)
    factors = jnp.where((rows == j)[None, :], 0.0, col)  # column j after the swap:
    factors = jnp.where(rows[None, :] == pivot[:, None], jnp.take_along_axis(
        col, jnp.full_like(pivot, j)[:, None], axis=1), factors)[..., None]  # (H, N, 1)
    aug = aug - factors * pivot_row
    return jax.lax.dynamic_update_slice_in_dim(aug, pivot_row, j, axis=1)

  aug = jax.lax.fori_loop(0, num_state, eliminate, aug)
  return aug[..., -1]


@jax.custom_vjp
def solve_differentiable(a: jax.Array, b: jax.Array) -> jax.Array:
  """solve(a, b) with the implicit-function gradient (no Gauss-Jordan residuals kept)."""
  return solve(a, b)


def _solve_fwd(a, b):
  x = solve(a, b)
  return x, (a, x)


def _solve_bwd(residuals, g):
  a, x = residuals
  g_b = solve(jnp.swapaxes(a, -1, -2), g)  # a^T g_b = g
  return -g_b[:, :, None] * x[:, None, :], g_b


solve_differentiable.defvjp(_solve_fwd, _solve_bwd)


def real_system(log_dt, log_A_real, A_imag, B, P, C, *, length: int):
  """The layer as a real system x_k = A_bar x_{k-1} + B_bar u_k, y_k = c^T x_k.

  c = C~ (I - A_bar^L)^{-1} for the C~ length L (one dense solve, differentiable).

  Returns:
    A_bar (H, N, N), B_bar (H, N), c (H, N) float32.
  """
  A_bar, B_bar = dense_discretization(log_dt, log_A_real, A_imag, B, P)
  A_pow = matrix_power(A_bar, length)
  eye = jnp.eye(A_bar.shape[-1], dtype=jnp.float32)
  c = solve_differentiable(jnp.swapaxes(eye - A_pow, -1, -2), c_to_real(C))
  return A_bar, B_bar, c


def _halves(x):
  n2 = x.shape[-1] // 2
  return x[..., :n2], x[..., n2:]


def dplr_recurrence(log_dt, log_A_real, A_imag, B, P, C, *, length: int) -> dict:
  """Step matrices, recovering C = C~ (I - A_bar^L)^{-1} exactly (one dense solve).

  Vectors in real coordinates x = [Re s, Im s] are stored as (first half, second half)
  pairs of (H, N2) arrays.

  Returns:
    dict: "A_bar" (H, N, N) dense (prefill, dense step); pairs "B_bar", "C"; and the O(N)
    step's coefficients: "shear" (`sheared.coefficients` of the diagonal part and its inputs
    u and t), "feedback" and "readout" (pairs of (N2, 1, H) weights of the sheared state whose
    sums over modes are t = v . x and y = c . x).
  """
  A_bar, B_bar = dense_discretization(log_dt, log_A_real, A_imag, B, P)
  A_pow = matrix_power(A_bar, length)
  eye = jnp.eye(A_bar.shape[-1], dtype=jnp.float32)
  # c^T (I - A^L) = c~^T  <=>  (I - A^L)^T c = c~.
  c = solve(jnp.swapaxes(eye - A_pow, -1, -2), c_to_real(C))
  dt, d, u2, v, _ = _sherman_morrison(log_dt, log_A_real, A_imag, B, P)
  # A_bar x = (4/dt) (d * x - u2 (v . x)) - x: per mode a diagonal complex factor and a rank-1
  # feedback t = v . x, both inputs of the sheared step.
  scale = 4.0 / dt
  to_complex = lambda halves: jax.lax.complex(*halves)
  shear = sheared.coefficients(scale * d - 1.0, {"u": to_complex(_halves(B_bar)),
                                                 "t": -scale * to_complex(_halves(u2))})
  return {"A_bar": A_bar, "B_bar": _halves(B_bar), "C": _halves(c), "shear": shear,
          "feedback": _sheared_weights(shear, _halves(v)),
          "readout": _sheared_weights(shear, _halves(c))}


def _sheared_weights(shear: dict, halves):
  """Weights (w_x, w_y) with w . x = sum_n w_x q_x + w_y q_y for x's (Re, Im) halves (H, N2):
  Re s = q_x and Im s = q_y + basis q_x."""
  w_re, w_im = (sheared.modes_major(h) for h in halves)
  return w_re + w_im * shear["basis"], w_im


def dplr_init_state(batch_size: int, num_channels: int, num_state: int):
  """Zero state: the sheared (q_x, q_y), each (N / 2, B, H) float32 (see dplr_step)."""
  zeros = jnp.zeros((num_state // 2, batch_size, num_channels), jnp.float32)
  return (zeros, zeros)


def _to_real_coordinates(rec: dict, state) -> jax.Array:
  """The sheared state -> x = [Re s, Im s] (B, H, N)."""
  return jnp.transpose(jnp.concatenate(sheared.to_parts(rec["shear"], state), axis=0), (1, 2, 0))


def _from_real_coordinates(rec: dict, x: jax.Array):
  """x = [Re s, Im s] (B, H, N) -> the sheared state."""
  re, im = _halves(x)
  return sheared.from_parts(rec["shear"], jnp.transpose(re, (2, 0, 1)),
                            jnp.transpose(im, (2, 0, 1)))


def dplr_step_dense(rec: dict, state, u: jax.Array):
  """As dplr_step, with the dense (H, N, N) A_bar: O(N^2) per channel (a check of dplr_step)."""
  x = _to_real_coordinates(rec, state)
  new = jnp.einsum("hmn,bhn->bhm", rec["A_bar"], x, precision=_HIGHEST)
  new = new + jnp.concatenate(rec["B_bar"], axis=-1) * u[..., None].astype(jnp.float32)
  c = jnp.concatenate(rec["C"], axis=-1)
  return jnp.sum(c * new, axis=-1), _from_real_coordinates(rec, new)


def dplr_step(rec: dict, state, u: jax.Array):
  """x_k = A_bar x_{k-1} + B_bar u_k, y_k = c^T x_k in O(N) per channel, updated in place.

  A_bar x = (4/dt) M^{-1} x - x with M^{-1} = blocks(d) - u2 v^T (Sherman-Morrison): the
  same bilinear matrix as the dense step, applied without forming it. Per mode that is a
  diagonal complex factor 4 d / dt - 1 plus the feedback -(4/dt) u2 t of the scalar t = v . x,
  so the state steps in `sheared.py`'s basis and layout with two inputs, u and t, and both of
  its arrays update in place.

  Args:
    rec: from dplr_recurrence.
    state: sheared (q_x, q_y) pair of (N2, B, H) float32.
    u: (B, H).

  Returns:
    y (B, H) float32, new state.
  """
  q_x, q_y = state
  (t_x, t_y), (c_x, c_y) = rec["feedback"], rec["readout"]
  t = jnp.sum(t_x * q_x + t_y * q_y, axis=0)
  q_x, q_y = sheared.step(rec["shear"], state, {"u": u, "t": t})
  return jnp.sum(c_x * q_x + c_y * q_y, axis=0), (q_x, q_y)


def _krylov_one(a, b, size):
  """[a^j b for j < size] as (N, size) for one (N, N) a and (N,) b, by doubling."""
  cols = b[:, None]
  power = a
  while cols.shape[-1] < size:
    cols = jnp.concatenate([cols, jnp.matmul(power, cols, precision=_HIGHEST)], axis=-1)
    power = jnp.matmul(power, power, precision=_HIGHEST)
  return cols[:, :size]


def krylov(A_bar, B_bar, size):
  """[A^j B for j < size] as (H, N, size) for (H, N, N) A_bar and (H, N) B_bar, per channel."""
  return channel_map.map_channels(lambda a, b: _krylov_one(a, b, size), A_bar, B_bar)


def dplr_prefill_state(rec: dict, u: jax.Array):
  """State after consuming u (B, L, H) from zero: sum_l A_bar^(L-1-l) B_bar u_l.

  Chunks of c ~ sqrt(L) inputs are folded in by one matmul with the Krylov block
  [A^(c-1) B, ..., B]; the chunks are then combined by Horner's rule with A^c
  (a scan of about sqrt(L) dense steps). Exact up to float32 rounding.

  Returns:
    the sheared (q_x, q_y) pair of (N2, B, H) float32 (dplr_step's state).
  """
  batch, length, channels = u.shape
  A_bar, B_bar = rec["A_bar"], jnp.concatenate(rec["B_bar"], axis=-1)
  c = max(1, int(round(length ** 0.5)))
  num_chunks = -(-length // c)
  u = jnp.pad(u.astype(jnp.float32), ((0, 0), (num_chunks * c - length, 0), (0, 0)))
  u = u.reshape(batch, num_chunks, c, channels)
  k_rev = jnp.flip(krylov(A_bar, B_bar, c), axis=-1)  # [:, :, j] = A^(c-1-j) B
  contrib = jnp.einsum("hnj,bmjh->mbhn", k_rev, u, precision=_HIGHEST)  # (M, B, H, N)
  A_c = matrix_power(A_bar, c)

  def horner(state, v):
    return jnp.einsum("hmn,bhn->bhm", A_c, state, precision=_HIGHEST) + v, None

  state, _ = jax.lax.scan(horner, jnp.zeros_like(contrib[0]), contrib)
  return _from_real_coordinates(rec, state)
