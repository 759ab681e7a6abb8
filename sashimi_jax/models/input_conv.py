"""A short causal convolution over the token embeddings, added residually before level 0.

    y[t] = x[t] + b + sum_{k=0}^{W-1} x[t-k] @ K[k]        (x[t] = 0 for t < 0)

With W >= 2 every position sees the embeddings of its W-1 predecessors directly, before any S4
layer: in a `temporal` stereo stream `L[t] R[t] ...`, the right sample's position sees L[t] (and
L[t-1], R[t-1], ...) one linear map away, which the SSM layers (smooth long kernels) reach only
indirectly. `dense` mixes all H features per lag (W*H*H parameters); `depthwise` has one filter
per feature (W*H), as the short convolutions of H3 and Mamba.

The module is exact in both modes: `__call__` on (B, L, H) and `step` on (B, H) with an explicit
state (the last W-1 inputs, oldest first), and `prefill_state` builds that state from a prompt.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

KINDS = ("dense", "depthwise")


class CausalInputConv(nnx.Module):
  """Residual causal convolution of width `width` over (B, L, features) activations.

  Parameters: `kernel` (width, features, features) for `dense` or (width, features) for
  `depthwise`, index k = lag (k = 0 is the current position); `bias` (features,). Initialised like
  PyTorch's Conv1d (uniform in +-1/sqrt(fan_in), fan_in = width * features for dense, width for
  depthwise).
  """

  def __init__(self, features: int, width: int, *, kind: str = "dense", rngs: nnx.Rngs):
    if width < 1:
      raise ValueError(f"input conv width must be >= 1, got {width}")
    if kind not in KINDS:
      raise ValueError(f"input conv kind must be one of {KINDS}, got {kind!r}")
    self.features = int(features)
    self.width = int(width)
    self.kind = kind
    shape = (width, features, features) if kind == "dense" else (width, features)
    fan_in = width * features if kind == "dense" else width
    bound = 1.0 / math.sqrt(fan_in)
    self.kernel = nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))
    self.bias = nnx.Param(jax.random.uniform(
        rngs.params(), (features,), jnp.float32, -bound, bound))

  def _mix(self, lagged: jax.Array) -> jax.Array:
    """lagged (W, N, H) inputs at lags 0..W-1 -> (N, H) sum of their kernel products + bias."""
    kernel = self.kernel[...]
    if self.kind == "dense":
      # One (N, W*H) x (W*H, H) matmul instead of W small ones.
      n = lagged.shape[1]
      stacked = jnp.transpose(lagged, (1, 0, 2)).reshape(n, self.width * self.features)
      y = stacked @ kernel.reshape(self.width * self.features, self.features)
    else:
      y = jnp.einsum("wnh,wh->nh", lagged, kernel)
    return y + self.bias[...]

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, L, H) -> (B, L, H); output t depends on x[:, :t+1] only."""
    batch, length, features = x.shape
    padded = jnp.pad(x, ((0, 0), (self.width - 1, 0), (0, 0)))
    # lagged[k] = x shifted right by k (zeros before the start).
    lagged = jnp.stack([padded[:, self.width - 1 - k: self.width - 1 - k + length]
                        for k in range(self.width)])
    y = self._mix(lagged.reshape(self.width, batch * length, features))
    return x + y.reshape(batch, length, features)

  def init_state(self, batch_size: int) -> jax.Array:
    """The last W-1 inputs before the first step: zeros (B, W-1, H), oldest first."""
    return jnp.zeros((batch_size, self.width - 1, self.features), jnp.float32)

  def step(self, state: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One position: x (B, H), state (B, W-1, H) -> (y (B, H), next state)."""
    window = jnp.concatenate([state, x[:, None, :]], axis=1)  # (B, W, H), oldest first
    lagged = jnp.flip(window, axis=1).transpose(1, 0, 2)  # (W, B, H), lag 0 first
    y = x + self._mix(lagged)
    return y, window[:, 1:]

  def prefill_state(self, x: jax.Array) -> jax.Array:
    """State after consuming x (B, P, H): its last W-1 inputs, zero-padded on the left."""
    keep = self.width - 1
    if keep == 0:
      return x[:, :0]
    padded = jnp.pad(x, ((0, 0), (keep, 0), (0, 0)))
    return padded[:, -keep:]
