"""model.compute_dtype: bfloat16 activations with float32 parameters, kernels, state and outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax.models.sashimi import SaShiMiLM

# Relative norm of (convolution mode - recurrent mode), per compute dtype: float32 as
# tests/test_model.py (S4D); bfloat16 rounds every activation to 8 mantissa bits, in a different
# order in the two modes.
CONV_STEP_TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2}
# bfloat16 against float32 outputs on the same parameters (the rounding itself).
BF16_VS_F32_TOLERANCE = 5e-2


def _model(compute_dtype, pool=(4, 4)):
  return SaShiMiLM(vocab_size=32, output_dim=12, d_model=8, n_layers=2, pool=pool, expand=2,
                   ff=2, unet=True, layer="s4d", d_state=8, final_act="glu", disc="zoh", l_max=64,
                   compute_dtype=compute_dtype, rngs=nnx.Rngs(0))


def _relative_error(reference, other):
  reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
  return float(np.linalg.norm(reference - other) / np.linalg.norm(reference))


def _run(compute_dtype, params, tokens, prompt):
  """(conv outputs, stepped outputs, prefill + stepped outputs, final state), one compile."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: _model(compute_dtype)))

  @jax.jit
  def run(params, tokens):
    m = nnx.merge(graphdef, params)
    rec = m.setup_recurrence()

    def body(state, token):
      out, state = m.step(rec, state, token)
      return state, out

    state, stepped = jax.lax.scan(body, m.init_state(tokens.shape[0]), tokens.T)
    prompt_out, prefilled = m.prefill(rec, tokens[:, :prompt])
    prefilled, rest = jax.lax.scan(body, prefilled, tokens[:, prompt:].T)
    resumed = jnp.concatenate([prompt_out, jnp.swapaxes(rest, 0, 1)], axis=1)
    return m(tokens), jnp.swapaxes(stepped, 0, 1), resumed, state, prefilled

  return run(params, tokens)


@pytest.fixture(scope="module")
def results():
  params = nnx.state(_model("float32"), nnx.Param)
  tokens = jax.random.randint(jax.random.key(1), (2, 53), 0, 32, jnp.int32)
  return params, {dtype: _run(dtype, params, tokens, prompt=17) for dtype in CONV_STEP_TOLERANCE}


@pytest.mark.parametrize("compute_dtype", list(CONV_STEP_TOLERANCE))
def test_sampler_agrees_with_conv_mode(results, compute_dtype):
  conv, stepped, resumed, state, prefilled = results[1][compute_dtype]
  tolerance = CONV_STEP_TOLERANCE[compute_dtype]
  assert conv.dtype == stepped.dtype == jnp.float32  # outputs (the loss's input) in float32
  assert _relative_error(conv, stepped) <= tolerance
  assert _relative_error(conv, resumed) <= tolerance
  # The recurrent state (S4 states, pool buffers) stays float32 whatever the compute dtype.
  for leaf in jax.tree.leaves((state, prefilled)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype


def test_bfloat16_rounds_activations_only(results):
  params, by_dtype = results
  conv_f32, conv_bf16 = by_dtype["float32"][0], by_dtype["bfloat16"][0]
  error = _relative_error(conv_f32, conv_bf16)
  # Not vacuous: bfloat16 differs from float32, but only by rounding.
  assert 1e-4 < error <= BF16_VS_F32_TOLERANCE
  # Master parameters stay float32.
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_bfloat16_gradients_are_float32_and_close():
  model = _model("float32", pool=(2,))
  params = nnx.state(model, nnx.Param)
  tokens = jax.random.randint(jax.random.key(2), (2, 32), 0, 12, jnp.int32)

  def grads(compute_dtype):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: _model(compute_dtype, pool=(2,))))

    def loss(params):
      logits = nnx.merge(graphdef, params)(tokens)
      return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
          logits, tokens[..., None], -1)[..., 0])

    return jax.jit(jax.grad(loss))(params)

  g32, g16 = grads("float32"), grads("bfloat16")
  assert {leaf.dtype for leaf in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
  assert _relative_error(flat(g32), flat(g16)) <= 0.1


def test_bad_compute_dtype_is_rejected():
  with pytest.raises(ValueError, match="compute_dtype"):
    _model("float16")
