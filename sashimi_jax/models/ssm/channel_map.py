"""Per-channel dense algebra as a loop over groups of channels instead of one batched op.

XLA:TPU generates code for every batch element of a batched HIGHEST-precision small matmul, so
the DPLR layer's (H, N, N) matrix powers and Krylov blocks took most of a TPU compile (thousands
of instruction bundles per matmul, growing with H; README "A pod without a pod"). Mapping them
over groups of channels compiles one small body, run H / group times
(benchmarks/tpu_batched_matmul_compile.py).
"""

import math

import jax

# Channels per loop trip: 8 keeps the compile near the one-channel body's (1.1 s against 0.4 s
# one by one, 9.3 s batched, for grad of A^16000 at H = 64 on v5e) with 8x fewer sequential trips.
CHANNELS_PER_TRIP = 8


def map_channels(fn, *arrays, channels_per_trip: int = CHANNELS_PER_TRIP):
  """fn applied to each channel (leading axis) of `arrays`, `channels_per_trip` at a time.

  Args:
    fn: maps one channel's arrays (leading axis removed) to a pytree of arrays.
    arrays: arrays with the same leading channel axis H.
    channels_per_trip: channels vectorised within one loop trip (static).

  Returns:
    fn's outputs stacked on a leading H axis; equal to jax.vmap(fn)(*arrays).
  """
  return jax.lax.map(lambda xs: fn(*xs), arrays, batch_size=channels_per_trip)


def map_channel_blocks(fn, arrays, *, channels_per_trip: int):
  """fn applied to consecutive blocks of channels of `arrays` (a pytree, leading axis H).

  Unlike `map_channels`, fn sees a block's arrays with their leading channel axis (size
  gcd(H, channels_per_trip)), so it can be written for any number of channels, and a
  `jax.checkpoint` around it bounds the backward pass's memory to one block's intermediates.
  Returns fn's outputs for all H channels, concatenated on the leading axis.
  """
  channels = jax.tree.leaves(arrays)[0].shape[0]
  block = math.gcd(channels, channels_per_trip)
  blocked = jax.tree.map(lambda a: a.reshape((channels // block, block) + a.shape[1:]), arrays)
  out = jax.lax.map(fn, blocked)
  return jax.tree.map(lambda a: a.reshape((channels,) + a.shape[2:]), out)
