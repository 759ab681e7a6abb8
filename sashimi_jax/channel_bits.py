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


def _streams(clips: np.ndarray, dataset, caller: str) -> np.ndarray:
  """Token streams of stereo `clips` (N, L, 2) as the model of `dataset` reads them.

  Stereo: one interleaved stream per clip, (N, 2L). Mono (the two-mono baseline): each channel
  of each clip as its own stream, rows 2i and 2i + 1 the left and right of clip i, (2N, L).
  """
  if clips.ndim != 3 or clips.shape[-1] != 2:
    raise ValueError(f"{caller} needs stereo clips (N, L, 2), got {clips.shape}.")
  if dataset.is_stereo:
    return np.stack([pipeline.encode_clip(c, dataset) for c in clips])
  return np.stack([pipeline.encode_clip(c[:, k:k + 1], dataset) for c in clips for k in (0, 1)])


def _padded_batches(streams: np.ndarray, batch_size: int):
  """Yields (batch (batch_size, T), real rows): the last batch padded with copies of its first
  row, so every call has one compiled shape; only the first `rows` outputs count."""
  for start in range(0, streams.shape[0], batch_size):
    y = streams[start:start + batch_size]
    rows = y.shape[0]
    if rows < batch_size:
      y = np.concatenate([y, np.repeat(y[:1], batch_size - rows, axis=0)])
    yield y, rows


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
  dataset = config.dataset
  bits = int(dataset.bits)
  streams = _streams(clips, dataset, "channel_bits")
  if dataset.is_stereo:
    channel = stereo.channel_of_position(clips.shape[1], dataset.interleaving_strategy)
    channels = np.broadcast_to(channel, streams.shape)
  else:
    channels = np.broadcast_to(np.tile([[0], [1]], (clips.shape[0], 1)), streams.shape)
  head = config_lib.head_args(config)
  graphdef, params = nnx.split(model)
  sums = np.zeros(2)
  counts = np.zeros(2)
  start = 0
  for y, rows in _padded_batches(streams, batch_size):
    token_bits = np.asarray(_token_bits(
        params, jnp.asarray(pipeline.shift_right(y, bits)), jnp.asarray(y), graphdef=graphdef,
        **head))[:rows]
    c = channels[start:start + rows]
    start += rows
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
  """How much inter-channel correlation a model's one-step predictions carry and leave.

  Every position is predicted from the true preceding tokens (the convolution mode, as in
  training): a stereo model on each clip's interleaved stream, a mono model (the two-mono
  baseline) on each channel of each clip as its own stream. Per clip, zero-lag correlations
  (`stereo_metrics.correlation`) of:
    * `data`: the true channels;
    * `mean_prediction`: the predicted means (E[L[t] | past], E[R[t] | past, L[t]] for
      `temporal`);
    * `one_step_samples`: one draw per position from the predicted distributions;
    * `true_left_sampled_right`: the true left channel with the right channel drawn;
    * `residual_correlation`: of the prediction errors (true minus predicted mean) of the two
      channels: the same-time coupling the model leaves unexplained. A two-mono model leaves
      all of it (the data's innovation correlation); a stereo model that predicts R[t] from
      L[t] as well as the data allow leaves about 0.
  `right_noise_fraction` is the mean predicted variance of R[t] over the variance of R. Draws
  given the true past inherit most of the data's correlation through that past: a gap between
  `one_step_samples` and free-running samples' correlation comes from generating from the
  model's own past.

  Args:
    model, config: a `SaShiMiLM` and its ConfigDict (stereo, or mono for two-mono).
    clips: float32 (N, L, 2) stereo audio, L = `dataset.sample_len` for stereo models.
    seed: of the draws.
    batch_size: streams per forward pass.

  Returns:
    Means over clips of the figures above.
  """
  dataset = config.dataset
  clips = np.asarray(clips, np.float32)
  bits = int(dataset.bits)
  streams = _streams(clips, dataset, "teacher_forced_coupling")
  levels = jnp.asarray(quantize.decode(np.arange(2**bits), bits, dataset.quantization),
                       jnp.float32)
  head = config_lib.head_args(config)
  graphdef, params = nnx.split(model)
  key = jax.random.key(seed)
  means, variances, draws = [], [], []
  for y, rows in _padded_batches(streams, batch_size):
    key, sub = jax.random.split(key)
    out = _predictive(params, jnp.asarray(pipeline.shift_right(y, bits)), sub, levels,
                      graphdef=graphdef, **head)
    for store, value in zip((means, variances, draws), out):
      store.append(np.asarray(value)[:rows])
  arrays = [np.asarray(quantize.decode(streams, bits, dataset.quantization))] + [
      np.concatenate(v) for v in (means, variances, draws)]
  if dataset.is_stereo:
    arrays = [stereo.deinterleave(a, dataset.interleaving_strategy) for a in arrays]
  else:  # (2N, L) -> (N, L, 2)
    arrays = [a.reshape(-1, 2, a.shape[-1]).transpose(0, 2, 1) for a in arrays]
  return coupling_figures(*arrays)


def coupling_figures(true: np.ndarray, mean: np.ndarray, variance: np.ndarray,
                     draw: np.ndarray) -> dict[str, float]:
  """The figures of `teacher_forced_coupling` from per-frame arrays, each (N, L, 2).

  Args:
    true: the clips' amplitudes; mean, variance, draw: each position's predicted mean, variance
      and one draw, de-interleaved to (clip, frame, channel).
  """
  figures = {"data": [], "mean_prediction": [], "one_step_samples": [],
             "true_left_sampled_right": [], "residual_correlation": [],
             "right_noise_fraction": []}
  for i in range(true.shape[0]):
    figures["data"].append(stereo_metrics.correlation(true[i]))
    figures["mean_prediction"].append(stereo_metrics.correlation(mean[i]))
    figures["one_step_samples"].append(stereo_metrics.correlation(draw[i]))
    figures["true_left_sampled_right"].append(stereo_metrics.correlation(
        np.stack([true[i, :, 0], draw[i, :, 1]], axis=-1)))
    figures["residual_correlation"].append(stereo_metrics.correlation(true[i] - mean[i]))
    figures["right_noise_fraction"].append(
        float(np.mean(variance[i, :, 1]) / max(float(np.var(true[i, :, 1])), 1e-12)))
  return {name: float(np.mean(values)) for name, values in figures.items()}
