"""Stereo image of a clip in a few numbers (pure numpy), to compare samples with their data.

For a clip x (frames, 2) with channels L = x[:, 0], R = x[:, 1]:
  * `correlation`: zero-lag Pearson correlation of L and R (means removed), in [-1, 1]:
    1 identical or panned copies, 0 independent channels, -1 a polarity flip.
  * `band_correlation`: the same per octave band, from the FFT of the whole clip:
    sum Re(X_L conj X_R) / sqrt(sum |X_L|^2 sum |X_R|^2) over the band's bins (DC excluded).
    Bands are [f, 2f) for f = sample_rate / 2 / 2**k, the lowest starting at or above 62.5 Hz;
    each is keyed by its lower edge in Hz.
  * `level_difference_db_mean`, `level_difference_db_spread`: the inter-channel level difference
    10 log10(E_L / E_R) per 20 ms frame (non-overlapping), over the frames where either channel
    carries energy (RMS above -60 dBFS); mean and standard deviation in dB (clipped to +-60 dB).
    A 6 dB pan (R = L / 2) gives 6.02, spread 0.
  * `side_to_mid_db`: 10 log10(E_S / E_M), S = (L - R) / 2, M = (L + R) / 2, clipped to
    +-60 dB: -60 identical channels, 0 independent ones of equal level, -9.54 a 6 dB pan, +60 a
    polarity flip.
  * `mono_collapse`: side energy at most -30 dB under mid (near-identical channels).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

FRAME_SECONDS = 0.02
DB_LIMIT = 60.0
MONO_COLLAPSE_SIDE_TO_MID_DB = -30.0
LOWEST_BAND_HZ = 62.5
_SILENCE_RMS = 1e-3  # -60 dBFS
_TINY = 1e-20


def _check(audio) -> np.ndarray:
  audio = np.asarray(audio, np.float64)
  if audio.ndim != 2 or audio.shape[1] != 2 or audio.shape[0] < 2:
    raise ValueError(f"stereo metrics need audio (frames >= 2, 2), got shape {audio.shape}.")
  return audio


def _db(ratio: float) -> float:
  return float(np.clip(10.0 * np.log10(max(ratio, _TINY)), -DB_LIMIT, DB_LIMIT))


def correlation(audio) -> float:
  """Zero-lag Pearson correlation of the two channels of audio (frames, 2); 0 if one is flat."""
  x = _check(audio)
  x = x - x.mean(axis=0)
  norm = np.sqrt(np.sum(x[:, 0]**2) * np.sum(x[:, 1]**2))
  return float(np.sum(x[:, 0] * x[:, 1]) / norm) if norm > _TINY else 0.0


def octave_band_edges(sample_rate: int) -> list[tuple[float, float]]:
  """[(low, high)] octave bands from the Nyquist frequency down to >= LOWEST_BAND_HZ."""
  edges, high = [], sample_rate / 2.0
  while high / 2.0 >= LOWEST_BAND_HZ:
    edges.append((high / 2.0, high))
    high /= 2.0
  return edges[::-1]


def band_correlation(audio, sample_rate: int) -> dict[str, float]:
  """Inter-channel correlation per octave band: {"<low edge Hz>": value in [-1, 1]}."""
  x = _check(audio)
  spectrum = np.fft.rfft(x - x.mean(axis=0), axis=0)
  freqs = np.fft.rfftfreq(x.shape[0], 1.0 / sample_rate)
  out = {}
  for low, high in octave_band_edges(sample_rate):
    upper = freqs <= high if high >= sample_rate / 2.0 else freqs < high
    band = (freqs >= low) & upper & (freqs > 0)
    left, right = spectrum[band, 0], spectrum[band, 1]
    norm = np.sqrt(np.sum(np.abs(left)**2) * np.sum(np.abs(right)**2))
    value = float(np.sum((left * np.conj(right)).real) / norm) if norm > _TINY else 0.0
    out[f"{low:g}"] = value
  return out


def level_difference_db(audio, sample_rate: int) -> tuple[float, float]:
  """(mean, standard deviation) of 10 log10(E_L / E_R) over 20 ms frames, in dB."""
  x = _check(audio)
  frame = max(1, int(round(FRAME_SECONDS * sample_rate)))
  count = max(1, x.shape[0] // frame)
  frames = x[:count * frame].reshape(count, -1, 2) if x.shape[0] >= frame else x[None]
  energy = np.mean(frames**2, axis=1)  # (frames, 2)
  loud = np.max(energy, axis=1) > _SILENCE_RMS**2
  if not np.any(loud):
    return 0.0, 0.0
  ratio = np.maximum(energy[loud, 0], _TINY) / np.maximum(energy[loud, 1], _TINY)
  ild = np.clip(10.0 * np.log10(ratio), -DB_LIMIT, DB_LIMIT)
  return float(np.mean(ild)), float(np.std(ild))


def side_to_mid_db(audio) -> float:
  """10 log10(E_side / E_mid), clipped to +-60 dB."""
  x = _check(audio)
  side = np.sum(((x[:, 0] - x[:, 1]) / 2.0)**2)
  mid = np.sum(((x[:, 0] + x[:, 1]) / 2.0)**2)
  if side <= _TINY and mid <= _TINY:
    return 0.0
  return _db(side / max(mid, _TINY))


def clip_metrics(audio, sample_rate: int) -> dict[str, Any]:
  """All metrics of one stereo clip (frames, 2) as a JSON-ready dict (see the module doc)."""
  mean, spread = level_difference_db(audio, sample_rate)
  side_mid = side_to_mid_db(audio)
  return {
      "correlation": correlation(audio),
      "band_correlation": band_correlation(audio, sample_rate),
      "level_difference_db_mean": mean,
      "level_difference_db_spread": spread,
      "side_to_mid_db": side_mid,
      "mono_collapse": bool(side_mid <= MONO_COLLAPSE_SIDE_TO_MID_DB),
  }


def mean_metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Averages `clip_metrics` records: numbers by mean, `mono_collapse` as the collapsed fraction.

  Returns:
    {"clips": n, "correlation": ..., "band_correlation": {...}, ..., "mono_collapse_fraction": f}.
  """
  if not records:
    raise ValueError("mean_metrics needs at least one record.")
  out: dict[str, Any] = {"clips": len(records)}
  for name in ("correlation", "level_difference_db_mean", "level_difference_db_spread",
               "side_to_mid_db"):
    out[name] = float(np.mean([r[name] for r in records]))
  out["band_correlation"] = {band: float(np.mean([r["band_correlation"][band] for r in records]))
                             for band in records[0]["band_correlation"]}
  out["mono_collapse_fraction"] = float(np.mean([r["mono_collapse"] for r in records]))
  return out


