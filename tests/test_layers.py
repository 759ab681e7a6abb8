"""layers.gelu: the exact GELU in the reference's erf form."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from sashimi_jax.models import layers


def test_gelu_is_the_exact_erf_gelu_to_float32_rounding():
  x = np.linspace(-12.0, 12.0, 4001, dtype=np.float32)
  exact = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])
  ours = np.asarray(layers.gelu(jnp.asarray(x)), np.float64)
  # One float32 step of the largest value (12) is 9.5e-7; the tanh approximation is 1e-3 off.
  np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-6)
  tanh_form = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=True), np.float64)
  assert np.max(np.abs(tanh_form - exact)) > 1e-4
  assert layers.gelu(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_layer_norm_step_is_the_layer_norm_to_float32_rounding():
  rng = np.random.default_rng(0)
  norm = layers.LayerNorm(64)
  norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, 64), jnp.float32)
  norm.bias[...] = jnp.asarray(rng.normal(size=64), jnp.float32)
  # Rows with a large common offset: a one-pass E[x^2] - E[x]^2 variance would lose them.
  x = jnp.asarray(rng.normal(size=(8, 64)) * 0.1 + 30.0, jnp.float32)
  x64 = np.asarray(x, np.float64)
  centered = x64 - x64.mean(-1, keepdims=True)
  exact = (centered / np.sqrt((centered**2).mean(-1, keepdims=True) + norm.epsilon)
           * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...]))
  np.testing.assert_allclose(np.asarray(jax.jit(norm.step)(x)), exact, rtol=0, atol=2e-4)
  np.testing.assert_allclose(np.asarray(jax.jit(norm.step)(x)), np.asarray(jax.jit(norm)(x)),
                             rtol=0, atol=2e-4)
  assert norm.step(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
