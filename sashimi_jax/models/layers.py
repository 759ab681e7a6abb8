"""SaShiMi building blocks: FF block, pre-norm residual block, DownPool and UpPool.

Every block has a convolutional (whole-sequence) `__call__` on `(B, L, H)` arrays and a recurrent
`step` on `(B, H)` arrays with an explicit state, so the backbone can run either way with the same
parameters. Blocks own only `nnx.Param`s; dropout randomness comes in through `rngs` at call time.

Layout: activations are `(batch, frames, features)` throughout (the reference works in
`(batch, features, frames)` and transposes around every LayerNorm). The pooling linears see the
`pool` frames of a block flattened frame-major (`(s h)`), which is a fixed permutation of the
reference's feature-major `(h s)` weights: same function class and parameter count, no transposes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# PyTorch's LayerNorm epsilon (the reference's nn.LayerNorm default).
LAYER_NORM_EPSILON = 1e-5


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU in the reference's (torch's) form, x / 2 * (1 + erf(x / sqrt 2)).

  jax.nn.gelu(approximate=False) uses erfc instead, which XLA:CPU evaluates through both of its
  branches and an exp: 5-7x the cost on (8, 64) to (8, 128) rows (the sampler's shapes), for the
  same values up to float32 rounding (at most 1e-6 apart on [-12, 12], where GELU reaches 12).
  """
  sqrt_half = jnp.asarray(math.sqrt(0.5), x.dtype)
  return x * (0.5 * (1 + jax.lax.erf(x * sqrt_half))).astype(x.dtype)


class Dense(nnx.Module):
  """y = x @ kernel + bias over the last axis, initialised like PyTorch's nn.Linear / Conv1d(k=1).

  Weight and bias are both uniform in [-1/sqrt(in_features), 1/sqrt(in_features)] and stored in
  float32; they are cast to the input's dtype (bfloat16 compute keeps float32 masters). The leading
  axes are flattened into one before the matmul: XLA:CPU's gradient of a (B, L, H) x (H, H')
  dot_general is ~3x slower than the same 2-D matmul (measured at L = 16000, H = 64).
  """

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(in_features)
    self.kernel = nnx.Param(jax.random.uniform(
        rngs.params(), (in_features, out_features), jnp.float32, -bound, bound))
    self.bias = nnx.Param(jax.random.uniform(
        rngs.params(), (out_features,), jnp.float32, -bound, bound))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., in_features) -> (..., out_features)."""
    kernel = self.kernel[...].astype(x.dtype)
    y = x.reshape(-1, x.shape[-1]) @ kernel + self.bias[...].astype(x.dtype)
    return y.reshape(x.shape[:-1] + (kernel.shape[1],))


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with affine scale/bias and PyTorch's epsilon.

  Normalises a 2-D view (leading axes flattened): on XLA:CPU this halves the backward pass time
  of the same computation on (B, L, H). Statistics and affine map in float32; the output has the
  input's dtype.
  """

  def __init__(self, num_features: int, *, epsilon: float = LAYER_NORM_EPSILON):
    self.epsilon = epsilon
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., H) -> (..., H)."""
    return self._normalize(x, lambda rows: jnp.mean(rows, axis=-1, keepdims=True))

  def step(self, x: jax.Array) -> jax.Array:
    """The same map on one token per row, x (B, H), for the recurrent step.

    The row means are matmuls with a 1/H vector: XLA:CPU lowers each (B, H) row reduction to a
    reduce-window and a reduce, and the matmul is ~2x faster at the sampler's sizes (the
    1.46M model's batch step ~4% faster; docs/PERFORMANCE.md). Equal to `__call__` up to
    float32 rounding (~1e-6).
    """
    mean_vector = np.full((x.shape[-1], 1), 1.0 / x.shape[-1], np.float32)
    return self._normalize(
        x, lambda rows: jnp.matmul(rows, mean_vector, precision=jax.lax.Precision.HIGHEST))

  def _normalize(self, x: jax.Array, row_mean) -> jax.Array:
    x2 = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    centered = x2 - row_mean(x2)
    variance = row_mean(centered * centered)
    y = centered * jax.lax.rsqrt(variance + self.epsilon) * self.scale[...] + self.bias[...]
    return y.reshape(x.shape).astype(x.dtype)


def layer_norm(num_features: int, *, rngs: nnx.Rngs) -> LayerNorm:
  """LayerNorm(num_features) as the reference's nn.LayerNorm (rngs unused: ones and zeros)."""
  del rngs
  return LayerNorm(num_features)