def scalar_summary(summary: dict[str, Any], prefix: str) -> dict[str, float]:
  """Flat {prefix/name: float} of a `mean_metrics` or `clip_metrics` dict, for TensorBoard."""
  out = {}
  for name, value in summary.items():
    if name == "band_correlation":
      for band, v in value.items():
        out[f"{prefix}/band_correlation_{band}hz"] = float(v)
    elif name != "clips":
      out[f"{prefix}/{name}"] = float(value)
  return out


def linear_headroom_bits(audio, *, past_frames: int = 16,
                         max_frames: int = 200_000) -> dict[str, float]:
  """What a linear model gets out of the same-time left sample, in bits per sample.

  Least-squares predictors (with a constant) over frames from a quarter into `audio` (frames, 2)
  (at most `max_frames` of them), each from the `past_frames` previous frames of both channels:
  L[t]; R[t]; and R[t] given also L[t]. With v the residual variances:
    * `right_vs_left_bits` = 1/2 log2(v(L | past) / v(R | past, L[t])): how much cheaper the
      right sample could be than the left one (the figure of `REFERENCE.md`);
    * `same_time_bits` = 1/2 log2(v(R | past) / v(R | past, L[t])): what knowing L[t] saves on
      R[t] beyond both channels' past (0 for independent channels, large for R = f(L)).
  """
  x = _check(audio)
  start = x.shape[0] // 4
  x = x[start:start + max_frames + past_frames]
  n = x.shape[0] - past_frames
  if n < 4 * (2 * past_frames + 2):
    raise ValueError(f"linear_headroom_bits needs more than {4 * (2 * past_frames + 2)} "
                     f"frames after the first quarter, got {n}.")
  past = [x[past_frames - k:past_frames - k + n] for k in range(1, past_frames + 1)]
  features = np.concatenate(past + [np.ones((n, 1))], axis=1)  # (n, 2 * past_frames + 1)
  now = x[past_frames:]

  def residual_variance(design, target):
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    return max(float(np.var(target - design @ coefficients)), _TINY)

  v_left = residual_variance(features, now[:, 0])
  v_right = residual_variance(features, now[:, 1])
  v_right_given_left = residual_variance(np.concatenate([features, now[:, :1]], axis=1),
                                         now[:, 1])
  return {"right_vs_left_bits": 0.5 * float(np.log2(v_left / v_right_given_left)),
          "same_time_bits": 0.5 * float(np.log2(v_right / v_right_given_left))}
