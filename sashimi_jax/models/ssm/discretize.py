"""Time-step sampling and discretisation of diagonal continuous-time SSMs.

Continuous system x'(t) = A x(t) + B u(t) with diagonal complex A (one entry per
conjugate pair). Discrete system x_k = A_bar x_{k-1} + B_bar u_k.
"""

import math

import jax
import jax.numpy as jnp

from sashimi_jax.models.ssm import complex_pairs

DISCRETIZATIONS = ("zoh", "bilinear")


def check_disc(disc: str) -> str:
  """Returns `disc` or raises ValueError naming the accepted values."""
  if disc not in DISCRETIZATIONS:
    raise ValueError(f"unknown discretisation {disc!r}; expected one of {DISCRETIZATIONS}")
  return disc


def sample_log_dt(key: jax.Array, num_channels: int, dt_min: float, dt_max: float) -> jax.Array:
  """log(dt) drawn uniformly in [log dt_min, log dt_max]: (num_channels,) float32."""
  if not 0.0 < dt_min <= dt_max:
    raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
  lo, hi = math.log(dt_min), math.log(dt_max)
  return jax.random.uniform(key, (num_channels,), jnp.float32, lo, hi)


def discretize_diag(dt: jax.Array, A: jax.Array, B: jax.Array, disc: str):
  """Discretises a diagonal SSM.

  Args:
    dt: (H, 1) float32 step sizes.
    A: (H, N2) complex64 diagonal of the state matrix.
    B: (H, N2) complex64 input vector.
    disc: "zoh" or "bilinear".

  Returns:
    (log_A_bar (H, N2), A_bar (H, N2), B_bar (H, N2)) complex64. log_A_bar is a
    logarithm of A_bar (exact dt*A for ZOH), used by the Vandermonde kernel.
  """
  check_disc(disc)
  dtA = dt * A
  if disc == "zoh":
    log_A_bar = dtA
    A_bar = jnp.exp(dtA)
    B_bar = B * complex_pairs.expm1(dtA) / A
  else:
    denom = 1.0 - 0.5 * dtA
    A_bar = (1.0 + 0.5 * dtA) / denom
    # log1p keeps log|A_bar| accurate when |A_bar| is close to 1 (small dt).
    log_A_bar = complex_pairs.log1p(0.5 * dtA) - complex_pairs.log1p(-0.5 * dtA)
    B_bar = B * dt / denom
  return log_A_bar, A_bar, B_bar
