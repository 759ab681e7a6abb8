"""The causal input convolution: convolution == recurrence == prefill, causality, config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax import config as config_lib
from sashimi_jax.models.input_conv import CausalInputConv
from sashimi_jax.models.sashimi import SaShiMiLM


@pytest.mark.parametrize("kind", ["dense", "depthwise"])
@pytest.mark.parametrize("width", [1, 4])
def test_conv_equals_step_and_is_causal(kind, width):
  conv = CausalInputConv(8, width, kind=kind, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 11, 8))
  y = conv(x)
  state, steps = conv.init_state(2), []
  for t in range(11):
    out, state = conv.step(state, x[:, t])
    steps.append(out)
  np.testing.assert_allclose(jnp.stack(steps, 1), y, rtol=1e-5, atol=1e-5)
  # Output t sees x[t - width + 1 .. t] only.
  changed = conv(x.at[:, 5].add(1.0))
  np.testing.assert_array_equal(changed[:, :5], y[:, :5])
  assert not np.allclose(changed[:, 5:5 + width], y[:, 5:5 + width])
  np.testing.assert_allclose(changed[:, 5 + width:], y[:, 5 + width:], atol=1e-6)
  np.testing.assert_allclose(conv.prefill_state(x[:, :6]), conv.step(
      conv.prefill_state(x[:, :5]), x[:, 5])[1], atol=1e-6)


def _assert_steps_and_prefills_exactly(model, tol=1e-5):
  """model's recurrent step over 64 tokens, and prefill of 21 then steps, equal its convolution.

  Returns the tokens (2, 64) and the convolution's outputs on them."""
  tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, 256)
  conv = model(tokens)
  rec = model.setup_recurrence()

  def body(state, token):
    out, state = model.step(rec, state, token)
    return state, out

  _, stepped = jax.lax.scan(body, model.init_state(2), tokens.T)
  scale = float(jnp.max(jnp.abs(conv)))
  np.testing.assert_allclose(jnp.swapaxes(stepped, 0, 1), conv, atol=tol * scale)
  _, state = model.prefill(rec, tokens[:, :21])
  _, rest = jax.lax.scan(body, state, tokens[:, 21:].T)
  np.testing.assert_allclose(jnp.swapaxes(rest, 0, 1), conv[:, 21:], atol=tol * scale)
  return tokens, conv


def test_model_with_input_conv_steps_and_prefills_exactly(kind="depthwise"):
  model = SaShiMiLM(vocab_size=256, output_dim=256, d_model=16, n_layers=1, pool=(2, 2),
                    layer="s4d", d_state=8, l_max=64, input_conv_width=4, input_conv_kind=kind,
                    rngs=nnx.Rngs(0))
  _assert_steps_and_prefills_exactly(model)


def test_input_conv_config_is_validated():
  import runpy  # pylint: disable=g-import-not-at-top
  config = runpy.run_path("configs/stereo_temporal.py")["get_config"]("tiny")
  config.model.input_conv_width = -1
  config.model.input_conv_kind = "sparse"
  config.model.fine_conv_width = 65
  config.model.fine_conv_kind = "separable"
  problems = config_lib.find_problems(config)
  assert "model.input_conv_width=-1 must be >= 0." in problems
  assert any(p.startswith("model.input_conv_kind='sparse' is unknown") for p in problems)
  assert "model.fine_conv_width=65 must be <= 64." in problems
  assert any(p.startswith("model.fine_conv_kind='separable' is unknown") for p in problems)


def test_model_with_fine_conv_steps_and_prefills_exactly(kind="dense", unet=True, layer="s4d"):
  model = SaShiMiLM(vocab_size=256, output_dim=256, d_model=16, n_layers=2, pool=(2, 2),
                    layer=layer, d_state=8, l_max=64, unet=unet, fine_conv_width=3,
                    fine_conv_kind=kind, rngs=nnx.Rngs(0))
  # Level 0's S4 layers have the convolution (stacked on the layer axis), deeper ones do not.
  top = model.levels()[0]
  assert getattr(top.up, "layer_stack").s4.layer.pre_conv.kernel.shape[:2] == (2, 3)
  assert getattr(model.levels()[1].up, "layer_stack").s4.layer.pre_conv is None
  tokens, conv = _assert_steps_and_prefills_exactly(model)
  scale = float(jnp.max(jnp.abs(conv)))
  # The convolution changes the function: zeroing its kernels changes the outputs.
  plain = nnx.clone(model)
  for level in plain.levels()[:1]:
    block = getattr(level.up, "layer_stack").s4.layer.pre_conv
    block.kernel[...] = jnp.zeros_like(block.kernel[...])
    block.bias[...] = jnp.zeros_like(block.bias[...])
  assert not np.allclose(plain(tokens), conv, atol=1e-3 * scale)
