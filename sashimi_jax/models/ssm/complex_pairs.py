"""Complex numbers stored as float32 real/imag pairs (trailing axis of size 2).

Parameters and recurrent states are kept as real pairs so that every pytree the
model exposes is real-valued (optax, Orbax and sharding see plain float32 arrays);
the SSM math converts to complex64 inside functions.
"""

import jax
import jax.numpy as jnp
import numpy as np


def to_complex(pairs: jax.Array) -> jax.Array:
  """(..., 2) float real/imag pairs -> (...) complex64."""
  if pairs.shape[-1] != 2:
    raise ValueError(f"complex pairs need a trailing axis of size 2, got shape {pairs.shape}")
  return jax.lax.complex(pairs[..., 0].astype(jnp.float32), pairs[..., 1].astype(jnp.float32))


def to_pairs(z) -> jax.Array:
  """(...) complex -> (..., 2) float32 real/imag pairs (numpy in, jax out)."""
  if isinstance(z, np.ndarray):
    return jnp.asarray(np.stack([z.real, z.imag], axis=-1), dtype=jnp.float32)
  return jnp.stack([jnp.real(z), jnp.imag(z)], axis=-1).astype(jnp.float32)


def expm1(z: jax.Array) -> jax.Array:
  """exp(z) - 1 for complex z, accurate for small |z| (no cancellation).

  exp(x + iy) - 1 = expm1(x) cos y - 2 sin^2(y / 2) + i exp(x) sin y.
  """
  x, y = jnp.real(z), jnp.imag(z)
  re = jnp.expm1(x) * jnp.cos(y) - 2.0 * jnp.sin(0.5 * y) ** 2
  im = jnp.exp(x) * jnp.sin(y)
  return jax.lax.complex(re, im)


def log1p(z: jax.Array) -> jax.Array:
  """log(1 + z) for complex z, accurate for small |z|."""
  x, y = jnp.real(z), jnp.imag(z)
  re = 0.5 * jnp.log1p(x * (2.0 + x) + y * y)
  im = jnp.arctan2(y, 1.0 + x)
  return jax.lax.complex(re, im)


def diagonal_times_halves(a_re: jax.Array, a_im: jax.Array, x: jax.Array) -> jax.Array:
  """diag(a) s for complex a = a_re + i a_im (..., N/2) and a real vector x = [Re s, Im s]
  (..., N), the halves stacked on the last axis (the real form of a complex-diagonal state)."""
  n2 = a_re.shape[-1]
  x_re, x_im = x[..., :n2], x[..., n2:]
  return jnp.concatenate([a_re * x_re - a_im * x_im, a_re * x_im + a_im * x_re], axis=-1)
