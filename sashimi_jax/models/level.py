"""One level of the SaShiMi U-Net: down stage -> DownPool -> deeper level -> UpPool -> up stage.

Level k works at 1/prod(pool[:k]) of the token rate with width d_model * expand**k. A `Level`
optionally runs a down stage (`unet` only), pools into the next level, pools its output back up
(shifted one coarse frame, so the model stays causal), adds the skips and runs its up stage. The
bottom (`Center`) runs one stage with a residual around it. Stages are scanned (models/stage.py).

Recurrent mode: a level steps at every fine step t with t % rate_tokens == rate_tokens - 1 (the
caller guarantees it); the next level runs at the last slot of each of this level's pooling
blocks, as a `fori_loop` of 0 or 1 iterations (or chosen while tracing when t is a Python int).
DownPool keeps a ring buffer of its last `pool` inputs; UpPool keeps the `pool` outputs it will
emit next (zeros at first, like the shift).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from sashimi_jax.models import layers
from sashimi_jax.models.stage import Stage, up_skips


class Center(nnx.Module):
  """The bottom level: x + stage(x) on (B, L, H)."""

  def __init__(self, width: int, *, rate_tokens: int, n_layers: int, ff: int, dropout: float,
               rngs: nnx.Rngs, **block_options):
    self.rate_tokens = rate_tokens
    self.stage = Stage(width, n_layers=n_layers, ff=ff, dropout=dropout, rngs=rngs,
                       **block_options)

  def __call__(self, x, *, deterministic, rngs, capture: bool = False):
    """x (B, L, H) -> (y (B, L, H), captured prefill inputs or None)."""
    y, outs = self.stage(x, deterministic=deterministic, rngs=rngs,
                         collect=("s4_in",) if capture else ())
    return y + x, ({"center": outs.s4_in} if capture else None)

  def setup_recurrence(self):
    return {"center": self.stage.setup_recurrence()}

  def init_state(self, batch_size: int):
    return {"center": self.stage.init_state(batch_size)}

  def step(self, t, rec, state, x):
    """Its work at fine step t: x (B, H) -> (y (B, H), next state)."""
    del t
    y, center, _ = self.stage.step(rec["center"], state["center"], x)
    return y + x, {"center": center}

  def prefill_state(self, rec, captured, prompt_tokens: int, batch_size: int):
    """State after `prompt_tokens` fine tokens, from `__call__(..., capture=True)`'s output."""
    steps = prompt_tokens // self.rate_tokens
    if steps == 0:
      return self.init_state(batch_size)
    return {"center": self.stage.prefill_state(rec["center"], captured["center"][:, :, :steps])}


