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
from sashimi_jax import stereo_metrics
from sashimi_jax.data import pipeline
from sashimi_jax.data import quantize
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


@functools.partial(jax.jit, static_argnames=("graphdef", "head", "bits", "n_mixtures"))
def _predictive(params, x, key, levels, *, graphdef, head, bits, n_mixtures):
  """(mean, variance, one draw) of each position's predicted amplitude, each (B, T)."""
  outputs = nnx.merge(graphdef, params)(x)
  log_p = heads.log_probs(outputs, head=head, bits=bits, n_mixtures=n_mixtures)
  p = jnp.exp(log_p)
  mean = p @ levels
  variance = p @ levels**2 - mean**2
  draw = levels[jax.random.categorical(key, log_p, axis=-1)]
  return mean, variance, draw


def teacher_forced_coupling(model, config, clips: np.ndarray, *, seed: int = 0,
                            batch_size: int = 4) -> dict[str, float]:
  """How much inter-channel correlation a stereo model's one-step predictions carry.

  Every position of each clip's stream is predicted from the true preceding tokens (the
  convolution mode, as in training). Per clip, zero-lag correlations (`stereo_metrics`) of:
    * `data`: the true channels;
    * `mean_prediction`: the predicted means (E[L[t] | past], E[R[t] | past, L[t]]);
    * `one_step_samples`: one draw per position from the predicted distributions;
    * `true_left_sampled_right`: the true left channel with the right channel drawn.
  If `one_step_samples` is near `data`, the model has learned the coupling and a low correlation
  of free-running samples comes from generating from its own (drifting) past; if it is low too,
  the per-step noise (the predicted spread, `right_noise_fraction` = mean predicted variance of
  R[t] over the variance of R) swamps the coupling even with the true past.

  Args:
    model, config: a stereo `SaShiMiLM` and its ConfigDict.
    clips: float32 (N, L, 2) stereo audio, L = `dataset.sample_len`.
    seed: of the draws.
    batch_size: streams per forward pass.

  Returns:
    Means over clips of the figures above.
  """
  dataset = config.dataset
  if not dataset.is_stereo:
    raise ValueError("teacher_forced_coupling needs a stereo model (dataset.is_stereo).")
  clips = np.asarray(clips, np.float32)
  bits = int(dataset.bits)
  strategy = dataset.interleaving_strategy
  streams = np.stack([pipeline.encode_clip(c, dataset) for c in clips])
  levels = jnp.asarray(quantize.decode(np.arange(2**bits), bits, dataset.quantization),
                       jnp.float32)
  head = config.model.output_head
  n_mixtures = int(config.model.n_mixtures) if head == "dml" else 0
  graphdef, params = nnx.split(model)
  key = jax.random.key(seed)
  means, variances, draws = [], [], []
  for start in range(0, streams.shape[0], batch_size):
    y = streams[start:start + batch_size]
    rows = y.shape[0]
    if rows < batch_size:
      y = np.concatenate([y, np.repeat(y[:1], batch_size - rows, axis=0)])
    key, sub = jax.random.split(key)
    out = _predictive(params, jnp.asarray(pipeline.shift_right(y, bits)), sub, levels,
                      graphdef=graphdef, head=head, bits=bits, n_mixtures=n_mixtures)
    for store, value in zip((means, variances, draws), out):
      store.append(np.asarray(value)[:rows])
  true = stereo.deinterleave(np.asarray(quantize.decode(streams, bits, dataset.quantization)),
                             strategy)
  mean, variance, draw = (stereo.deinterleave(np.concatenate(v), strategy)
                          for v in (means, variances, draws))
  return coupling_figures(true, mean, variance, draw)


def coupling_figures(true: np.ndarray, mean: np.ndarray, variance: np.ndarray,
                     draw: np.ndarray) -> dict[str, float]:
  """The figures of `teacher_forced_coupling` from per-frame arrays, each (N, L, 2).

  Args:
    true: the clips' amplitudes; mean, variance, draw: each position's predicted mean, variance
      and one draw, de-interleaved to (clip, frame, channel).
  """
  figures = {"data": [], "mean_prediction": [], "one_step_samples": [],
             "true_left_sampled_right": [], "right_noise_fraction": []}
  for i in range(true.shape[0]):
    figures["data"].append(stereo_metrics.correlation(true[i]))
    figures["mean_prediction"].append(stereo_metrics.correlation(mean[i]))
    figures["one_step_samples"].append(stereo_metrics.correlation(draw[i]))
    figures["true_left_sampled_right"].append(stereo_metrics.correlation(
        np.stack([true[i, :, 0], draw[i, :, 1]], axis=-1)))
    figures["right_noise_fraction"].append(
        float(np.mean(variance[i, :, 1]) / max(float(np.var(true[i, :, 1])), 1e-12)))
  return {name: float(np.mean(values)) for name, values in figures.items()}
