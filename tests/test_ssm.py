"""Tests of the pure SSM kernel math (sashimi_jax/models/ssm)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax.models.ssm import complex_pairs
from sashimi_jax.models.ssm import discretize
from sashimi_jax.models.ssm import hippo
from sashimi_jax.models.ssm import init as ssm_init
from sashimi_jax.models.ssm import s4d
from sashimi_jax.models.ssm import vandermonde


def _s4d_params(init, num_channels=8, d_state=16, num_ssm=1, seed=0):
  A, B = ssm_init.diag_init(init, d_state)
  key = jax.random.key(seed)
  k1, k2 = jax.random.split(key)
  tile = lambda x: np.broadcast_to(x, (num_ssm,) + x.shape)
  return dict(
      log_dt=discretize.sample_log_dt(k1, num_channels, 1e-3, 1e-1),
      log_A_real=jnp.asarray(np.log(-tile(A.real)), jnp.float32),
      A_imag=jnp.asarray(tile(A.imag), jnp.float32),
      B=complex_pairs.to_pairs(tile(B)),
      C=jax.random.normal(k2, (num_channels, d_state // 2, 2)),
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
    s4d.s4d_kernel(**_s4d_params("diag-lin", num_channels=5, num_ssm=2), length=8, disc="zoh")


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
