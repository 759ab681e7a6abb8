"""Bits per sample of each stereo channel, for stereo models and for the two-mono baseline.

What cross-channel learning buys is the right channel's bits under a stereo model minus its bits
under a model of the same size and compute that sees every channel as a mono stream (the "two
mono channels" baseline: one mono model trained on the left and right channels as separate
clips). `channel_bits` scores both kinds of model on the same stereo audio, each in its own
training representation (`pipeline.encode_clip`: a stereo clip interleaved, or each channel of
the clip as a mono stream), in convolution mode.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import config as config_lib
from sashimi_jax import heads
from sashimi_jax.data import pipeline
from sashimi_jax.data import stereo


@functools.partial(jax.jit, static_argnames=("graphdef", "head", "bits", "n_mixtures"))
def _token_bits(params, x, y, *, graphdef, head, bits, n_mixtures):
  outputs = nnx.merge(graphdef, params)(x)
  return heads.token_nll(outputs, y, head=head, bits=bits, n_mixtures=n_mixtures) / math.log(2.0)


def channel_bits(model, config, clips: np.ndarray, *, batch_size: int = 4) -> dict[str, float]:
  """Mean bits per sample of the left and right channels of stereo `clips`.

  Args:
    model: a `SaShiMiLM` trained with `config`.
    config: its ConfigDict; stereo (clips interleaved by its strategy) or mono (each channel of
      each clip scored as its own mono stream: the two-mono baseline).
    clips: float32 (N, L, 2) stereo audio; L = `dataset.sample_len` for stereo models, any
      length the model takes for mono ones.
    batch_size: streams per forward pass.

  Returns:
    {"left": bits, "right": bits, "total": their mean} (bits per token = per sample).
  """
  clips = np.asarray(clips, np.float32)
  if clips.ndim != 3 or clips.shape[-1] != 2:
    raise ValueError(f"channel_bits needs stereo clips (N, L, 2), got {clips.shape}.")
  dataset = config.dataset
  bits = int(dataset.bits)
  if dataset.is_stereo:
    streams = np.stack([pipeline.encode_clip(c, dataset) for c in clips])
    channel = stereo.channel_of_position(clips.shape[1], dataset.interleaving_strategy)
    channels = np.broadcast_to(channel, streams.shape)
  else:
    streams = np.stack([pipeline.encode_clip(c[:, k:k + 1], dataset)
                        for c in clips for k in (0, 1)])
    channels = np.broadcast_to(np.tile([[0], [1]], (clips.shape[0], 1)), streams.shape)
  head = config_lib.head_args(config)
  graphdef, params = nnx.split(model)
  sums = np.zeros(2)
  counts = np.zeros(2)
  for start in range(0, streams.shape[0], batch_size):
    y = streams[start:start + batch_size]
    rows = y.shape[0]
    if rows < batch_size:  # one compiled shape: pad with copies, count only the real rows
      y = np.concatenate([y, np.repeat(y[:1], batch_size - rows, axis=0)])
    token_bits = np.asarray(_token_bits(
        params, jnp.asarray(pipeline.shift_right(y, bits)), jnp.asarray(y), graphdef=graphdef,
        **head))[:rows]
    c = channels[start:start + rows]
    for k in (0, 1):
      sums[k] += token_bits[c == k].sum()
      counts[k] += np.sum(c == k)
  left, right = sums / np.maximum(counts, 1)
  return {"left": float(left), "right": float(right), "total": float((left + right) / 2)}
