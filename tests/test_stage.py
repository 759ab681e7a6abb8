"""Scanned stages: equal to the same pairs applied one by one, and U-Net skips in reference order."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax.models.sashimi import SaShiMiLM
from sashimi_jax.models.stage import Stage

TOLERANCE = 1e-6  # relative norm: the scan and the loop run the same float32 ops


def _jit(fn, module):
  """fn(module, *args) compiled once, as a function of *args (parameters passed as arguments)."""
  graphdef, params = nnx.split(module)
  compiled = jax.jit(lambda params, *args: fn(nnx.merge(graphdef, params), *args))
  return lambda *args: compiled(params, *args)


def _relative_error(reference, other):
  reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
  return float(np.linalg.norm(reference - other) / np.linalg.norm(reference))


def _stage(ff, dropout=0.0, remat="none", n_layers=3):
  return Stage(8, n_layers=n_layers, ff=ff, dropout=dropout, remat=remat, l_max=32, layer="s4d",
               d_state=8, n_ssm=1, final_act="glu", init="diag-lin", disc="zoh", dt_min=1e-3,
               dt_max=1e-1, rngs=nnx.Rngs(0))


def _loop(stage, x, skips=None, keys=None, step=None):
  """The stage's pairs applied one by one (convolution mode, or one recurrent step).

  keys: per-layer dropout keys; layer i's S4 and FF blocks use the two halves of split(keys[i]).
  """
  new_states, s4_out = [], []
  for i in range(stage.n_layers):
    pair = stage.pair(i)
    s4_rngs = ff_rngs = None
    if keys is not None:
      s4_key, ff_key = jax.random.split(keys[i])
      s4_rngs, ff_rngs = nnx.Rngs(dropout=s4_key), nnx.Rngs(dropout=ff_key)
    if step is None:
      x = pair.s4(x, deterministic=keys is None, rngs=s4_rngs)
    else:
      rec, state = step
      x, st = pair.s4.step(jax.tree.map(lambda a: a[i], rec["s4"]),
                           state[i],
                           x)
      new_states.append(st)
    if skips is not None:
      x = x + skips[0][i]
    s4_out.append(x)
    if pair.ff is not None:
      x = pair.ff(x, deterministic=keys is None, rngs=ff_rngs)
      if skips is not None:
        x = x + skips[1][i]
  return x, new_states, jnp.stack(s4_out)


@pytest.mark.parametrize("ff,n_layers", [(2, 3), (0, 3), (2, 2)])  # 2: the unrolled scan.
def test_scanned_stage_equals_python_loop(ff, n_layers):
  stage = _stage(ff, n_layers=n_layers)
  chex.assert_shape(stage.pair(0).s4.layer.D[...], (8,))
  x = jax.random.normal(jax.random.key(1), (2, 32, 8))
  skips = (jax.random.normal(jax.random.key(2), (n_layers, 2, 32, 8)),
           jax.random.normal(jax.random.key(3), (n_layers, 2, 32, 8)) if ff else None)
  skips1 = jax.tree.map(lambda s: s[:, :, 0], skips)

  def run(stage, x, skips, skips1):
    y, outs = stage(x, collect=("s4_out",))
    y_loop, _, s4_out = _loop(stage, x)
    y_skips, _ = stage(x, skips=skips)
    y_skips_loop = _loop(stage, x, skips)[0]
    layer_outputs = stage.pair(0).s4(x), stage.pair(1).s4(x)
    # Recurrent step: one state per layer (a tuple), the parameters stacked.
    rec, state = stage.setup_recurrence(), stage.init_state(2)
    y1, new_state, _ = stage.step(rec, state, x[:, 0], skips=skips1)
    y1_loop, loop_states, _ = _loop(stage, x[:, 0], skips1, step=(rec, state))
    return ((y, y_loop), (outs.s4_out, s4_out), (y_skips, y_skips_loop), layer_outputs,
            (y1, y1_loop), new_state, loop_states)

  pairs = _jit(run, stage)(x, skips, skips1)
  for scanned, looped in pairs[:3] + pairs[4:5]:
    assert _relative_error(looped, scanned) <= TOLERANCE
  # Not vacuous: the layers differ (their parameters were drawn from split rngs).
  assert _relative_error(*pairs[3]) > 1e-2
  new_state, loop_states = pairs[5:]
  chex.assert_equal(len(new_state), n_layers)
  for i, st in enumerate(loop_states):
    chex.assert_trees_all_close(new_state[i], st, rtol=1e-6, atol=1e-7)


def test_scanned_stage_dropout_uses_one_key_per_layer():
  stage = _stage(2, dropout=0.25)
  x = jax.random.normal(jax.random.key(1), (2, 32, 8))
  key = jax.random.key(7)

  def run(stage, x):
    y, _ = stage(x, deterministic=False, rngs=key)
    return y, _loop(stage, x, keys=jax.random.split(key, 3))[0], stage(x)[0]

  y, y_loop, y_evaluation = _jit(run, stage)(x)
  assert _relative_error(y_loop, y) <= TOLERANCE
  assert _relative_error(y_evaluation, y) > 1e-2


def _reference_unet(model, tokens):
  """The reference's forward pass: a flat Python list of blocks and a skip stack (`pop()`)."""

  def blocks(stage):
    out = []
    for i in range(stage.n_layers):
      pair = stage.pair(i)
      out += [pair.s4] + ([pair.ff] if pair.ff is not None else [])
    return out

  def level(node, x):
    if not hasattr(node, "inner"):
      y = x
      for block in blocks(node.stage):
        y = block(y)
      return y + x
    skips = [x]
    for block in blocks(node.down):
      x = block(x)
      skips.append(x)
    x = node.up_pool(level(node.inner, node.down_pool(x))) + skips.pop()
    for block in blocks(node.up):
      x = block(x) + skips.pop()
    assert not skips
    return x

  return model.head(model.norm(level(model.level, model.embedding(tokens))))