class Level(nnx.Module):
  """Level k < K: (B, L, H) -> (B, L, H) around a deeper level `inner` at 1/pool the rate.

  Args:
    width: channels H of this level.
    inner: the deeper level (a `Level` or `Center`), of width expand * H.
    pool: pooling factor to the deeper level.
    expand: width factor to the deeper level.
    rate_tokens: fine tokens per frame of this level.
    unet: whether this level has a down stage with U-Net skips.
    stage_options: Stage keyword arguments (n_layers, ff, dropout, S4Block options).
  """

  def __init__(self, width: int, *, inner: nnx.Module, pool: int, expand: int, rate_tokens: int,
               unet: bool, rngs: nnx.Rngs, **stage_options):
    self.pool = pool
    self.rate_tokens = rate_tokens
    self.unet = unet
    self.down = nnx.data(Stage(width, rngs=rngs, **stage_options) if unet else None)
    self.down_pool = layers.DownPool(width, expand=expand, pool=pool, rngs=rngs)
    self.inner = inner
    self.up_pool = layers.UpPool(width * expand, expand=expand, pool=pool, rngs=rngs)
    self.up = Stage(width, rngs=rngs, **stage_options)

  def __call__(self, x, *, deterministic, rngs, capture: bool = False):
    """x (B, L, H) -> (y (B, L, H), captured prefill inputs or None)."""
    s4_in = ("s4_in",) if capture else ()
    captured = {}
    skips = None
    if self.unet:
      z, outs = self.down(x, deterministic=deterministic, rngs=rngs,
                          collect=("s4_out", "ff_out") + s4_in)
      last, skips = up_skips(x, outs)
      captured["down"] = outs.s4_in
    else:
      z, last = x, x
    captured["down_pool"] = z
    y, captured["next"] = self.inner(self.down_pool(z), deterministic=deterministic, rngs=rngs,
                                     capture=capture)
    u = self.up_pool(y)
    captured["up_pool"] = u
    u = u + last
    y, outs = self.up(u, skips=skips, deterministic=deterministic, rngs=rngs, collect=s4_in)
    captured["up"] = outs.s4_in
    if not self.unet:
      y = y + u
    return y, (captured if capture else None)

  def setup_recurrence(self):
    rec = {"up": self.up.setup_recurrence(), "next": self.inner.setup_recurrence()}
    if self.unet:
      rec["down"] = self.down.setup_recurrence()
    return rec

  def init_state(self, batch_size: int):
    state = {"up": self.up.init_state(batch_size),
             "down_pool": self.down_pool.init_state(batch_size),
             "up_pool": self.up_pool.init_state(batch_size),
             "next": self.inner.init_state(batch_size)}
    if self.unet:
      state["down"] = self.down.init_state(batch_size)
    return state

  def step(self, t, rec, state, x):
    """Its work at fine step t (one of this level's steps): x (B, H) -> (y (B, H), next state).

    t: int32 scalar, or a Python int congruent to the step modulo prod(pool).
    """
    new_state = {}
    skips = None
    if self.unet:
      z, new_state["down"], outs = self.down.step(rec["down"], state["down"], x,
                                                  collect=("s4_out", "ff_out"))
      last, skips = up_skips(x, outs)
    else:
      z, last = x, x
    slot = (t // self.rate_tokens) % self.pool  # position within this level's pooling block
    # The pool buffers are float32 state; activations keep the compute dtype of x.
    ring = self.down_pool.push(state["down_pool"], z, slot)
    emitted = self.up_pool.emit(state["up_pool"], slot).astype(x.dtype)

    def run_deeper(up_buffer_and_inner_state, trip=None):
      up_buffer, inner_state = up_buffer_and_inner_state
      buffer = ring
      if trip is not None:
        # Ties the pooled input to the loop counter: otherwise XLA hoists the projection and the
        # deeper level's first LayerNorm out of the 0-or-1-trip loop and runs them at every step.
        buffer, _ = jax.lax.optimization_barrier((buffer, trip))
      pooled = self.down_pool.project(buffer.astype(x.dtype))
      y, inner_state = self.inner.step(t, rec["next"], inner_state, pooled)
      return self.up_pool.refill(y).astype(up_buffer.dtype), inner_state

    deeper = (state["up_pool"], state["next"])
    if isinstance(slot, int):  # t a Python int: the schedule is resolved while tracing.
      deeper = run_deeper(deeper) if slot == self.pool - 1 else deeper
    else:
      # A loop run once at the block's last slot, else not at all: a while loop updates the deeper
      # levels' state in place, where the skip branch of a `lax.cond` copies all of it (up to 3 MB
      # per token at batch 16 in the 1.46M model).
      deeper = jax.lax.fori_loop(0, (slot == self.pool - 1).astype(jnp.int32),
                                 lambda trip, operands: run_deeper(operands, trip), deeper)
    new_state["up_pool"], new_state["next"] = deeper
    new_state["down_pool"] = ring
    u = emitted + last
    y, new_state["up"], _ = self.up.step(rec["up"], state["up"], u, skips=skips)
    if not self.unet:
      y = y + u
    return y, new_state

  def prefill_state(self, rec, captured, prompt_tokens: int, batch_size: int):
    """State after `prompt_tokens` fine tokens, from `__call__(..., capture=True)`'s output.

    The captured sequences were padded past the prompt by at least one block of this level's
    pool, so the pending UpPool block exists.
    """
    steps = prompt_tokens // self.rate_tokens  # level steps already taken
    stages = [("up", self.up)] + ([("down", self.down)] if self.unet else [])
    state = {}
    for name, stage in stages:
      state[name] = (stage.prefill_state(rec[name], captured[name][:, :, :steps]) if steps > 0
                     else stage.init_state(batch_size))
    start = (steps // self.pool) * self.pool
    # Ring slots past `steps` hold padding inputs; they are overwritten before use.
    state["down_pool"] = captured["down_pool"][:, start:start + self.pool].astype(jnp.float32)
    state["up_pool"] = captured["up_pool"][:, start:start + self.pool].astype(jnp.float32)
    state["next"] = self.inner.prefill_state(rec["next"], captured["next"], prompt_tokens,
                                             batch_size)
    return state
