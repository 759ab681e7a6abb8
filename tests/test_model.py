"""SaShiMiLM: convolution mode equals the recurrent scan and prefill, causality, build_model."""

import functools
import math
import pathlib
import runpy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax.state import build_model
from sashimi_jax.models import layers
from sashimi_jax.models.sashimi import SaShiMiLM

S4D_TOLERANCE = 1e-5  # relative norm of (conv - recurrent)
DPLR_TOLERANCE = 1e-3


def _small_model(*, pool=(4, 4), unet=False, layer="s4d", l_max=64, **kwargs):
  args = dict(vocab_size=32, output_dim=12, d_model=8, n_layers=2, pool=pool, expand=2, ff=2,
              unet=unet, layer=layer, d_state=8, final_act="glu",
              disc="bilinear" if layer == "s4" else "zoh", l_max=l_max, rngs=nnx.Rngs(0))
  args.update(kwargs)
  return SaShiMiLM(**args)


def _l_max(model, level):
  """The kernel length of level `level`'s S4 layers (-1: the center)."""
  node = model.levels()[level]
  stage = node.up if hasattr(node, "up") else node.stage
  return stage.pair(0).s4.layer.kernel.l_max


def _relative_error(reference, other):
  reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
  return float(np.linalg.norm(reference - other) / np.linalg.norm(reference))


def _tokens(batch, length, vocab_size=32, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab_size, jnp.int32)


def _scan_steps(model, rec, state, tokens):
  """Steps tokens (B, T) through the recurrence: (final state, outputs (B, T, D))."""

  def body(state, token):
    out, state = model.step(rec, state, token)
    return state, out

  state, outs = jax.lax.scan(body, state, tokens.T)
  return state, jnp.swapaxes(outs, 0, 1)


def _conv_and_scan(model, tokens):
  """(conv outputs, recurrent outputs), both (B, T, D), from one jit-compiled call."""
  graphdef, params = nnx.split(model)

  @jax.jit
  def run(params, tokens):
    m = nnx.merge(graphdef, params)
    final_state, outs = _scan_steps(m, m.setup_recurrence(), m.init_state(tokens.shape[0]), tokens)
    return m(tokens), outs, final_state["t"]

  conv, recurrent, steps = run(params, tokens)
  chex.assert_equal(int(steps), tokens.shape[1])
  return conv, recurrent


# One model per configuration, shared by the tests below, with its compiled convolution mode and
# one compiled program for the recurrent scan and (for PREFILL_PROMPTS) prefill + scan.
CONFIGS = [((4, 4), False, "s4d"), ((4, 4), True, "s4d"), ((2, 2, 2), False, "s4d"),
           ((2, 2, 2), True, "s4d"), ((2, 2, 2), True, "s4")]
# Prompts: one token, one coarsest block, and 2 blocks + 1 (not a multiple of any pool factor).
PREFILL_PROMPTS = {((2, 2, 2), True, "s4d"): (1, 17), ((4, 4), False, "s4d"): (16,),
                   ((2, 2, 2), True, "s4"): (17,)}


@functools.lru_cache(maxsize=None)
def _modes(pool, unet, layer):
  model = _small_model(pool=pool, unet=unet, layer=layer)
  tokens = _tokens(2, 3 * math.prod(pool) + 5)  # >= 3 full coarsest blocks plus a partial one
  prompts = PREFILL_PROMPTS.get((pool, unet, layer), ())
  graphdef, params = nnx.split(model)
  conv = jax.jit(lambda params, tokens: nnx.merge(graphdef, params)(tokens))

  @jax.jit
  def recurrent(params, tokens):
    m = nnx.merge(graphdef, params)
    rec = m.setup_recurrence()
    state, results = m.init_state(tokens.shape[0]), {}
    state, results["scan"] = _scan_steps(m, rec, state, tokens)
    results["scan_steps"] = state["t"]
    for p in prompts:
      prompt_out, state = m.prefill(rec, tokens[:, :p])
      results[f"prefill_steps_{p}"] = state["t"]
      state, outs = _scan_steps(m, rec, state, tokens[:, p:])
      results[f"prefill_{p}"] = jnp.concatenate([prompt_out, outs], axis=1)
      results[f"prefill_{p}_steps"] = state["t"]
    return results

  results = recurrent(params, tokens)
  results["conv"] = conv(params, tokens)
  return model, tokens, conv, results


