"""Generated audio for people: spectrogram pictures (dBFS, with a colour bar) and TensorBoard
summaries. Rendering uses matplotlib's Agg backend (no display); audio files are written by
`audio_output`.
"""

from __future__ import annotations

import io
import math
from typing import Any, Optional

from absl import logging
import jax
import matplotlib

matplotlib.use("Agg")  # Headless: must precede pyplot's import.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from sashimi_jax import config as config_lib  # pylint: disable=g-import-not-at-top
from sashimi_jax import sampling  # pylint: disable=g-import-not-at-top
from sashimi_jax import stereo_metrics
from sashimi_jax.data import layout
from sashimi_jax.data import pipeline
from sashimi_jax.data import stereo

_CHANNEL_NAMES = ("left", "right")
SPECTROGRAM_MIN_DB = -100.0  # colour scale of spectrogram pictures: [-100, 0] dBFS.


def log_spectrogram(signal: np.ndarray, *, frame_frames: int = 512, hop_frames: int = 128):
  """Log-magnitude STFT of a mono signal.

  Args:
    signal: float (frames,).
    frame_frames: Hann window length in frames.
    hop_frames: hop between windows in frames.

  Returns:
    float32 (frame_frames // 2 + 1, windows) magnitudes in dBFS: a full-scale sine (amplitude
    1) reads 0 dB at its frequency; floored at -120 dB.
  """
  signal = np.asarray(signal, np.float64)
  frame_frames = min(frame_frames, max(16, 2**int(math.log2(max(len(signal), 16)))))
  hop_frames = min(hop_frames, frame_frames)
  if len(signal) < frame_frames:
    signal = np.pad(signal, (0, frame_frames - len(signal)))
  windows = 1 + (len(signal) - frame_frames) // hop_frames
  index = np.arange(frame_frames)[None, :] + hop_frames * np.arange(windows)[:, None]
  window = np.hanning(frame_frames)
  spectrum = np.fft.rfft(signal[index] * window[None, :], axis=-1)
  amplitude = 2.0 * np.abs(spectrum) / window.sum()  # a sine of amplitude a peaks at a.
  return (20 * np.log10(np.maximum(amplitude, 1e-6))).T.astype(np.float32)


def spectrogram_figure(audio: np.ndarray, sample_rate: int, *, title: str = ""):
  """A matplotlib figure with one log spectrogram per channel of audio (frames, C)."""
  audio = np.asarray(audio, np.float32)
  if audio.ndim == 1:
    audio = audio[:, None]
  channels = audio.shape[1]
  fig, axes = plt.subplots(channels, 1, figsize=(6, 2.2 * channels), squeeze=False, dpi=80)
  seconds = audio.shape[0] / sample_rate
  for c in range(channels):
    ax = axes[c, 0]
    image = ax.imshow(log_spectrogram(audio[:, c]), origin="lower", aspect="auto", cmap="magma",
                      vmin=SPECTROGRAM_MIN_DB, vmax=0.0,
                      extent=(0.0, seconds, 0.0, sample_rate / 2000.0))
    fig.colorbar(image, ax=ax, label="dBFS", pad=0.02)
    ax.set_ylabel("kHz")
    label = _CHANNEL_NAMES[c] if channels == 2 else "mono"
    ax.set_title(f"{title} ({label})" if title else label, fontsize=9)
  axes[-1, 0].set_xlabel("seconds")
  fig.tight_layout()
  return fig


def spectrogram_png(audio: np.ndarray, sample_rate: int, path: Optional[str] = None, *,
                    title: str = "") -> bytes:
  """Renders `spectrogram_figure` to PNG bytes, also written to `path` if given."""
  fig = spectrogram_figure(audio, sample_rate, title=title)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  plt.close(fig)
  data = buffer.getvalue()
  if path is not None:
    with open(path, "wb") as f:
      f.write(data)
  return data


def spectrogram_image(audio: np.ndarray, sample_rate: int, *, title: str = "") -> np.ndarray:
  """Renders `spectrogram_figure` to a uint8 RGB image (H, W, 3) for TensorBoard."""
  fig = spectrogram_figure(audio, sample_rate, title=title)
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return image


