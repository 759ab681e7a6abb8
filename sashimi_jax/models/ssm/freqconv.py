"""Causal convolution with kernels evaluated at the transform's own frequencies.

A causal convolution of L tokens is exact as a circular one of n = 2L points:
y = irfft(rfft(u, n) * K_f, n)[:L] with K_f[k] = sum_{l<L} K_l omega_k^l at the n-th roots of
unity omega_k = exp(-2 pi i k / n), k = 0..L. Both layer types have a rational closed form for
that truncated sum, because omega_k^L = (-1)^k:

  sum_{l<L} C A^l B omega^l = C (I - (-1)^k A^L) (I - A omega)^{-1} B,

so K_f is computed directly (no kernel in time, no transform of it; for DPLR no
irfft -> rfft round trip). Nodes are processed in chunks: memory O(H (N + chunk)) per chunk.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from sashimi_jax.models.ssm import cauchy
from sashimi_jax.models.ssm import complex_pairs
from sashimi_jax.models.ssm import discretize
from sashimi_jax.models.ssm import dplr
from sashimi_jax.models.ssm import s4d

DEFAULT_CHUNK = 128  # Frequencies per chunk (as cauchy.DEFAULT_CHUNK: fits in cache).


def causal_spectrum_conv(u: jax.Array, k_f: jax.Array) -> jax.Array:
  """y[b, l, h] = sum_{j <= l} K[h, j] u[b, l - j, h] given K's spectrum.

  Args:
    u: (B, L, H) float.
    k_f: (H, L + 1) complex64: rfft of the kernel's first L taps at n = 2L.

  Returns:
    (B, L, H) float32.
  """
  length = u.shape[1]
  if k_f.shape[-1] != length + 1:
    raise ValueError(f"kernel spectrum has {k_f.shape[-1]} bins; a sequence of {length} tokens "
                     f"needs {length + 1} (n = {2 * length})")
  n_fft = 2 * length
  u_f = jnp.fft.rfft(jnp.swapaxes(u, 1, 2).astype(jnp.float32), n=n_fft, axis=-1)  # (B, H, L+1)
  y = jnp.fft.irfft(u_f * k_f[None], n=n_fft, axis=-1)[..., :length]
  return jnp.swapaxes(y, 1, 2)


def _chunked_nodes(values: np.ndarray, chunk: int, pad_value: complex):
  """(K,) numpy -> (num_chunks, chunk) complex64 jax array, padded with pad_value."""
  num = values.shape[0]
  num_chunks = -(-num // chunk)
  padded = np.concatenate([values, np.full(num_chunks * chunk - num, pad_value)])
  return jnp.asarray(padded.reshape(num_chunks, chunk), jnp.complex64)


_SERIES_RADIUS = 0.5  # |z| below which geometric_sum uses series (no 0/0 in value or gradient).
_BERNOULLI = (1.0, -1.0 / 2, 1.0 / 12, 0.0, -1.0 / 720, 0.0, 1.0 / 30240, 0.0, -1.0 / 1209600)


def _horner(coeffs, z):
  acc = jnp.zeros_like(z) + coeffs[-1]
  for c in coeffs[-2::-1]:
    acc = acc * z + c
  return acc


def _expm1_over(w, expm1_w):
  """(e^w - 1) / w given e^w - 1: by its series for |w| < 1 (accurate with its derivative)."""
  small = jnp.abs(w) < 1.0
  w_small = jnp.where(small, w, 0.0)
  w_large = jnp.where(small, 1.0, w)
  series = _horner([1.0 / math.factorial(j + 1) for j in range(14)], w_small)
  return jnp.where(small, series, expm1_w / w_large)


def geometric_sum(z, one_minus_x, x_pow_l, length: int):
  """sum_{l < L} x^l = (1 - x^L) / (1 - x) for x = e^z, accurate with its gradient near x = 1.

  Near x = 1 the quotient is 0/0 and its autodiff derivative cancels catastrophically, so for
  |z| < 0.5 (z's imaginary part taken modulo 2 pi) it is L phi(L z) beta(z) with
  phi(w) = (e^w - 1) / w and beta(z) = z / (e^z - 1) by their series (e^(L z) = x^L).

  Args:
    z: complex log x (any branch); one_minus_x, x_pow_l: 1 - x and x^L, complex, same shape.
  """
  two_pi = 2.0 * np.pi
  z = jax.lax.complex(jnp.real(z), jnp.imag(z) - two_pi * jnp.round(jnp.imag(z) / two_pi))
  near = jnp.abs(z) < _SERIES_RADIUS
  z_near = jnp.where(near, z, 0.0)
  series = length * _expm1_over(length * z_near, x_pow_l - 1.0) * _horner(_BERNOULLI, z_near)
  direct = (1.0 - x_pow_l) / jnp.where(near, 1.0, one_minus_x)
  return jnp.where(near, series, direct)


def s4d_spectrum(log_dt, log_A_real, A_imag, B, C, *, length: int, disc: str,
                 chunk: int = DEFAULT_CHUNK) -> jax.Array:
  """rfft at n = 2L of the S4D kernel's first L taps, from its closed form: (H, L + 1) complex64.

  K_f[k] = sum_n c_n g(a_n omega_k) + conj(c_n) g(conj(a_n) omega_k), c = C B_bar, a = A_bar,
  g(x) = sum_{l<L} x^l = (1 - x^L) / (1 - x) with x^L = a^L (-1)^k (geometric_sum). 1 - x is
  written (1 - a) + a (1 - omega) with 1 - a = -expm1(log a) and 1 - omega exact in float64,
  so slow modes near omega = 1 keep their relative accuracy.
  """
  dt, A, B, C = s4d.continuous_params(log_dt, log_A_real, A_imag, B, C)
  log_a, a, b_bar = discretize.discretize_diag(dt, A, B, disc)
  coef = C * b_bar  # (H, N2)
  a_pow = jnp.exp(length * log_a)  # a^L
  one_minus_a = -complex_pairs.expm1(log_a)
  k = np.arange(length + 1)
  theta = -np.pi * k / length
  one_minus_omega = 2.0 * np.sin(0.5 * theta) ** 2 - 1j * np.sin(theta)  # 1 - exp(i theta)
  sign = (-1.0) ** k
  chunk = min(chunk, length + 1)
  nodes = (_chunked_nodes(one_minus_omega, chunk, 0.0), _chunked_nodes(sign, chunk, 0.0),
           _chunked_nodes(1j * theta, chunk, 0.0))

  def one_side(coef, log_a, a, one_minus_a, a_pow, om, s, i_theta):
    e = lambda v: v[..., None]
    g = geometric_sum(e(log_a) + i_theta, e(one_minus_a) + e(a) * om, e(a_pow) * s, length)
    return jnp.sum(e(coef) * g, axis=1)

  @jax.checkpoint
  def one_chunk(nodes):
    om, s, i_theta = nodes  # (chunk,)
    plain = one_side(coef, log_a, a, one_minus_a, a_pow, om, s, i_theta)
    conj = one_side(*map(jnp.conj, (coef, log_a, a, one_minus_a, a_pow)), om, s, i_theta)
    return plain + conj  # (H, chunk)

  k_f = jax.lax.map(one_chunk, nodes)  # (num_chunks, H, chunk)
  k_f = jnp.swapaxes(k_f, 0, 1).reshape(coef.shape[0], -1)
  return k_f[:, :length + 1]


def _nodes(k: np.ndarray, n: int):
  """Cauchy node coordinates (a, b) = (2 (1 - omega), 1 + omega) for omega = exp(-2 pi i k / n)."""
  theta = -2.0 * np.pi * k / n
  one_minus_omega = 2.0 * np.sin(0.5 * theta) ** 2 - 1j * np.sin(theta)
  return 2.0 * one_minus_omega, 2.0 - one_minus_omega


def dplr_spectrum(log_dt, log_A_real, A_imag, B, P, C, *, length: int, l_max: int) -> jax.Array:
  """rfft at n = 2L of the DPLR kernel's first L <= l_max taps: (H, L + 1) complex64.

  Even k (omega^L = 1) use the output row C (I - A_bar^L), odd k (omega^L = -1) use
  C (I + A_bar^L); each is the Cauchy + Woodbury evaluation of today's kernel with that row.
  For L = l_max the even row is the stored C~ itself; C is recovered by one dense solve.
  """
  if length > l_max:
    raise ValueError(f"DPLR kernel of length {length} exceeds l_max={l_max}")
  A_bar, _, c = dplr.real_system(log_dt, log_A_real, A_imag, B, P, C, length=l_max)
  if length == l_max:
    row_even = dplr.c_to_real(C)
  else:
    row_even = c - jnp.einsum("hn,hnm->hm", c, dplr.matrix_power(A_bar, length),
                              precision=dplr._HIGHEST)  # pylint: disable=protected-access
  row_odd = 2.0 * c - row_even
  dt, lam, b, p = dplr.continuous_params(log_dt, log_A_real, A_imag, B, P)
  q = jnp.conj(p)
  w = lam * dt

  def at_nodes(row, k):
    c_vec = complex_pairs.to_complex(dplr.c_from_real(row))
    v = jnp.stack([b * c_vec, b * q, p * c_vec, p * q]) * dt[None]
    a_k, b_k = _nodes(k, 2 * length)
    rho = cauchy.cauchy_rho_at(v, w, a_k, b_k)
    b_k = jnp.asarray(b_k, jnp.complex64)
    # Woodbury for the rank-1 term, then the bilinear factor 2 / (1 + omega).
    return 2.0 * (rho[0] - rho[1] * b_k * rho[2] / (1.0 + b_k * rho[3]))

  k = np.arange(length + 1)
  even = at_nodes(row_even, k[0::2])
  odd = at_nodes(row_odd, k[1::2])
  # Interleave bins 0, 1, 2, ... from the even and odd halves.
  num_even, num_odd = even.shape[-1], odd.shape[-1]
  if num_odd < num_even:
    odd = jnp.pad(odd, ((0, 0), (0, num_even - num_odd)))
  k_f = jnp.stack([even, odd], axis=-1).reshape(even.shape[0], 2 * num_even)
  return k_f[:, :length + 1]