@pytest.mark.parametrize("pool,unet,layer", CONFIGS)
def test_conv_equals_recurrent(pool, unet, layer):
  _, tokens, _, results = _modes(pool, unet, layer)
  conv = results["conv"]
  chex.assert_shape(conv, tokens.shape + (12,))
  chex.assert_type(conv, jnp.float32)
  chex.assert_tree_all_finite(conv)
  chex.assert_equal(int(results["scan_steps"]), tokens.shape[1])
  tolerance = DPLR_TOLERANCE if layer == "s4" else S4D_TOLERANCE
  assert _relative_error(conv, results["scan"]) <= tolerance


@pytest.mark.parametrize("pool,unet,layer", list(PREFILL_PROMPTS))
def test_prefill_then_step_equals_conv(pool, unet, layer):
  _, tokens, _, results = _modes(pool, unet, layer)
  tolerance = DPLR_TOLERANCE if layer == "s4" else S4D_TOLERANCE
  for p in PREFILL_PROMPTS[(pool, unet, layer)]:
    chex.assert_equal(int(results[f"prefill_steps_{p}"]), p)
    chex.assert_equal(int(results[f"prefill_{p}_steps"]), tokens.shape[1])
    assert _relative_error(results["conv"], results[f"prefill_{p}"]) <= tolerance, p


@pytest.mark.parametrize("pool,unet,layer", [((2, 2, 2), True, "s4d"), ((4, 4), False, "s4d")])
def test_causality(pool, unet, layer):
  model, tokens, conv, results = _modes(pool, unet, layer)
  params = nnx.state(model, nnx.Param)
  base = results["conv"]
  scale = float(jnp.max(jnp.abs(base)))
  for k in (0, 5, 8, tokens.shape[1] - 1):
    changed = tokens.at[:, k:].set((tokens[:, k:] + 7) % 32)
    out = conv(params, changed)
    # FFT round-off is not exactly causal; a leak from the future would be O(scale).
    np.testing.assert_allclose(out[:, :k], base[:, :k], rtol=0, atol=1e-5 * scale)
    # Not vacuous: the output at the first changed position does change.
    assert float(jnp.max(jnp.abs(out[:, k] - base[:, k]))) > 1e-3 * scale


def _tiny_config(is_stereo, sample_len=4096):
  """The `:tiny` preset's training length (4096 frames) on a narrow model, through build_model.

  Starts from the real preset, so every model field the preset defines is present.
  """
  root = pathlib.Path(__file__).resolve().parents[1]
  config = runpy.run_path(str(root / "configs" / "stereo_temporal.py"))["get_config"]("tiny")
  config.dataset.update(dict(bits=8, sample_len=sample_len, is_stereo=is_stereo))
  config.model.update(dict(
      layer="s4d", d_model=8, n_layers=1, pool=[4, 4], expand=2, ff=2, unet=False, d_state=8,
      n_ssm=1, dropout=0.0, final_act="glu", init="diag-lin", disc="zoh", dt_min=1e-3,
      dt_max=1e-1, conv_impl="auto", remat="none", compute_dtype="float32",
      output_head="categorical", n_mixtures=10))
  return config