def data_stereo_metrics(config, num_frames: int, *, max_clips: int = 8) -> dict[str, Any]:
  """`stereo_metrics.mean_metrics` of held-out stereo data, as the model sees it.

  Up to `max_clips` clips spread evenly over the validation split (the training split if there
  is none) are encoded and decoded like training data (normalised, quantised) and cut to
  `num_frames` frames, so they compare like for like with generated clips.
  """
  dataset = config.dataset
  try:
    clips = pipeline.build_clip_source(dataset, "valid")
  except ValueError:
    clips = pipeline.build_clip_source(dataset, "train")
  if not len(clips):
    clips = pipeline.build_clip_source(dataset, "train")
  count = min(max_clips, len(clips))
  indices = np.linspace(0, len(clips) - 1, count).round().astype(int)
  sample_rate = int(dataset.sample_rate)
  records = []
  for i in indices:
    decoded = np.asarray(pipeline.decode_tokens(pipeline.encode_clip(clips[int(i)], dataset),
                                                dataset), np.float32)
    records.append(stereo_metrics.clip_metrics(decoded[:num_frames], sample_rate))
  return stereo_metrics.mean_metrics(records)


def summary_samples(model, config, key: jax.Array, *, num_samples: Optional[int] = None,
                    num_frames: Optional[int] = None) -> dict[str, Any]:
  """Generates a few clips from scratch for TensorBoard.

  Args:
    model: the `SaShiMiLM` being trained (only read).
    config: the run's ConfigDict (`dataset.*` decides decoding and the sample rate).
    key: PRNG key.
    num_samples: clips to generate (default `config.train.num_eval_samples`, at least 1).
    num_frames: frames per clip (default: one second, at most `dataset.sample_len`); the stream
      generated follows the training layout (`layout.generated_frames`) and is cut to it.

  Returns:
    {"sample_<i>/audio": (float32 (frames, C) in [-1, 1], sample_rate),
     "sample_<i>/spectrogram": uint8 (H, W, 3)} for every clip i; the values are what
    `writer.write_audio` / `writer.write_image` take (train.py's `_write_samples`). Stereo runs
    add float scalars "stereo/<metric>" (mean over the clips, `stereo_metrics`) and
    "stereo_data/<metric>" (the same for held-out data, `data_stereo_metrics`).
  """
  dataset = config.dataset
  sample_rate = int(dataset.sample_rate)
  if num_samples is None:
    num_samples = max(1, int(config.train.get("num_eval_samples", 1) or 1))
  if num_frames is None:
    num_frames = min(int(dataset.sample_len), sample_rate)
  channels = stereo.num_channels(bool(dataset.is_stereo))
  stream_frames = layout.generated_frames(
      num_frames, is_stereo=bool(dataset.is_stereo), strategy=dataset.interleaving_strategy,
      sample_len=int(dataset.sample_len))
  out = sampling.generate(
      model, key, batch_size=num_samples, new_tokens=stream_frames * channels,
      **config_lib.head_args(config))
  audio = layout.trim_frames(
      np.asarray(pipeline.decode_tokens(np.asarray(out["tokens"]), dataset), np.float32),
      num_frames)
  bits_per_token = -np.asarray(out["log_likelihood"]) / (stream_frames * channels * math.log(2.0))
  summaries = {}
  if dataset.is_stereo:
    records = [stereo_metrics.clip_metrics(clip, sample_rate) for clip in audio]
    summaries.update(stereo_metrics.scalar_summary(stereo_metrics.mean_metrics(records),
                                                   "stereo"))
    try:
      summaries.update(stereo_metrics.scalar_summary(
          data_stereo_metrics(config, num_frames), "stereo_data"))
    except (ValueError, OSError) as e:  # e.g. no readable held-out clip: samples still logged.
      logging.warning("No stereo metrics of held-out data: %s", e)
  for i, clip in enumerate(audio):
    summaries[f"sample_{i}/audio"] = (clip, sample_rate)
    summaries[f"sample_{i}/spectrogram"] = spectrogram_image(
        clip, sample_rate, title=f"sample {i}: {bits_per_token[i]:.2f} bits/token")
  return summaries
