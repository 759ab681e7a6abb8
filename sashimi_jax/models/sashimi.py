"""SaShiMi backbone and token language model, in convolution and recurrent mode.

Structure (Goel et al. 2022; the reference's standalone `models/sashimi/sashimi.py`): a U-shaped
stack of levels. Level k works at 1/prod(pool[:k]) of the token rate with width
d_model * expand**k. Level k < K = len(pool) optionally runs `n_layers` (S4, FF) residual pairs
(`unet` only), pools down into level k+1, pools level k+1's output back up (shifted one coarse
frame, so the model stays causal), adds skips and runs `n_layers` (S4, FF) pairs. Level K (the
center) runs `n_layers` pairs with a residual around them.

Recurrent mode replaces the reference's Python lists and `if x is None: break` by static
structure: one fine step runs level 0, and level k+1 runs (inside one `lax.cond` per level) at the
fine steps t with (t + 1) % prod(pool[:k+1]) == 0. DownPool keeps a ring buffer of its last
`pool` inputs; UpPool keeps the `pool` outputs it will emit next (zeros at first, like the shift).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sashimi_jax.models import layers
from sashimi_jax.models.s4 import S4Block


class SaShiMiLM(nnx.Module):
  """Token embedding -> SaShiMi backbone -> LayerNorm -> Linear(d_model, output_dim).

  Shapes: tokens (B, T) int -> outputs (B, T, output_dim) float32, where output T[t] depends on
  tokens[:t+1] only.

  Each S4 layer at level k gets l_max / prod(pool[:k]) as its kernel length; `n_ssm=None` gives
  every S4 layer one SSM per channel; `init`/`disc` None take S4Block's per-layer defaults;
  `conv_impl` is how S4Block computes its convolution (models/s4.py CONV_IMPLS).
  """

  def __init__(
      self,
      *,
      num_tokens: int,
      output_dim: int,
      d_model: int = 64,
      n_layers: int = 8,
      pool: Sequence[int] = (4, 4),
      expand: int = 2,
      ff: int = 2,
      unet: bool = False,
      dropout: float = 0.0,
      layer: str = "s4d",
      d_state: int = 64,
      n_ssm: int | None = 1,
      final_act: str = "glu",
      init: str | None = None,
      disc: str | None = None,
      dt_min: float = 1e-3,
      dt_max: float = 1e-1,
      conv_impl: str = "auto",
      l_max: int,
      rngs: nnx.Rngs,
  ):
    pool = tuple(int(p) for p in pool)
    if any(p < 1 for p in pool):
      raise ValueError(f"every pool factor must be >= 1, got pool={pool}")
    if n_layers < 1:
      raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if d_model < 1 or expand < 1 or ff < 0:
      raise ValueError(f"need d_model >= 1, expand >= 1, ff >= 0; got {d_model}, {expand}, {ff}")
    if num_tokens < 1 or output_dim < 1:
      raise ValueError(f"need num_tokens, output_dim >= 1; got {num_tokens}, {output_dim}")
    if l_max < 1 or l_max % math.prod(pool):
      raise ValueError(
          f"l_max (tokens) must be a positive multiple of prod(pool)={math.prod(pool)}, got {l_max}"
      )
    self.pool = pool
    self.unet = bool(unet)
    self.num_tokens = num_tokens
    self.output_dim = output_dim
    self.d_model = d_model
    # rate_frames[k]: fine tokens per frame of level k.
    self.rate_frames = tuple(math.prod(pool[:k]) for k in range(len(pool) + 1))
    widths = [d_model * expand**k for k in range(len(pool) + 1)]

    def pair_blocks(level: int) -> nnx.List:
      width, level_l_max = widths[level], l_max // self.rate_frames[level]
      blocks = []
      for _ in range(n_layers):
        s4 = S4Block(
            width, l_max=level_l_max, layer=layer, d_state=d_state,
            n_ssm=width if n_ssm is None else n_ssm,
            final_act=final_act, dropout=dropout, init=init, disc=disc, dt_min=dt_min,
            dt_max=dt_max, conv_impl=conv_impl, rngs=rngs,
        )
        blocks.append(layers.ResidualBlock(width, s4, dropout=dropout, rngs=rngs))
        if ff > 0:
          ffb = layers.FFBlock(width, expand=ff, dropout=dropout, rngs=rngs)
          blocks.append(layers.ResidualBlock(width, ffb, dropout=dropout, rngs=rngs))
      return nnx.List(blocks)

    # torch nn.Embedding initialisation: N(0, 1).
    self.embedding = nnx.Embed(
        num_tokens, d_model, embedding_init=nnx.initializers.normal(1.0), rngs=rngs
    )
    levels = range(len(pool))
    self.down_layers = nnx.List([pair_blocks(k) if unet else nnx.List([]) for k in levels])
    self.down_pools = nnx.List(
        [layers.DownPool(widths[k], expand=expand, pool=pool[k], rngs=rngs) for k in levels]
    )
    self.center_layers = pair_blocks(len(pool))
    self.up_pools = nnx.List(
        [layers.UpPool(widths[k + 1], expand=expand, pool=pool[k], rngs=rngs) for k in levels]
    )
    self.up_layers = nnx.List([pair_blocks(k) for k in levels])
    self.norm = layers.layer_norm(d_model, rngs=rngs)
    self.head = layers.torch_linear(d_model, output_dim, rngs=rngs)

  # ----------------------------------------------------------------------------------------------
  # Convolution mode.

  def __call__(
      self, tokens: jax.Array, *, deterministic: bool = True, rngs: Any = None
  ) -> jax.Array:
    """tokens (B, T) int -> outputs (B, T, output_dim) float32 (causal)."""
    return self._forward(tokens, deterministic=deterministic, rngs=rngs, trace=None)

  def _forward(self, tokens, *, deterministic, rngs, trace):
    """tokens (B, T) -> outputs (B, T, D); pads T to a multiple of prod(pool) internally."""
    self._check_tokens(tokens)
    frames = tokens.shape[1]
    block = self.rate_frames[-1]
    padded = -(-frames // block) * block
    if padded != frames:  # causal: right padding cannot change earlier outputs.
      tokens = jnp.pad(tokens, ((0, 0), (0, padded - frames)))
    x = self.embedding(tokens).astype(jnp.float32)
    y = self._level_forward(0, x, deterministic, rngs, trace)
    return self.head(self.norm(y))[:, :frames]

  def _run_blocks(self, blocks, x, deterministic, rngs, trace, skips=None):
    """Runs residual blocks in order; with `skips`, adds skips.pop() after each (unet up path)."""
    for block in blocks:
      if trace is None:
        x = block(x, deterministic=deterministic, rngs=rngs)
      else:
        x, z = block.call_with_layer_input(x, deterministic=deterministic, rngs=rngs)
        trace.append(z)
      if skips is not None:
        x = x + skips.pop()
    return x

  def _level_forward(self, k, x, deterministic, rngs, trace):
    """Level k on x (B, L_k, H_k) -> (B, L_k, H_k). `trace` (dict or None) collects inputs."""
    level_trace = None if trace is None else trace.setdefault(k, {})
    sub = lambda name: None if level_trace is None else level_trace.setdefault(name, [])
    if k == len(self.pool):
      return self._run_blocks(self.center_layers, x, deterministic, rngs, sub("center")) + x
    skips = [x]
    for block in self.down_layers[k]:
      x = self._run_blocks([block], x, deterministic, rngs, sub("down"))
      skips.append(x)
    if level_trace is not None:
      level_trace["down_pool"] = x
    y = self._level_forward(k + 1, self.down_pools[k](x), deterministic, rngs, trace)
    u = self.up_pools[k](y)
    if level_trace is not None:
      level_trace["up_pool"] = u
    u = u + skips.pop()
    if self.unet:
      return self._run_blocks(self.up_layers[k], u, deterministic, rngs, sub("up"), skips)
    return self._run_blocks(self.up_layers[k], u, deterministic, rngs, sub("up")) + u

  # ----------------------------------------------------------------------------------------------
  # Recurrent mode.

  def _level_groups(self, k):
    if k == len(self.pool):
      return {"center": self.center_layers}
    return {"down": self.down_layers[k], "up": self.up_layers[k]}

  def setup_recurrence(self) -> Any:
    """Recurrence constants of every S4 layer (discretised matrices), computed once.

    Returns:
      A pytree mirroring the level structure: {"down": [...], "up": [...], "next": {...}} per
      level and {"center": [...]} at the bottom (None for FF blocks).
    """

    def build(k):
      rec = {name: [b.setup_recurrence() for b in blocks]
             for name, blocks in self._level_groups(k).items()}
      if k < len(self.pool):
        rec["next"] = build(k + 1)
      return rec

    return build(0)

  def init_state(self, batch_size: int) -> Any:
    """Initial recurrent state for `batch_size` streams (fixed shapes).

    Returns:
      {"t": int32 scalar fine-step counter, "level": nested per-level states}; level k holds its
      blocks' S4 states, its DownPool ring buffer (B, pool_k, H_k) and UpPool buffer
      (B, pool_k, H_k).
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def build(k):
      state = {name: [b.init_state(batch_size) for b in blocks]
               for name, blocks in self._level_groups(k).items()}
      if k < len(self.pool):
        state["down_pool"] = self.down_pools[k].init_state(batch_size)
        state["up_pool"] = self.up_pools[k].init_state(batch_size)
        state["next"] = build(k + 1)
      return state

    return {"t": jnp.zeros((), jnp.int32), "level": build(0)}

  def step(self, rec: Any, state: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
    """One token per stream: tokens (B,) int -> (outputs (B, output_dim) float32, next state).

    Pure; meant to run inside `jax.lax.scan`. Output equals `__call__` at the same position.
    """
    x = self.embedding(tokens).astype(jnp.float32)
    y, level_state = self._level_step(0, x, state["t"], rec, state["level"])
    return self.head(self.norm(y)), {"t": state["t"] + 1, "level": level_state}

  def _step_blocks(self, blocks, recs, states, x, skips=None):
    new_states = []
    for block, rec, st in zip(blocks, recs, states):
      x, st = block.step(rec, st, x)
      new_states.append(st)
      if skips is not None:
        x = x + skips.pop()
    return x, new_states

  def _level_step(self, k, x, t, rec, state):
    """Level k's work at fine step t (which the caller guarantees is one of level k's steps)."""
    if k == len(self.pool):
      y, center = self._step_blocks(self.center_layers, rec["center"], state["center"], x)
      return y + x, {"center": center}
    skips = [x]
    down_states = []
    for block, r, st in zip(self.down_layers[k], rec["down"], state["down"]):
      x, st = block.step(r, st, x)
      down_states.append(st)
      skips.append(x)
    down_pool, up_pool = self.down_pools[k], self.up_pools[k]
    slot = (t // self.rate_frames[k]) % self.pool[k]  # position within this level's block
    ring = down_pool.push(state["down_pool"], x, slot)
    emitted = up_pool.emit(state["up_pool"], slot)

    def run_deeper(operands):
      ring, _, next_state = operands
      y, next_state = self._level_step(k + 1, down_pool.project(ring), t, rec["next"], next_state)
      return up_pool.refill(y), next_state

    def skip_deeper(operands):
      _, up_buffer, next_state = operands
      return up_buffer, next_state

    up_buffer, next_state = jax.lax.cond(
        slot == self.pool[k] - 1, run_deeper, skip_deeper, (ring, state["up_pool"], state["next"])
    )
    u = emitted + skips.pop()
    if self.unet:
      y, up_states = self._step_blocks(self.up_layers[k], rec["up"], state["up"], u, skips)
    else:
      y, up_states = self._step_blocks(self.up_layers[k], rec["up"], state["up"], u)
      y = y + u
    return y, {"down": down_states, "up": up_states, "down_pool": ring, "up_pool": up_buffer,
               "next": next_state}

  def prefill(self, rec: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
    """Consumes a prompt in convolution mode: tokens (B, P) int, P >= 1.

    The prompt is right-padded to the next multiple of prod(pool) above P (so every UpPool's
    pending block exists); DPLR S4 layers need that padded length <= l_max, i.e. P < l_max.

    Returns:
      (outputs (B, P, output_dim) float32, state after P tokens); `step` continues from it
      exactly as if the P tokens had been stepped one by one.
    """
    self._check_tokens(tokens)
    batch, prompt_tokens = tokens.shape
    if prompt_tokens < 1:
      raise ValueError("prefill needs a prompt of at least one token")
    # One extra coarsest block, so every UpPool's pending block exists in the padded sequence.
    block = self.rate_frames[-1]
    padded = (prompt_tokens // block + 1) * block
    trace = {}
    outputs = self._forward(
        jnp.pad(tokens, ((0, 0), (0, padded - prompt_tokens))), deterministic=True, rngs=None,
        trace=trace,
    )

    def build(k):
      steps = prompt_tokens // self.rate_frames[k]  # level-k steps already taken
      state = {}
      for name, blocks in self._level_groups(k).items():
        state[name] = [
            b.prefill_state(r, z[:, :steps]) if steps > 0 else b.init_state(batch)
            for b, r, z in zip(blocks, rec_at[k][name], trace[k].get(name, []))
        ]
      if k < len(self.pool):
        start = (steps // self.pool[k]) * self.pool[k]
        stop = start + self.pool[k]
        # Ring slots past `steps` hold padding inputs; they are overwritten before use.
        state["down_pool"] = trace[k]["down_pool"][:, start:stop]
        state["up_pool"] = trace[k]["up_pool"][:, start:stop]
        state["next"] = build(k + 1)
      return state

    rec_at, node = [], rec
    for _ in range(len(self.pool) + 1):
      rec_at.append(node)
      node = node.get("next")
    state = {"t": jnp.asarray(prompt_tokens, jnp.int32), "level": build(0)}
    return outputs[:, :prompt_tokens], state

  def _check_tokens(self, tokens):
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be an int array (B, T), got {tokens.dtype}{tokens.shape}")