@pytest.mark.parametrize("ff", [2, 0])
def test_unet_skips_follow_the_reference_stack(ff):
  model = SaShiMiLM(vocab_size=32, output_dim=12, d_model=8, n_layers=2, pool=(2, 2), expand=2,
                    ff=ff, unet=True, layer="s4d", d_state=8, final_act="glu", disc="zoh",
                    l_max=32, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 32)
  reference, scanned = _jit(lambda m, t: (_reference_unet(m, t), m(t)), model)(tokens)
  assert _relative_error(reference, scanned) <= TOLERANCE


def _lm(**kwargs):
  args = dict(vocab_size=32, output_dim=32, d_model=8, n_layers=2, pool=(2, 2), expand=2, ff=2,
              unet=True, dropout=0.1, layer="s4d", d_state=8, final_act="glu", disc="zoh",
              l_max=32, rngs=nnx.Rngs(0))
  args.update(kwargs)
  return SaShiMiLM(**args)


def test_remat_changes_no_loss_or_gradient():
  model = _lm(pool=(2,), d_state=4)
  params = nnx.state(model, nnx.Param)
  tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 32)

  def loss_and_grads(remat):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: _lm(pool=(2,), d_state=4, remat=remat)))

    @jax.jit
    def run(params, tokens):
      def loss(params):
        logits = nnx.merge(graphdef, params)(tokens, deterministic=False,
                                             rngs=nnx.Rngs(dropout=3))
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, tokens[..., None], -1)[..., 0])
      return jax.value_and_grad(loss)(params)

    return run(params, tokens)

  loss, grads = loss_and_grads("none")
  loss_remat, grads_remat = loss_and_grads("block")
  assert abs(float(loss_remat) - float(loss)) <= 1e-6 * abs(float(loss))
  flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
  flat_remat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads_remat)])
  chex.assert_equal(flat.shape, flat_remat.shape)
  assert float(jnp.linalg.norm(flat)) > 0
  assert _relative_error(flat, flat_remat) <= 1e-6


def test_bad_remat_is_rejected():
  with pytest.raises(ValueError, match="remat"):
    _stage(2, remat="everything")
