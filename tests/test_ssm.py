"""Tests of the pure SSM kernel math (sashimi_jax/models/ssm)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax.models.ssm import cauchy
from sashimi_jax.models.ssm import discretize
from sashimi_jax.models.ssm import dplr
from sashimi_jax.models.ssm import hippo
from sashimi_jax.models.ssm import init as ssm_init
from sashimi_jax.models.ssm import s4d
from sashimi_jax.models.ssm import vandermonde


def _s4d_params(init, num_channels=8, d_state=16, num_ssm=1, seed=0):
  """Random S4D parameters built in numpy (no eager jax op compiles)."""
  A, B = ssm_init.diag_init(init, d_state)
  rng = np.random.default_rng(seed)
  tile = lambda x: np.broadcast_to(x, (num_ssm,) + x.shape)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return dict(
      log_dt=f32(rng.uniform(np.log(1e-3), np.log(1e-1), num_channels)),
      log_A_real=f32(np.log(-tile(A.real))),
      A_imag=f32(tile(A.imag)),
      B=f32(np.stack([tile(B.real), tile(B.imag)], -1)),
      C=f32(rng.normal(size=(num_channels, d_state // 2, 2))),
  )


def _numpy_s4d_kernel(p, length, disc):
  """Direct float64 sum K_l = 2 Re sum_n C_n A_bar_n^l B_bar_n."""
  f = lambda x: np.asarray(x, np.float64)
  dt = np.exp(f(p["log_dt"]))[:, None]
  H = dt.shape[0]
  A = -np.exp(f(p["log_A_real"])) + 1j * f(p["A_imag"])
  B = f(p["B"])[..., 0] + 1j * f(p["B"])[..., 1]
  A = np.tile(A, (H // A.shape[0], 1))
  B = np.tile(B, (H // B.shape[0], 1))
  C = f(p["C"])[..., 0] + 1j * f(p["C"])[..., 1]
  if disc == "zoh":
    A_bar = np.exp(dt * A)
    B_bar = B * (np.exp(dt * A) - 1) / A
  else:
    A_bar = (1 + dt * A / 2) / (1 - dt * A / 2)
    B_bar = B * dt / (1 - dt * A / 2)
  powers = A_bar[:, :, None] ** np.arange(length)  # (H, N2, L)
  return 2 * np.einsum("hn,hnl->hl", C * B_bar, powers).real


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("init", ssm_init.DIAG_INITS)
@pytest.mark.parametrize("disc", discretize.DISCRETIZATIONS)
def test_s4d_kernel_matches_float64_sum(init, disc):
  p = _s4d_params(init)
  length = 1000  # Not a square: exercises the padded split l = c i + j.
  k = jax.jit(s4d.s4d_kernel, static_argnames=("length", "disc"))(**p, length=length, disc=disc)
  chex.assert_shape(k, (8, length))
  want = _numpy_s4d_kernel(p, length, disc)
  # float32 phase error grows like l |Im dtA| eps; 1e-4 leaves headroom over ~1e-5 measured.
  assert _rel(k, want) < 1e-4, (init, disc, _rel(k, want))


def test_s4d_kernel_n_ssm_ties_channels():
  p = _s4d_params("diag-inv", num_channels=6, num_ssm=3)
  k = jax.jit(s4d.s4d_kernel, static_argnames=("length", "disc"))(**p, length=64, disc="zoh")
  assert _rel(k, _numpy_s4d_kernel(p, 64, "zoh")) < 1e-5
  with pytest.raises(ValueError, match="n_ssm"):
    jax.eval_shape(lambda p: s4d.s4d_kernel(**p, length=8, disc="zoh"),
                   _s4d_params("diag-lin", num_channels=5, num_ssm=2))


def test_vandermonde_kernel_every_length():
  rng = np.random.default_rng(0)
  coeffs = rng.normal(size=(3, 4)) + 1j * rng.normal(size=(3, 4))
  log_base = -rng.uniform(0.01, 0.5, (3, 4)) + 1j * rng.uniform(-3, 3, (3, 4))
  for length in (1, 2, 7, 17, 64):
    k = jax.jit(vandermonde.vandermonde_kernel, static_argnums=2)(
        jnp.asarray(coeffs, jnp.complex64), jnp.asarray(log_base, jnp.complex64), length)
    want = 2 * np.einsum("hn,hnl->hl", coeffs, np.exp(log_base[..., None] * np.arange(length))).real
    np.testing.assert_allclose(k, want, rtol=1e-5, atol=1e-5)


def test_vandermonde_state_is_reversed_sum():
  rng = np.random.default_rng(1)
  log_base = -rng.uniform(0.01, 0.5, (3, 4)) + 1j * rng.uniform(-3, 3, (3, 4))
  u = rng.normal(size=(2, 37, 3))
  s = jax.jit(vandermonde.vandermonde_state)(jnp.asarray(u, jnp.float32), jnp.asarray(log_base, jnp.complex64))
  powers = np.exp(log_base[..., None] * np.arange(36, -1, -1))  # (H, N2, L)
  want = np.einsum("blh,hnl->bhn", u, powers)
  np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-5)


def test_discretize_small_dt_is_accurate():
  # exp(dtA) - 1 and log A_bar must not cancel for tiny dt.
  dt = jnp.full((1, 1), 1e-4, jnp.float32)
  A = jnp.asarray([[-0.5 + 3.0j]], jnp.complex64)
  B = jnp.ones((1, 1), jnp.complex64)
  for disc in discretize.DISCRETIZATIONS:
    log_a, a, b = discretize.discretize_diag(dt, A, B, disc)
    dtA = 1e-4 * (-0.5 + 3.0j)
    if disc == "zoh":
      want_log_a, want_b = dtA, np.expm1(dtA) / (-0.5 + 3.0j)
    else:
      want_log_a, want_b = np.log((1 + dtA / 2) / (1 - dtA / 2)), 1e-4 / (1 - dtA / 2)
    np.testing.assert_allclose(complex(log_a[0, 0]), want_log_a, rtol=1e-6)
    np.testing.assert_allclose(complex(b[0, 0]), want_b, rtol=1e-6)
  with pytest.raises(ValueError, match="discretisation"):
    discretize.discretize_diag(dt, A, B, "euler")


def test_sample_log_dt_range():
  log_dt = discretize.sample_log_dt(jax.random.key(0), 1000, 1e-3, 1e-1)
  dt = np.exp(np.asarray(log_dt))
  assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
  # Log-uniform: about half the samples below the geometric midpoint 1e-2.
  assert 0.4 < np.mean(dt < 1e-2) < 0.6
  with pytest.raises(ValueError, match="dt_min"):
    discretize.sample_log_dt(jax.random.key(0), 4, 0.1, 0.01)


def test_inits():
  A, B = ssm_init.diag_init("diag-lin", 8)
  np.testing.assert_allclose(A, -0.5 - 1j * np.pi * np.arange(4))
  A, _ = ssm_init.diag_init("diag-inv", 8)
  np.testing.assert_allclose(A.imag, -8 / np.pi * (8 / (1 + 2 * np.arange(4)) - 1))
  with pytest.raises(ValueError, match="init"):
    ssm_init.diag_init("diag-foo", 8)
  with pytest.raises(ValueError, match="even"):
    ssm_init.diag_init("diag-lin", 7)


def test_nplr_legs_reconstructs_hippo():
  N = 16
  W, P, B = hippo.nplr_legs(N)
  A_legs, B_legs = hippo.legs_transition(N)
  # Full conjugate-symmetric DPLR matrix in the eigenbasis, mapped back to the LegS basis.
  q = np.arange(N, dtype=np.float64)
  AP = A_legs + np.outer(np.sqrt(q + 0.5), np.sqrt(q + 0.5))
  w, V = np.linalg.eig(AP)
  assert np.all(np.abs(w.real + 0.5) < 1e-8)  # A + PP^T is normal with Re = -1/2.
  assert np.all(W.imag < 0) and np.allclose(W.real, -0.5)
  np.testing.assert_allclose(np.sort(W.imag), np.sort(w.imag[w.imag < 0]), rtol=1e-8)
  # |P|^2 summed over both conjugate halves equals |P_legs|^2 (V is unitary).
  np.testing.assert_allclose(2 * np.sum(np.abs(P) ** 2), np.sum(q + 0.5), rtol=1e-8)


def _dplr_params(num_channels=4, d_state=16, num_ssm=1, seed=0):
  """Random DPLR (LegS) parameters and a random C, built in numpy."""
  W, P, B = ssm_init.dplr_init("legs", d_state)
  rng = np.random.default_rng(seed)
  tile = lambda x: np.broadcast_to(x, (num_ssm,) + x.shape)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  pairs = lambda z: f32(np.stack([z.real, z.imag], -1))
  p = dict(
      log_dt=f32(rng.uniform(np.log(1e-3), np.log(1e-1), num_channels)),
      log_A_real=f32(np.log(-tile(W.real))),
      A_imag=f32(tile(W.imag)),
      B=pairs(tile(B)),
      P=pairs(tile(P[0])[None]),
  )
  return p, f32(rng.normal(size=(num_channels, d_state // 2, 2)) * np.sqrt(0.5))


def _numpy_dplr(p, C_tilde, length):
  """float64 full conjugate-symmetric system: (A_bar, B_bar, C) per channel and the kernel."""
  f = lambda x: np.asarray(x, np.float64)
  cplx = lambda x: f(x)[..., 0] + 1j * f(x)[..., 1]
  dt = np.exp(f(p["log_dt"]))
  H = dt.shape[0]
  S = p["B"].shape[0]
  lam = -np.exp(f(p["log_A_real"])) + 1j * f(p["A_imag"])
  B, P, Ct = cplx(p["B"]), cplx(p["P"])[0], cplx(C_tilde)
  kernels, systems = [], []
  for h in range(H):
    conj = lambda z: np.concatenate([z, z.conj()])
    pf = conj(P[h % S])
    A = np.diag(conj(lam[h % S])) - np.outer(pf, pf.conj())
    eye = np.eye(A.shape[0])
    A_bar = np.linalg.solve(eye - dt[h] / 2 * A, eye + dt[h] / 2 * A)
    B_bar = np.linalg.solve(eye - dt[h] / 2 * A, dt[h] * conj(B[h % S]))
    C = np.linalg.solve((eye - np.linalg.matrix_power(A_bar, length)).T, conj(Ct[h]))
    x, k = B_bar, []
    for _ in range(length):
      k.append((C @ x).real)
      x = A_bar @ x
    kernels.append(k)
    systems.append((A_bar, B_bar, C))
  return np.asarray(kernels), systems


@pytest.mark.parametrize("length,num_ssm", [(256, 1), (129, 2)])
def test_dplr_kernel_matches_float64_powers(length, num_ssm):
  p, C = _dplr_params(num_ssm=num_ssm)
  C_tilde = jax.jit(dplr.c_tilde_from_c, static_argnames="length")(**p, C=C, length=length)
  k = jax.jit(dplr.dplr_kernel, static_argnames="length")(**p, C=C_tilde, length=length)
  chex.assert_shape(k, (4, length))
  want, _ = _numpy_dplr(p, C_tilde, length)
  assert _rel(k, want) < 1e-4, _rel(k, want)
  # Small Cauchy chunks give the same answer (chunking is exact).
  v = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 8)), jnp.complex64)
  w = jnp.asarray(-0.1 + 1j * np.arange(8.0), jnp.complex64)[None].repeat(4, 0)
  np.testing.assert_allclose(cauchy.cauchy_rho(v, w, length, chunk=7),
                             cauchy.cauchy_rho(v, w, length, chunk=4096), rtol=1e-5, atol=1e-6)


def test_dplr_recurrence_matches_float64_system():
  length = 200
  p, C = _dplr_params()
  rec = jax.jit(dplr.dplr_recurrence, static_argnames="length")(**p, C=C, length=length)
  rec_b = np.concatenate(rec["B_bar"], -1).astype(np.float64)
  rec_c = np.concatenate(rec["C"], -1).astype(np.float64)
  kernels, systems = _numpy_dplr(p, C, length)
  for h, (A_bar, B_bar, c) in enumerate(systems):
    # Map the real-coordinate system back to the complex basis [s, conj s].
    n2 = A_bar.shape[0] // 2
    T = np.block([[np.eye(n2), 1j * np.eye(n2)], [np.eye(n2), -1j * np.eye(n2)]])
    A_c = T @ np.asarray(rec["A_bar"][h], np.float64) @ np.linalg.inv(T)
    np.testing.assert_allclose(A_c, A_bar, atol=1e-5)
    np.testing.assert_allclose(T @ rec_b[h], B_bar, atol=1e-6)
    c_c = rec_c[h] @ np.linalg.inv(T)
    assert np.linalg.norm(c_c - c) / np.linalg.norm(c) < 1e-3  # (I - A^L) amplifies rounding.
    # The recurrence's impulse response is the float64 kernel.
    x, k = rec_b[h], []
    for _ in range(length):
      k.append(rec_c[h] @ x)
      x = np.asarray(rec["A_bar"][h], np.float64) @ x
    assert _rel(np.asarray(k), kernels[h]) < 1e-4


def test_dplr_prefill_and_linear_step_equal_dense_steps():
  p, C = _dplr_params()
  u = jnp.asarray(np.random.default_rng(4).normal(size=(2, 77, 4)), jnp.float32)

  @jax.jit
  def run(p, C, u):
    rec = dplr.dplr_recurrence(**p, C=C, length=77)

    def scan(step_fn):
      body = lambda s, x: step_fn(rec, s, x)[::-1]
      state, ys = jax.lax.scan(body, dplr.dplr_init_state(2, 4, 16), jnp.swapaxes(u, 0, 1))
      return jnp.concatenate(state, -1), ys

    return (jnp.concatenate(dplr.dplr_prefill_state(rec, u), -1), scan(dplr.dplr_step),
            scan(dplr.dplr_step_dense))

  prefill, (state, ys), (state_dense, ys_dense) = run(p, C, u)
  assert _rel(ys, np.asarray(ys_dense, np.float64)) < 1e-5  # O(N) step == dense matrix.
  assert _rel(state, np.asarray(state_dense, np.float64)) < 1e-5
  assert _rel(prefill, np.asarray(state_dense, np.float64)) < 1e-5


def test_dplr_rejects_higher_rank():
  p, C = _dplr_params()
  p["P"] = jnp.concatenate([p["P"], p["P"]])
  with pytest.raises(ValueError, match="rank-1"):
    jax.eval_shape(lambda p: dplr.dplr_kernel(**p, C=C, length=8), p)


def test_s4d_kernel_memory_is_not_hnl():
  # Compile only: the (H, N, L) Vandermonde tensor would be H * N * L * 4 bytes = 4.3 GB.
  H, N, L = 64, 64, 262144
  p = jax.eval_shape(lambda: _s4d_params("diag-lin", num_channels=H, d_state=N))
  f = jax.jit(s4d.s4d_kernel, static_argnames=("length", "disc"))
  stats = f.lower(**p, length=L, disc="zoh").compile().memory_analysis()
  hnl_bytes = H * N * L * 4
  # Measured ~75 MB temp (~1.1x the 67 MB output); allow 2x the output = HNL / 32.
  assert stats.temp_size_in_bytes < 2 * H * L * 4 == hnl_bytes // 32, stats.temp_size_in_bytes


def test_dplr_solve_matches_float64_and_pivots():
  # Zero diagonal entries need row exchanges; the second matrix is a random one.
  rng = np.random.default_rng(0)
  swap = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 3.0]])
  a = np.stack([swap, rng.normal(size=(3, 3)) + 3.0 * np.eye(3)])
  b = rng.normal(size=(2, 3))
  x = jax.jit(dplr.solve)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(np.asarray(x), np.linalg.solve(a, b[..., None])[..., 0],
                             rtol=1e-5, atol=1e-6)


def test_dplr_matrix_power_and_krylov_per_channel_match_float64():
  # 13 channels: one full group of channel_map.CHANNELS_PER_TRIP and a remainder.
  rng = np.random.default_rng(0)
  a = 0.3 * rng.normal(size=(13, 6, 6))
  b = rng.normal(size=(13, 6))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  power = jax.jit(dplr.matrix_power, static_argnums=1)(f32(a), 11)
  np.testing.assert_allclose(np.asarray(power), np.linalg.matrix_power(a, 11), atol=1e-6)
  cols = jax.jit(dplr.krylov, static_argnums=2)(f32(a), f32(b), 5)
  expected = np.stack([np.linalg.matrix_power(a, j) @ b[..., None] for j in range(5)], -1)[:, :, 0]
  np.testing.assert_allclose(np.asarray(cols), expected, rtol=1e-5, atol=1e-6)


def test_sheared_step_is_the_complex_product_also_for_a_zero_factor():
  from sashimi_jax.models.ssm import sheared  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  a = (rng.uniform(0.1, 1.0, (3, 5)) * np.exp(1j * rng.uniform(-np.pi, np.pi, (3, 5))))
  a[0, 0] = 0.0  # forgets at once: the new state is the input alone
  a[1, 1] = -0.5  # |angle| = pi: the sign flip
  b = rng.normal(size=(3, 5)) + 1j * rng.normal(size=(3, 5))
  s = rng.normal(size=(5, 2, 3)) + 1j * rng.normal(size=(5, 2, 3))  # (N2, B, H)
  w = rng.normal(size=(2, 3))
  coeffs = sheared.coefficients(jnp.asarray(a, jnp.complex64), {"w": jnp.asarray(b, jnp.complex64)})
  state = sheared.from_parts(coeffs, jnp.asarray(s.real, jnp.float32), jnp.asarray(s.imag, jnp.float32))
  re, im = sheared.to_parts(coeffs, sheared.step(coeffs, state, {"w": jnp.asarray(w, jnp.float32)}))
  want = a.T[:, None, :] * s + b.T[:, None, :] * w[None]
  np.testing.assert_allclose(np.asarray(re) + 1j * np.asarray(im), want, rtol=1e-5, atol=1e-5)
