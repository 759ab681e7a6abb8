"""Stereo as data: every interleaving strategy is one permutation of 2L positions.

A stereo clip `x` of shape `(L, 2)` is flattened frame-major, so sample `x[t, c]` sits at flat
index `f = 2 t + c`. A strategy is a permutation `perm` of the `2L` flat positions:

    stream = flat[perm]          flat = stream[inverse]

Strategies (N = frames per block):
  * `temporal`:   `[L0, R0, L1, R1, ...]` (blocks of one frame).
  * `blocking`:   `[L0 .. L(L-1), R0 .. R(L-1)]` (one block spanning the clip).
  * `blocking-N`: blocks of N frames, left block then right block; the last block may be short:
    L=1028, N=500 -> `[L0..L499, R0..R499, L500..L999, R500..R999, L1000..L1027, R1000..R1027]`.

All three are the same formula (`blocking-N` with N = 1 or N = L), so there is one code path. The
permutation is built in numpy from static shapes, which keeps `interleave` and friends jit-safe
on jax arrays (the index array is a compile-time constant).
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

_VALID_FORMS = "'temporal', 'blocking', or 'blocking-N' with N a positive integer (e.g. 'blocking-500')"
_BLOCKING_N = re.compile(r"blocking-([1-9][0-9]*)")


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A parsed interleaving strategy.

  Attributes:
    name: the canonical string form (`temporal`, `blocking`, `blocking-N`).
    block_frames: frames per block; None means one block spanning the whole clip.
  """

  name: str
  block_frames: int | None

  def frames_per_block(self, num_frames: int) -> int:
    """Block length in frames for a clip of `num_frames` frames."""
    return num_frames if self.block_frames is None else self.block_frames

  def __str__(self) -> str:
    return self.name


def parse_strategy(strategy: "str | Strategy") -> Strategy:
  """Parses and validates an interleaving strategy.

  Args:
    strategy: `temporal`, `blocking`, `blocking-N` (N a positive integer without leading zeros),
      or an already parsed `Strategy`.

  Returns:
    The parsed `Strategy`.

  Raises:
    ValueError: for anything else (e.g. `blocking-0`, `blocking-x`, `Temporal`), listing the
      valid forms.
  """
  if isinstance(strategy, Strategy):
    return strategy
  if not isinstance(strategy, str):
    raise ValueError(
        f"Interleaving strategy must be a string, got {type(strategy).__name__} {strategy!r}; "
        f"valid forms: {_VALID_FORMS}.")
  if strategy == "temporal":
    return Strategy("temporal", 1)
  if strategy == "blocking":
    return Strategy("blocking", None)
  match = _BLOCKING_N.fullmatch(strategy)
  if match:
    return Strategy(strategy, int(match.group(1)))
  raise ValueError(f"Unknown interleaving strategy {strategy!r}; valid forms: {_VALID_FORMS}.")


def _check_num_frames(num_frames: int) -> int:
  if isinstance(num_frames, bool) or int(num_frames) != num_frames or num_frames < 1:
    raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}.")
  return int(num_frames)


@functools.lru_cache(maxsize=64)
def _inverse_cached(num_frames: int, strategy: Strategy) -> np.ndarray:
  """Stream position of every flat index `f = 2 t + c`, shape (2L,)."""
  block = strategy.frames_per_block(num_frames)
  t = np.arange(num_frames, dtype=np.int64)
  block_index = t // block
  within = t - block_index * block
  block_len = np.minimum(block, num_frames - block_index * block)
  left = 2 * block * block_index + within           # left samples open each block
  inverse = np.empty(2 * num_frames, dtype=np.int32)
  inverse[0::2] = left
  inverse[1::2] = left + block_len                   # right samples follow the whole left block
  inverse.flags.writeable = False
  return inverse


@functools.lru_cache(maxsize=64)
def _perm_cached(num_frames: int, strategy: Strategy) -> np.ndarray:
  inverse = _inverse_cached(num_frames, strategy)
  perm = np.empty_like(inverse)
  perm[inverse] = np.arange(inverse.size, dtype=np.int32)
  perm.flags.writeable = False
  return perm