def dropout(x: jax.Array, rate: float, *, deterministic: bool, rngs: Any) -> jax.Array:
  """Inverted (untied) dropout, as torch nn.Dropout.

  Args:
    x: any shape.
    rate: drop probability in [0, 1).
    deterministic: if True (evaluation), return `x` unchanged.
    rngs: an `nnx.Rngs` with a `dropout` stream (or a `jax.Array` key); required when dropping.

  Returns:
    Array shaped like `x`.
  """
  if deterministic or rate == 0.0:
    return x
  if rngs is None:
    raise ValueError("dropout with deterministic=False and rate > 0 needs rngs (a dropout stream)")
  key = rngs if isinstance(rngs, jax.Array) else rngs.dropout()
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _check_rate(rate: float) -> float:
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  return float(rate)


class FFBlock(nnx.Module):
  """Position-wise inverted bottleneck: Linear(H, ff*H) -> GELU -> dropout -> Linear(ff*H, H).

  Stateless; `setup_recurrence`/`init_state` return None so it steps like the S4 block.
  """

  def __init__(self, d_model: int, *, expand: int = 2, dropout: float = 0.0, rngs: nnx.Rngs):
    if expand < 1:
      raise ValueError(f"FFBlock expand must be >= 1, got {expand}")
    self.dropout = _check_rate(dropout)
    self.input_linear = Dense(d_model, d_model * expand, rngs=rngs)
    self.output_linear = Dense(d_model * expand, d_model, rngs=rngs)

  def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: Any = None) -> jax.Array:
    """x: (..., H) -> (..., H)."""
    z = gelu(self.input_linear(x))  # exact (erf) GELU, as torch nn.GELU
    z = dropout(z, self.dropout, deterministic=deterministic, rngs=rngs)
    return self.output_linear(z)

  def setup_recurrence(self) -> None:
    return None

  def init_state(self, batch_size: int) -> None:
    del batch_size
    return None

  def step(self, rec: None, state: None, x: jax.Array) -> tuple[jax.Array, None]:
    """x: (B, H) -> ((B, H), None)."""
    del rec
    return self(x), state

  def prefill_state(self, rec: None, x: jax.Array) -> None:
    del rec, x
    return None


class ResidualBlock(nnx.Module):
  """Pre-norm residual wrapper: x + dropout(layer(LayerNorm(x))).

  `layer` is an S4Block or FFBlock (anything with `__call__`, `setup_recurrence`, `init_state`,
  `step`; `prefill_state` when it has a state).
  """

  def __init__(self, d_model: int, layer: nnx.Module, *, dropout: float = 0.0, rngs: nnx.Rngs):
    self.norm = layer_norm(d_model, rngs=rngs)
    self.layer = layer
    self.dropout = _check_rate(dropout)

  def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: Any = None) -> jax.Array:
    """x: (B, L, H) -> (B, L, H)."""
    return self.call_with_layer_input(x, deterministic=deterministic, rngs=rngs)[0]

  def call_with_layer_input(
      self, x: jax.Array, *, deterministic: bool = True, rngs: Any = None
  ) -> tuple[jax.Array, jax.Array]:
    """Like `__call__`, also returning the inner layer's input LayerNorm(x), both (B, L, H)."""
    z = self.norm(x)
    y = self.layer(z, deterministic=deterministic, rngs=rngs)
    y = dropout(y, self.dropout, deterministic=deterministic, rngs=rngs)
    return x + y, z

  def setup_recurrence(self) -> Any:
    return self.layer.setup_recurrence()

  def init_state(self, batch_size: int) -> Any:
    return self.layer.init_state(batch_size)

  def step(self, rec: Any, state: Any, x: jax.Array) -> tuple[jax.Array, Any]:
    """x: (B, H) -> ((B, H), next state)."""
    y, state = self.layer.step(rec, state, self.norm.step(x))
    return x + y, state

  def prefill_state(self, rec: Any, z: jax.Array) -> Any:
    """State after the inner layer consumed z = LayerNorm(x), (B, L, H), with L >= 1."""
    return self.layer.prefill_state(rec, z)


