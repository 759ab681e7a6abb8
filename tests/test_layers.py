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