def permutation(num_frames: int, strategy: "str | Strategy") -> np.ndarray:
  """The stream order: `stream = flat[perm]`.

  Args:
    num_frames: L, frames per clip (>= 1).
    strategy: interleaving strategy (string or `Strategy`).

  Returns:
    Read-only int32 array (2L,): `perm[p]` is the frame-major flat index `2 t + c` of the sample at
    stream position `p`.
  """
  return _perm_cached(_check_num_frames(num_frames), parse_strategy(strategy))


def inverse_permutation(num_frames: int, strategy: "str | Strategy") -> np.ndarray:
  """The inverse of `permutation`: `flat = stream[inverse]`.

  Args:
    num_frames: L, frames per clip (>= 1).
    strategy: interleaving strategy (string or `Strategy`).

  Returns:
    Read-only int32 array (2L,): `inverse[2 t + c]` is the stream position of sample `x[t, c]`.
  """
  return _inverse_cached(_check_num_frames(num_frames), parse_strategy(strategy))


def channel_of_position(num_frames: int, strategy: "str | Strategy") -> np.ndarray:
  """Channel of every stream position.

  Args:
    num_frames: L, frames per clip.
    strategy: interleaving strategy.

  Returns:
    int32 array (2L,): 0 where the stream holds a left sample, 1 where it holds a right sample.
  """
  return (permutation(num_frames, strategy) % 2).astype(np.int32)


def _is_jax(x) -> bool:
  return isinstance(x, jax.Array)


def interleave(x, strategy: "str | Strategy"):
  """Permutes stereo frames into one token stream.

  Args:
    x: numpy or jax array (..., L, 2), e.g. (L, 2) or (B, L, 2).
    strategy: interleaving strategy.

  Returns:
    Array (..., 2L) of the same kind and dtype: `stream = flat[perm]`.
  """
  if x.ndim < 2 or x.shape[-1] != 2:
    raise ValueError(f"interleave expects shape (..., L, 2), got {tuple(x.shape)}.")
  num_frames = x.shape[-2]
  perm = permutation(num_frames, strategy)
  flat = x.reshape(*x.shape[:-2], 2 * num_frames)
  if _is_jax(x):
    return jnp.take(flat, jnp.asarray(perm), axis=-1)
  return np.take(flat, perm, axis=-1)


def deinterleave(y, strategy: "str | Strategy"):
  """Inverse of `interleave`.

  Args:
    y: numpy or jax array (..., 2L) in stream order.
    strategy: interleaving strategy used to build `y`.

  Returns:
    Array (..., L, 2) with `[..., t, c]` the sample of frame t, channel c.
  """
  if y.ndim < 1 or y.shape[-1] % 2:
    raise ValueError(f"deinterleave expects shape (..., 2L) with an even last axis, got {tuple(y.shape)}.")
  num_frames = y.shape[-1] // 2
  inverse = inverse_permutation(num_frames, strategy)
  if _is_jax(y):
    flat = jnp.take(y, jnp.asarray(inverse), axis=-1)
  else:
    flat = np.take(y, inverse, axis=-1)
  return flat.reshape(*y.shape[:-1], num_frames, 2)


def reshape_stereo_output(outputs, strategy: "str | Strategy"):
  """Puts per-token model outputs back into frame/channel layout.

  Args:
    outputs: numpy or jax array (B, 2L, D) in stream order (e.g. logits or per-token losses with
      a trailing feature axis).
    strategy: interleaving strategy of the stream.

  Returns:
    Array (B, L, 2, D): `[b, t, c]` holds the output at the stream position of sample (t, c).
  """
  if outputs.ndim != 3 or outputs.shape[1] % 2:
    raise ValueError(
        f"reshape_stereo_output expects shape (B, 2L, D) with even 2L, got {tuple(outputs.shape)}.")
  batch, stream_length, features = outputs.shape
  inverse = inverse_permutation(stream_length // 2, strategy)
  if _is_jax(outputs):
    flat = jnp.take(outputs, jnp.asarray(inverse), axis=1)
  else:
    flat = np.take(outputs, inverse, axis=1)
  return flat.reshape(batch, stream_length // 2, 2, features)


def num_channels(is_stereo: bool) -> int:
  """Audio channels of a clip: 2 for stereo, 1 for mono."""
  return 2 if is_stereo else 1


def stream_length(num_frames: int, is_stereo: bool) -> int:
  """Tokens in the stream of a clip of `num_frames` frames: one per sample of every channel."""
  return int(num_frames) * num_channels(is_stereo)