class DownPool(nnx.Module):
  """Sequence pooling by `pool` with feature expansion: (B, L, H) -> (B, L/pool, expand*H).

  Each output frame is a linear map of the `pool` consecutive input frames it covers. Recurrent
  form: a ring buffer of the last `pool` inputs, projected when it is full.
  """

  def __init__(self, d_input: int, *, expand: int, pool: int, rngs: nnx.Rngs):
    if pool < 1 or expand < 1:
      raise ValueError(f"DownPool needs pool >= 1 and expand >= 1, got pool={pool} expand={expand}")
    self.d_input = d_input
    self.d_output = d_input * expand
    self.pool = pool
    self.linear = Dense(d_input * pool, self.d_output, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, L, H) with L % pool == 0 -> (B, L // pool, expand * H)."""
    batch, frames, features = x.shape
    if frames % self.pool:
      raise ValueError(f"DownPool: sequence length {frames} is not a multiple of pool {self.pool}")
    return self.linear(x.reshape(batch, frames // self.pool, self.pool * features))

  def init_state(self, batch_size: int) -> jax.Array:
    """Ring buffer of inputs, (B, pool, H) zeros."""
    return jnp.zeros((batch_size, self.pool, self.d_input), jnp.float32)

  def push(self, buffer: jax.Array, x: jax.Array, slot: jax.Array) -> jax.Array:
    """Writes x (B, H) into slot `slot` (int32 scalar in [0, pool)) of buffer (B, pool, H)."""
    return jax.lax.dynamic_update_slice_in_dim(buffer, x[:, None, :].astype(buffer.dtype), slot,
                                               axis=1)

  def project(self, buffer: jax.Array) -> jax.Array:
    """The pooled output of a full buffer (B, pool, H) -> (B, expand * H)."""
    return self.linear(buffer.reshape(buffer.shape[0], -1))

  def step(self, state: jax.Array, x: jax.Array, slot: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One fine step: x (B, H) at position `slot` of its block -> (pooled (B, expand*H), state).

    `pooled` is the DownPool output of the block and is meaningful only when slot == pool - 1
    (the backbone calls `push` always and `project` only then, in a loop of 0 or 1 iterations).
    """
    state = self.push(state, x, slot)
    return self.project(state), state


class UpPool(nnx.Module):
  """Sequence upsampling by `pool` with feature reduction: (B, L, H) -> (B, L*pool, H/expand).

  Frame j of the input produces output frames (j+1)*pool ... (j+2)*pool - 1: the one-coarse-step
  shift keeps the whole model causal, and the first `pool` outputs are zero. Recurrent form: a
  buffer of the next `pool` outputs, emitted one per fine step and refilled from each coarse output.
  """

  def __init__(self, d_input: int, *, expand: int, pool: int, rngs: nnx.Rngs):
    if pool < 1 or expand < 1 or d_input % expand:
      raise ValueError(
          f"UpPool needs pool >= 1, expand >= 1 dividing d_input; got d_input={d_input} "
          f"expand={expand} pool={pool}"
      )
    self.d_input = d_input
    self.d_output = d_input // expand
    self.pool = pool
    self.linear = Dense(d_input, self.d_output * pool, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, L, H) -> (B, L * pool, H // expand), shifted one coarse frame to the future."""
    batch, frames, _ = x.shape
    z = self.linear(x[:, :-1])
    z = jnp.pad(z, ((0, 0), (1, 0), (0, 0)))
    return z.reshape(batch, frames * self.pool, self.d_output)

  def init_state(self, batch_size: int) -> jax.Array:
    """Buffer of pending outputs, (B, pool, H // expand) zeros (the causal shift)."""
    return jnp.zeros((batch_size, self.pool, self.d_output), jnp.float32)

  def emit(self, buffer: jax.Array, slot: jax.Array) -> jax.Array:
    """Output for fine step `slot` of the current block: buffer (B, pool, H') -> (B, H')."""
    return jax.lax.dynamic_index_in_dim(buffer, slot, axis=1, keepdims=False)

  def refill(self, x: jax.Array) -> jax.Array:
    """The next block's outputs from one coarse frame: x (B, H) -> (B, pool, H // expand)."""
    return self.linear(x).reshape(x.shape[0], self.pool, self.d_output)

  def step(self, state: jax.Array, x: jax.Array, slot: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One fine step at position `slot` of its block -> (output (B, H // expand), state).

    Emits the pending output for `slot`; at the block's last slot, refills the buffer from the
    coarse frame x (B, H) just computed (x is ignored at other slots).
    """
    y = self.emit(state, slot)
    state = jnp.where(slot == self.pool - 1, self.refill(x), state)
    return y, state
