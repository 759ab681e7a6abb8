"""HiPPO-LegS matrices and their normal-plus-low-rank (NPLR) diagonalisation.

All in float64 numpy: these are initial values, computed once at build time.
"""

import numpy as np

B_IMAG_CLIP = 2.0  # |Im B| clip of the reference's NPLR init, for stability.


def legs_transition(d_state: int):
  """HiPPO-LegS continuous-time (A (N, N), B (N,)) float64, as in Gu et al. 2020."""
  q = np.arange(d_state, dtype=np.float64)
  col, row = np.meshgrid(q, q)
  r = 2 * q + 1
  M = -(np.where(row >= col, r, 0) - np.diag(q))
  T = np.sqrt(np.diag(2 * q + 1))
  A = T @ M @ np.linalg.inv(T)
  B = np.diag(T).copy()
  return A, B


def legs_rank_correction(d_state: int):
  """P (1, N) with A + P^T P = skew-symmetric - I/2 (the LegS low-rank term)."""
  return np.sqrt(0.5 + np.arange(d_state, dtype=np.float64))[None, :]


def nplr_legs(d_state: int):
  """LegS in diagonal-plus-low-rank form, half of each conjugate pair kept.

  A_legs = V (diag(W) - P P^*) V^*, B = V^* B_legs, with V unitary.

  Args:
    d_state: N, the (even) real state size.

  Returns:
    W (N/2,) complex128 with Im W < 0, P (1, N/2) complex128, B (N/2,) complex128.
  """
  if d_state % 2:
    raise ValueError(f"d_state must be even (conjugate pairs), got {d_state}")
  A, B = legs_transition(d_state)
  P = legs_rank_correction(d_state)
  AP = A + P.T @ P  # = -I/2 + skew-symmetric
  w_re = np.mean(np.diagonal(AP))
  skew = AP - w_re * np.eye(d_state)
  # -i * skew is Hermitian: eigh gives the imaginary parts exactly.
  w_im, V = np.linalg.eigh(-1j * skew)
  order = np.argsort(w_im, kind="stable")
  V = V[:, order][:, : d_state // 2]
  W = w_re + 1j * w_im[order][: d_state // 2]  # Negative imaginary halves.
  V_inv = V.conj().T
  B = V_inv @ B.astype(np.complex128)
  P = (V_inv @ P.T.astype(np.complex128)).T
  B = B.real + 1j * np.clip(B.imag, -B_IMAG_CLIP, B_IMAG_CLIP)
  return W, P, B
