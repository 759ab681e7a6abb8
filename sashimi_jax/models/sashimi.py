"""SaShiMi token language model: embedding -> U-Net of levels -> LayerNorm -> head.

Structure (Goel et al. 2022; the reference's standalone `models/sashimi/sashimi.py`): a U-shaped
stack of levels (models/level.py). Level k works at 1/prod(pool[:k]) of the token rate with width
d_model * expand**k. Level k < K = len(pool) optionally runs a stage of `n_layers` (S4, FF)
residual pairs (`unet` only), pools down into level k+1, pools level k+1's output back up (shifted
one coarse frame, so the model stays causal), adds skips and runs a stage. Level K (the center)
runs a stage with a residual around it. Each stage keeps its pairs' parameters stacked on a layer
axis and runs them as one scan (models/stage.py), so compile time does not grow with n_layers.

Recurrent mode replaces the reference's Python lists and `if x is None: break` by static
structure: one fine step runs level 0, and level k+1 runs (inside one `fori_loop` of 0 or 1
iterations per level, see models/level.py) at the fine steps t with (t + 1) % prod(pool[:k+1]) == 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax.models import layers
from sashimi_jax.models import level as level_lib
from sashimi_jax.models.input_conv import CausalInputConv

COMPUTE_DTYPES = ("float32", "bfloat16")


class SaShiMiLM(nnx.Module):
  """Token embedding -> SaShiMi backbone -> LayerNorm -> Linear(d_model, output_dim).

  Shapes: tokens (B, T) int -> outputs (B, T, output_dim) float32, where output T[t] depends on
  tokens[:t+1] only.

  Each S4 layer at level k gets l_max / prod(pool[:k]) as its kernel length; `n_ssm=None` gives
  every S4 layer one SSM per channel; `init`/`disc` None take S4Block's per-layer defaults;
  `conv_impl` is how S4Block computes its convolution (models/s4.py CONV_IMPLS); `remat` is the
  stages' rematerialisation in convolution mode (models/stage.py REMATS); `compute_dtype`
  ("float32" or "bfloat16") is the dtype of activations, embeddings, linear layers and GLU/GELU,
  with float32 parameters, SSM kernels, FFT convolution, LayerNorm statistics, outputs and
  recurrent state;
  `input_conv_width` > 0 adds a residual causal convolution of that width (`input_conv_kind`
  `dense` or `depthwise`) to the embeddings before level 0 (`input_conv.py`);
  `fine_conv_width` > 0 adds one (`fine_conv_kind`) before every S4 layer of level 0's stages
  (the token-rate layers; `S4Block(pre_conv_width=...)`).
  """

  def __init__(
      self,
      *,
      vocab_size: int,
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
      remat: str = "none",
      compute_dtype: str = "float32",
      input_conv_width: int = 0,
      input_conv_kind: str = "dense",
      fine_conv_width: int = 0,
      fine_conv_kind: str = "dense",
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
    if vocab_size < 1 or output_dim < 1:
      raise ValueError(f"need vocab_size, output_dim >= 1; got {vocab_size}, {output_dim}")
    if l_max < 1 or l_max % math.prod(pool):
      raise ValueError(
          f"l_max (tokens) must be a positive multiple of prod(pool)={math.prod(pool)}, got {l_max}"
      )
    if compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"unknown compute_dtype {compute_dtype!r}; expected one of "
                       f"{COMPUTE_DTYPES}")
    self.compute_dtype = compute_dtype
    self.pool = pool
    self.unet = bool(unet)
    self.vocab_size = vocab_size
    self.output_dim = output_dim
    self.d_model = d_model
    # rate_frames[k]: fine tokens per frame of level k.
    self.rate_frames = tuple(math.prod(pool[:k]) for k in range(len(pool) + 1))
    widths = [d_model * expand**k for k in range(len(pool) + 1)]

    block_options = dict(layer=layer, d_state=d_state, final_act=final_act, init=init,
                         disc=disc, dt_min=dt_min, dt_max=dt_max, conv_impl=conv_impl)

    def stage_options(k):
      width = widths[k]
      # Only level 0 runs at the token rate, where lag 1 is the other channel of a stereo frame.
      pre_conv = (dict(pre_conv_width=fine_conv_width, pre_conv_kind=fine_conv_kind) if k == 0
                  else {})
      return dict(n_layers=n_layers, ff=ff, dropout=dropout, remat=remat,
                  l_max=l_max // self.rate_frames[k],
                  n_ssm=width if n_ssm is None else n_ssm, **block_options, **pre_conv)

    # torch nn.Embedding initialisation: N(0, 1).
    self.embedding = nnx.Embed(
        vocab_size, d_model, embedding_init=nnx.initializers.normal(1.0), rngs=rngs
    )
    self.input_conv = (CausalInputConv(d_model, input_conv_width, kind=input_conv_kind, rngs=rngs)
                       if input_conv_width > 0 else None)
    depth = len(pool)
    inner = level_lib.Center(widths[depth], rate_tokens=self.rate_frames[depth], rngs=rngs,
                             **stage_options(depth))
    for k in reversed(range(depth)):
      inner = level_lib.Level(widths[k], inner=inner, pool=pool[k], expand=expand,
                              rate_tokens=self.rate_frames[k], unet=self.unet, rngs=rngs,
                              **stage_options(k))
    self.level = inner
    self.norm = layers.layer_norm(d_model, rngs=rngs)
    self.head = layers.Dense(d_model, output_dim, rngs=rngs)

  def levels(self) -> list[Any]:
    """The levels from the top (token rate) down to the `Center`."""
    out, node = [], self.level
    while node is not None:
      out.append(node)
      node = getattr(node, "inner", None)
    return out

  # ----------------------------------------------------------------------------------------------
  # Convolution mode.

  def __call__(
      self, tokens: jax.Array, *, deterministic: bool = True, rngs: Any = None
  ) -> jax.Array:
    """tokens (B, T) int -> outputs (B, T, output_dim) float32 (causal)."""
    return self._forward(tokens, deterministic=deterministic, rngs=rngs)[0]

  def _forward(self, tokens, *, deterministic, rngs, capture=False):
    """tokens (B, T) -> (outputs (B, T, D), captured prefill inputs or None).

    Pads T to a multiple of prod(pool) internally.
    """
    self._check_tokens(tokens)
    frames = tokens.shape[1]
    block = self.rate_frames[-1]
    padded = -(-frames // block) * block
    if padded != frames:  # causal: right padding cannot change earlier outputs.
      tokens = jnp.pad(tokens, ((0, 0), (0, padded - frames)))
    x = self.embedding(tokens).astype(self.compute_dtype)
    if self.input_conv is not None:
      x = self.input_conv(x).astype(self.compute_dtype)
    y, captured = self.level(x, deterministic=deterministic, rngs=rngs, capture=capture)
    return self.head(self.norm(y))[:, :frames].astype(jnp.float32), captured

  # ----------------------------------------------------------------------------------------------
  # Recurrent mode.

  def setup_recurrence(self) -> Any:
    """Recurrence constants of every S4 layer (discretised matrices), computed once.

    Returns:
      A pytree mirroring the level structure: {"down" (unet only), "up", "next"} per level and
      {"center"} at the bottom, each stage's constants stacked on its layer axis.
    """
    return self.level.setup_recurrence()

  def init_state(self, batch_size: int) -> Any:
    """Initial recurrent state for `batch_size` streams (fixed shapes).

    Returns:
      {"t": int32 scalar fine-step counter, "level": nested per-level states}; level k holds its
      stages' S4 states (a tuple of one state per layer), its DownPool ring buffer (B, pool_k, H_k),
      its UpPool buffer (B, pool_k, H_k) and the deeper level's state under "next".
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state = {"t": jnp.zeros((), jnp.int32), "level": self.level.init_state(batch_size)}
    if self.input_conv is not None:
      state["input_conv"] = self.input_conv.init_state(batch_size)
    return state

  def step(self, rec: Any, state: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
    """One token per stream: tokens (B,) int -> (outputs (B, output_dim) float32, next state).

    Pure; meant to run inside `jax.lax.scan`. Output equals `__call__` at the same position.
    """
    x = self.embedding(tokens).astype(self.compute_dtype)
    next_state = {}
    if self.input_conv is not None:
      x, next_state["input_conv"] = self.input_conv.step(state["input_conv"], x)
      x = x.astype(self.compute_dtype)
    y, level_state = self.level.step(state["t"], rec, state["level"], x)
    next_state.update(t=state["t"] + 1, level=level_state)
    return self.head(self.norm.step(y)).astype(jnp.float32), next_state

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
    outputs, captured = self._forward(
        jnp.pad(tokens, ((0, 0), (0, padded - prompt_tokens))), deterministic=True, rngs=None,
        capture=True,
    )
    level_state = self.level.prefill_state(rec, captured, prompt_tokens, batch)
    state = {"t": jnp.asarray(prompt_tokens, jnp.int32), "level": level_state}
    if self.input_conv is not None:
      # The values the convolution mode saw (rounded to compute_dtype), kept in float32.
      state["input_conv"] = self.input_conv.prefill_state(
          self.embedding(tokens).astype(self.compute_dtype).astype(jnp.float32))
    return outputs[:, :prompt_tokens], state

  def _check_tokens(self, tokens):
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be an int array (B, T), got {tokens.dtype}{tokens.shape}")
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:  # traced: checked at the data
      values = np.asarray(tokens)  # boundary (encode_clip) instead. numpy: also inside a trace.
      lo, hi = int(values.min()), int(values.max())
      if lo < 0 or hi >= self.vocab_size:  # the embedding lookup would silently clamp them.
        raise ValueError(f"tokens must be in [0, {self.vocab_size}), got values in [{lo}, {hi}]")
