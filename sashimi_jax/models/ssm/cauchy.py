"""Cauchy sums of conjugate-symmetric DPLR SSMs at the roots of unity, chunked.

For nodes omega_k = exp(-2 pi i k / L) the bilinear transform maps the unit
circle to z_k = 2 (1 - omega_k) / (1 + omega_k). We compute

  rho_v(omega) = r_v(z) / (1 + omega),
  r_v(z) = sum_n v_n / (z - w_n) + conj(v_n) / (z - conj(w_n)),

which stays finite at omega = -1 (where z is infinite). With a = 2 (1 - omega),
b = 1 + omega the conjugate pair collapses to real coefficients:

  rho_v = [2 a sum_n Re(v_n) D_n - 2 b sum_n Re(v_n conj(w_n)) D_n],
  D_n = 1 / ((a - w_n b) (a - conj(w_n) b)),

so each chunk of nodes is one real matmul against D (H, N2, chunk). Memory is
O(H N2 chunk), never O(H N2 L); the chunk body is rematerialised for gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_CHUNK = 128  # Nodes per chunk: the (M, H, N2, chunk) block stays in CPU cache.


def roots_of_unity_nodes(length: int):
  """(a, b) complex128 numpy (length // 2 + 1,): a = 2 (1 - omega), b = 1 + omega."""
  omega = np.exp(-2j * np.pi * np.arange(length // 2 + 1) / length)
  return 2.0 * (1.0 - omega), 1.0 + omega


def cauchy_rho(v: jax.Array, w: jax.Array, length: int, chunk: int = DEFAULT_CHUNK) -> jax.Array:
  """rho[m, h, k] = r_{v[m]}(z_k) / (1 + omega_k) for the L // 2 + 1 nodes of length L.

  Args:
    v: (M, H, N2) complex64 numerators.
    w: (H, N2) complex64 poles (Re w < 0).
    length: L, static.
    chunk: nodes per chunk, static.

  Returns:
    (M, H, L // 2 + 1) complex64.
  """
  a, b = roots_of_unity_nodes(length)
  return cauchy_rho_at(v, w, a, b, chunk)


def cauchy_rho_at(v: jax.Array, w: jax.Array, a: np.ndarray, b: np.ndarray,
                  chunk: int = DEFAULT_CHUNK) -> jax.Array:
  """As cauchy_rho, at any nodes given as a = 2 (1 - omega), b = 1 + omega.

  Args:
    v: (M, H, N2) complex64 numerators.
    w: (H, N2) complex64 poles (Re w < 0).
    a, b: (K,) complex128 numpy node coordinates.
    chunk: nodes per chunk, static.

  Returns:
    (M, H, K) complex64.
  """
  num_nodes = a.shape[0]
  chunk = min(chunk, num_nodes)
  num_chunks = -(-num_nodes // chunk)
  pad = num_chunks * chunk - num_nodes
  # Padded nodes (a, b) = (1, 0) give finite D = 1; their values are dropped.
  a = np.concatenate([a, np.ones(pad)]).reshape(num_chunks, chunk)
  b = np.concatenate([b, np.zeros(pad)]).reshape(num_chunks, chunk)
  a = jnp.asarray(a, jnp.complex64)
  b = jnp.asarray(b, jnp.complex64)
  num_v = v.shape[0]
  lhs = jnp.concatenate([jnp.real(v), jnp.real(v * jnp.conj(w)[None])], axis=0)
  lhs = jnp.swapaxes(lhs, 0, 1)  # (H, 2M, N2): batch axis first makes a fast batched matmul.
  w_c = jnp.conj(w)

  @jax.checkpoint
  def one_chunk(nodes):
    a_k, b_k = nodes  # (chunk,)
    den = (a_k - w[..., None] * b_k) * (a_k - w_c[..., None] * b_k)  # (H, N2, chunk)
    d = 1.0 / den
    d_pairs = jnp.concatenate([jnp.real(d), jnp.imag(d)], axis=-1)  # (H, N2, 2 chunk)
    s = jnp.einsum("hmn,hnk->hmk", lhs, d_pairs, precision=_HIGHEST)
    s = jax.lax.complex(s[..., :chunk], s[..., chunk:])  # (H, 2M, chunk)
    return 2.0 * a_k * s[:, :num_v] - 2.0 * b_k * s[:, num_v:]

  rho = jax.lax.map(one_chunk, (a, b))  # (num_chunks, H, M, chunk)
  rho = jnp.transpose(rho, (2, 1, 0, 3)).reshape(num_v, w.shape[0], num_chunks * chunk)
  return rho[..., :num_nodes]