@pytest.mark.parametrize("is_stereo", [False, True])
def test_full_training_length_conv_equals_recurrent(is_stereo):
  config = _tiny_config(is_stereo)
  model = build_model(config, nnx.Rngs(0))
  stream_length = config.dataset.sample_len * (2 if is_stereo else 1)  # stereo: one 2L stream
  chex.assert_equal(_l_max(model, -1), stream_length // 16)
  tokens = _tokens(1, stream_length, vocab_size=256)
  conv, recurrent = _conv_and_scan(model, tokens)
  chex.assert_shape(conv, (1, stream_length, 256))
  assert _relative_error(conv, recurrent) <= S4D_TOLERANCE


def test_pool_shapes_and_upsample_shift():
  rngs = nnx.Rngs(0)
  down = layers.DownPool(3, expand=2, pool=4, rngs=rngs)
  up = layers.UpPool(6, expand=2, pool=4, rngs=rngs)

  @jax.jit
  def run(x):
    pooled = down(x)
    upsampled = up(pooled)
    down_buffer, up_buffer, down_steps, up_steps = down.init_state(2), up.init_state(2), [], []
    for slot in range(8):  # the step forms over two blocks
      pooled_now, down_buffer = down.step(down_buffer, x[:, slot], jnp.int32(slot % 4))
      down_steps.append(pooled_now)
      y, up_buffer = up.step(up_buffer, pooled[:, slot // 4], jnp.int32(slot % 4))
      up_steps.append(y)
    return pooled, upsampled, up.refill(pooled[:, 0]), down_steps, jnp.stack(up_steps, axis=1)

  x = jax.random.normal(jax.random.key(0), (2, 16, 3))
  pooled, upsampled, refilled, down_steps, up_steps = run(x)
  chex.assert_shape(pooled, (2, 4, 6))
  chex.assert_shape(upsampled, (2, 16, 3))
  # The first block is zero (causal shift); block j comes from coarse frame j - 1.
  np.testing.assert_array_equal(np.asarray(upsampled[:, :4]), 0.0)
  np.testing.assert_allclose(upsampled[:, 4:8], refilled, rtol=1e-6, atol=1e-6)
  # Step forms equal the convolutional forms: DownPool when its ring buffer is full ...
  np.testing.assert_allclose(down_steps[3], pooled[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(down_steps[7], pooled[:, 1], rtol=1e-5, atol=1e-6)
  # ... and UpPool at every fine step.
  np.testing.assert_allclose(up_steps, upsampled[:, :8], rtol=1e-5, atol=1e-6)


def test_only_params_and_dropout():
  model, tokens, _, results = _modes((4, 4), False, "s4d")
  params = nnx.state(model, nnx.Param)
  _, params_only, rest = nnx.split(model, nnx.Param, ...)
  chex.assert_trees_all_equal_structs(nnx.split(model)[1], params_only)
  assert not jax.tree.leaves(rest)
  # The same structure with dropout 0.25 (only static attributes differ), on the same parameters.
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _small_model(dropout=0.25)))
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, params)

  @jax.jit
  def run(params, tokens, key):
    m = nnx.merge(graphdef, params)
    return m(tokens), m(tokens, deterministic=False, rngs=nnx.Rngs(dropout=key))

  evaluation, train_a = run(params, tokens, jax.random.key(1))
  _, train_b = run(params, tokens, jax.random.key(2))
  model = nnx.merge(graphdef, params)
  # deterministic=True (the default) ignores dropout entirely.
  np.testing.assert_allclose(evaluation, results["conv"], rtol=0, atol=1e-5)
  assert float(jnp.max(jnp.abs(train_a - train_b))) > 1e-3
  assert float(jnp.max(jnp.abs(train_a - evaluation))) > 1e-3
  with pytest.raises(ValueError, match="rngs"):
    jax.eval_shape(lambda t: model(t, deterministic=False), tokens)


def test_build_model_derives_sizes():
  config = _tiny_config(is_stereo=True, sample_len=64)
  model = build_model(config, nnx.Rngs(0))
  chex.assert_equal(model.output_dim, 256)
  chex.assert_equal(model.vocab_size, 256)
  # Each S4 layer at depth k gets l_max / prod(pool[:k]) with l_max = 2 * sample_len.
  chex.assert_equal(_l_max(model, 0), 128)
  chex.assert_equal(_l_max(model, 1), 32)
  chex.assert_equal(_l_max(model, -1), 8)
  config.model.output_head = "dml"
  config.model.n_mixtures = 5
  config.dataset.is_stereo = False
  model = build_model(config, nnx.Rngs(0))
  chex.assert_equal(model.output_dim, 15)
  chex.assert_equal(_l_max(model, 0), 64)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="l_max"):
    _small_model(l_max=100)
  with pytest.raises(ValueError, match="pool"):
    _small_model(pool=(4, 0))
  model = _modes((4, 4), False, "s4d")[0]
  with pytest.raises(ValueError, match="int"):
    model(jnp.zeros((1, 16), jnp.float32))
  with pytest.raises(ValueError, match="at least one token"):
    model.prefill(None, jnp.zeros((1, 0), jnp.int32))
  with pytest.raises(ValueError, match="batch_size"):
    model.init_state(0)


def test_out_of_range_tokens_are_rejected_not_clamped():
  model = _small_model(pool=(2,), l_max=16)
  for bad in (32, -1):
    tokens = _tokens(1, 16).at[0, 5].set(bad)
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 32\)"):
      model(tokens)
  model(_tokens(1, 16))  # in range: fine.
