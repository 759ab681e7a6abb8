"""A stage: `n_layers` identical (S4, FF) residual pairs with stacked parameters, run as one scan.

The pairs' parameters carry a leading layer axis (created with `nnx.vmap` over split rngs). The
convolution mode (training) runs them under one `jax.lax.scan` over that axis, so the compiled
train step holds one pair whatever the depth; recurrence setup and prefill map over it. The
recurrent step, which runs once per token inside the sampler's own scan, visits the layers in a
Python loop over per-layer slices cut once by `setup_recurrence` (slicing stacked weights inside
the token loop copies them at every token).

U-Net skips: a down stage returns every residual block's output stacked on the layer axis
(`outputs`); an up stage adds one skip after every residual block, taken from stacked `skips`
(see `up_skips`, which orders them as the reference's `skips.pop()` does).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from sashimi_jax.models import layers
from sashimi_jax.models.s4 import S4Block

# The attribute holding the stacked pairs: every parameter under it has a leading layer axis
# (optim.py reads this name to tell a stacked vector from a matrix).
STACK = "layer_stack"

# Rematerialisation (model.remat) of the convolution-mode forward pass, as jax.checkpoint policies
# applied to each residual block: "none" saves what autodiff saves (every block's intermediates,
# ~100 KB per token at the SC09 size); "block" keeps only each residual block's input (the scan
# carry between blocks) and recomputes the block in the backward pass.
REMAT_POLICIES = {"none": None, "block": jax.checkpoint_policies.nothing_saveable}
REMATS = tuple(REMAT_POLICIES)
# Stages of at most this many layers run their scan fully unrolled (see Stage.__call__).
UNROLL_MAX_LAYERS = 2


class LayerPair(nnx.Module):
  """One (S4, FF) residual pair: x -> ResidualBlock(S4Block) -> ResidualBlock(FFBlock) (if ff).

  `block_options` are passed to S4Block unchanged.
  """

  def __init__(self, width: int, *, ff: int, dropout: float, rngs: nnx.Rngs, **block_options):
    s4 = S4Block(width, dropout=dropout, rngs=rngs, **block_options)
    self.s4 = layers.ResidualBlock(width, s4, dropout=dropout, rngs=rngs)
    ffb = layers.FFBlock(width, expand=ff, dropout=dropout, rngs=rngs) if ff > 0 else None
    self.ff = nnx.data(None if ffb is None else
                       layers.ResidualBlock(width, ffb, dropout=dropout, rngs=rngs))


class PairOutputs(NamedTuple):
  """Per-pair activations a stage can return, each stacked (n_layers, B, L, H) (or (n, B, H)).

  s4_out / ff_out: the outputs of the S4 / FF residual blocks (U-Net skips; ff_out None if ff=0);
  s4_in: the S4 layer's input LayerNorm(x) (what prefill needs to rebuild its state).
  """
  s4_out: Any = None
  ff_out: Any = None
  s4_in: Any = None


class Stage(nnx.Module):
  """`n_layers` (S4, FF) residual pairs of width `width` run as one scan, (B, L, H) -> (B, L, H).

  Args:
    width: channels H.
    n_layers: number of pairs (the scanned axis).
    ff: FF expansion (0: no FF blocks).
    dropout: dropout rate of every block.
    remat: rematerialisation policy of the convolution mode (REMATS).
    rngs: initialisation randomness (split over the layers).
    **block_options: S4Block keyword arguments (l_max, layer, d_state, ...).
  """

  def __init__(self, width: int, *, n_layers: int, ff: int, dropout: float, rngs: nnx.Rngs,
               remat: str = "none", **block_options):
    if n_layers < 1:
      raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat {remat!r}; expected one of {REMATS}")
    self.n_layers = n_layers
    self.has_ff = ff > 0
    self.remat = remat

    @nnx.split_rngs(splits=n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
      return LayerPair(width, ff=ff, dropout=dropout, rngs=rngs, **block_options)

    setattr(self, STACK, create(rngs))

  # ----------------------------------------------------------------------------------------------
  # Helpers over the stacked parameters.

  def _split(self):
    return nnx.split(getattr(self, STACK))

  def pair(self, index: int) -> LayerPair:
    """Pair `index` as a standalone module (its parameters sliced off the stack)."""
    graphdef, params = self._split()
    return nnx.merge(graphdef, jax.tree.map(lambda p: p[index], params))

  def _map_pairs(self, fn, *stacked):
    """jax.vmap of fn(pair, *args) over the layer axis of the parameters and of `stacked`."""
    graphdef, params = self._split()
    return jax.vmap(lambda p, *args: fn(nnx.merge(graphdef, p), *args))(params, *stacked)

  def _dropout_keys(self, deterministic: bool, rngs: Any):
    if deterministic or rngs is None:
      return None
    key = rngs if isinstance(rngs, jax.Array) else rngs.dropout()
    return jax.random.split(key, self.n_layers)

  # ----------------------------------------------------------------------------------------------
  # Convolution mode.

  def __call__(self, x: jax.Array, *, skips: Any = None, deterministic: bool = True,
               rngs: Any = None, collect: tuple[str, ...] = ()) -> tuple[jax.Array, PairOutputs]:
    """Runs the pairs in order on x (B, L, H).

    Args:
      x: (B, L, H) input.
      skips: None, or (s4_skips, ff_skips) stacked (n_layers, B, L, H): added after each S4 / FF
        residual block (ff_skips None when ff=0).
      deterministic: no dropout if True.
      rngs: dropout randomness (an nnx.Rngs with a `dropout` stream, or a key).
      collect: names of PairOutputs fields to return stacked.

    Returns:
      (y (B, L, H), PairOutputs with the `collect` fields filled).
    """
    stack = getattr(self, STACK)
    s4_def, s4_params = nnx.split(stack.s4)
    ff_def, ff_params = nnx.split(stack.ff) if self.has_ff else (None, None)
    keys = self._dropout_keys(deterministic, rngs)

    def block_rngs(key):
      return None if key is None else nnx.Rngs(dropout=key)

    def s4_block(params, x, key):
      block = nnx.merge(s4_def, params)
      return block.call_with_layer_input(x, deterministic=deterministic, rngs=block_rngs(key))

    def ff_block(params, x, key):
      return nnx.merge(ff_def, params)(x, deterministic=deterministic, rngs=block_rngs(key))

    policy = REMAT_POLICIES[self.remat]
    if self.remat != "none":
      # prevent_cse=False: inside a scan the recomputation cannot be merged with the forward.
      s4_block = jax.checkpoint(s4_block, policy=policy, prevent_cse=False)
      ff_block = jax.checkpoint(ff_block, policy=policy, prevent_cse=False)

    def body(x, xs):
      s4_p, ff_p, key, skip = xs
      s4_key, ff_key = (None, None) if key is None else tuple(jax.random.split(key))
      outs = {}
      x, z = s4_block(s4_p, x, s4_key)
      if skip is not None:
        x = x + skip[0]
      outs["s4_in"], outs["s4_out"] = z, x
      if ff_p is not None:
        x = ff_block(ff_p, x, ff_key)
        if skip is not None:
          x = x + skip[1]
        outs["ff_out"] = x
      return x, {name: outs[name] for name in collect if name in outs}

    # Shallow stages run unrolled: at 2 layers per stage the loop's residual stacking made the
    # 1.46M train step ~15% slower on CPU; deep stages keep one loop body (flat compile time).
    unroll = self.n_layers <= UNROLL_MAX_LAYERS
    y, outs = jax.lax.scan(body, x, (s4_params, ff_params, keys, skips), unroll=unroll)
    return y, PairOutputs(**outs)

  # ----------------------------------------------------------------------------------------------
  # Recurrent mode.

  def setup_recurrence(self) -> Any:
    """Recurrence constants: the S4 layers' (stacked on the layer axis) and each pair's parameters.

    Returns:
      {"s4": stacked S4 constants (for prefill), "layers": n_layers (pair parameters, S4
      constants) slices}. The slices are cut here, once, so that `step` (run per token inside the
      sampler's scan) reads the weights in place instead of slicing the stacked arrays at every
      token (which XLA:CPU turns into a copy of every weight per token: 1.7x the step time).
    """
    _, params = self._split()
    s4 = self._map_pairs(lambda pair: pair.s4.setup_recurrence())
    layers = tuple(jax.tree.map(lambda a, i=i: a[i], (params, s4)) for i in range(self.n_layers))
    return {"s4": s4, "layers": layers}

  def init_state(self, batch_size: int) -> Any:
    """Zero S4 states for `batch_size` streams: a tuple of one state per layer.

    Not stacked on a layer axis: `step` updates each layer's state on its own, and a stacked
    state would be rebuilt (a copy of all of it) at every token.
    """
    return _unstack(self._map_pairs(lambda pair: pair.s4.init_state(batch_size)), self.n_layers)

  def prefill_state(self, rec: Any, s4_in: jax.Array) -> Any:
    """States (a tuple, one per layer) after the S4 layers consumed their stacked inputs s4_in
    (n_layers, B, L, H)."""
    stacked = self._map_pairs(lambda pair, r, z: pair.s4.prefill_state(r, z), rec["s4"],
                              s4_in.astype(jnp.float32))
    return _unstack(stacked, self.n_layers)

  def step(self, rec: Any, state: Any, x: jax.Array, *, skips: Any = None,
           collect: tuple[str, ...] = ()) -> tuple[jax.Array, Any, PairOutputs]:
    """One step of every pair in order: x (B, H) -> (y (B, H), next state, PairOutputs).

    `state` is `init_state`'s tuple of per-layer states; `skips` and `collect` as in `__call__`,
    with (n_layers, B, H) arrays.
    """
    graphdef, _ = self._split()
    states, collected = [], {name: [] for name in collect}
    for i, (p, r) in enumerate(rec["layers"]):  # unrolled: the depth is small and static.
      pair = nnx.merge(graphdef, p)
      st = state[i]
      skip = None if skips is None else jax.tree.map(lambda a, i=i: a[i], skips)
      outs = {}
      x, st = pair.s4.step(r, st, x)
      if skip is not None:
        x = x + skip[0]
      outs["s4_out"] = x
      if pair.ff is not None:
        x, _ = pair.ff.step(None, None, x)
        if skip is not None:
          x = x + skip[1]
        outs["ff_out"] = x
      states.append(st)
      for name in collect:
        if name in outs:
          collected[name].append(outs[name])
    state = tuple(states)
    outs = {name: jnp.stack(v) for name, v in collected.items() if v}
    y = x
    return y, state, PairOutputs(**outs)


def _unstack(stacked: Any, n_layers: int) -> tuple:
  """A pytree stacked on a leading layer axis -> a tuple of `n_layers` per-layer pytrees."""
  return tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n_layers))


def up_skips(stage_input: jax.Array, outputs: PairOutputs) -> tuple[jax.Array, Any]:
  """The U-Net skips of the matching up stage, from a down stage's input and `outputs`.

  The reference pushes the down stage's input and every residual block's output on a stack; the
  up path pops the last one before its first block, then one after each block. With pairs
  (a_i, b_i) = (s4_out, ff_out) of pair i < n, up pair j adds a_{n-1-j} after its S4 block and
  b_{n-2-j} (the stage input for j = n-1) after its FF block; without FF blocks, up pair j adds
  a_{n-2-j} (the stage input for j = n-1).

  Returns:
    (last, skips): `last` (B, ...) is added to the UpPool output before the up stage; `skips` is
    the up stage's (s4_skips, ff_skips) argument.
  """
  first = stage_input[None]
  if outputs.ff_out is None:
    shifted = jnp.concatenate([first, outputs.s4_out[:-1]], axis=0)
    return outputs.s4_out[-1], (shifted[::-1], None)
  shifted = jnp.concatenate([first, outputs.ff_out[:-1]], axis=0)
  return outputs.ff_out[-1], (outputs.s4_out[::-1], shifted[::-1])
