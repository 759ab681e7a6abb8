"""Initial (A, B[, P]) of S4D and DPLR S4 layers (values of Gu et al. 2022, S4D paper).

A entries are one per conjugate pair: N/2 of them for a real state of size N.
"""

import numpy as np

from sashimi_jax.models.ssm import hippo

DIAG_INITS = ("diag-lin", "diag-inv", "diag-legs")
DPLR_INITS = ("legs",)


def diag_init(init: str, d_state: int):
  """S4D initial diagonal A and input vector B.

  diag-lin: A_n = -1/2 - i pi n (B = 1); diag-inv: A_n = -1/2 - i N/pi (N/(2n+1) - 1)
  (B = 1); diag-legs: the diagonal part of the LegS NPLR form (B from LegS).

  Args:
    init: one of DIAG_INITS.
    d_state: N, the (even) real state size.

  Returns:
    A (N/2,) complex128, B (N/2,) complex128.
  """
  if d_state % 2:
    raise ValueError(f"d_state must be even (conjugate pairs), got {d_state}")
  n = np.arange(d_state // 2, dtype=np.float64)
  B = np.ones(d_state // 2, np.complex128)
  if init == "diag-lin":
    imag = np.pi * n
  elif init == "diag-inv":
    imag = d_state / np.pi * (d_state / (1 + 2 * n) - 1)
  elif init == "diag-legs":
    W, _, B = hippo.nplr_legs(d_state)
    imag = -W.imag
  else:
    raise ValueError(f"unknown S4D init {init!r}; expected one of {DIAG_INITS}")
  A = -0.5 - 1j * imag
  return A, B


def dplr_init(init: str, d_state: int):
  """DPLR S4 initial (A diagonal (N/2,), P (1, N/2), B (N/2,)) complex128."""
  if init != "legs":
    raise ValueError(f"unknown S4 (DPLR) init {init!r}; expected one of {DPLR_INITS}")
  W, P, B = hippo.nplr_legs(d_state)
  return W, P, B
