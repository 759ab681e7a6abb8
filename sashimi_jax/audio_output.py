"""Writing generated audio the way people use it: rate, format, subtype, loudness, samples.json.

`OutputOptions` says how clips are written: `output_rate_hz` (polyphase resampling from the
model's rate, `scipy.signal.resample_poly`), `file_format` `wav` or `flac`, `subtype` (soundfile
names; default FLOAT for WAV, PCM_16 for FLAC) and `loudness_dbfs`: an optional target RMS level
in dBFS over all channels together (e.g. -20), lowered further when a peak would exceed full
scale. `record_units` and `options_record` give samples.json's entries, units in their keys
(`log_likelihood_nats`, `bits_per_token`, `mean_entropy_bits`, `*_hz`); `sample_job` writes the
files with `write_audio`. `CompileTimer` measures the seconds JAX spent compiling, so speeds can
be reported with and without compilation (`speed_report`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from typing import Any, Optional

import numpy as np
import soundfile as sf

FORMATS = ("wav", "flac")
DEFAULT_SUBTYPES = {"wav": "FLOAT", "flac": "PCM_16"}
LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class OutputOptions:
  """How generated clips are written (see the module docstring)."""

  output_rate_hz: Optional[int] = None  # None: the model's sample rate.
  file_format: str = "wav"
  subtype: Optional[str] = None  # None: DEFAULT_SUBTYPES[file_format].
  loudness_dbfs: Optional[float] = None  # None: the level as generated.

  @property
  def resolved_subtype(self) -> str:
    return (self.subtype or DEFAULT_SUBTYPES[self.file_format]).upper()

  def validate(self) -> "OutputOptions":
    """Returns self; raises ValueError naming the bad option."""
    if self.file_format not in FORMATS:
      raise ValueError(f"--format={self.file_format!r} is unknown; choose one of "
                       f"{', '.join(FORMATS)}.")
    if self.output_rate_hz is not None and int(self.output_rate_hz) < 1:
      raise ValueError(f"--output_rate={self.output_rate_hz} must be a positive rate in Hz.")
    if not sf.check_format(self.file_format.upper(), self.resolved_subtype):
      valid = ", ".join(sorted(sf.available_subtypes(self.file_format.upper())))
      raise ValueError(f"--subtype={self.resolved_subtype} cannot be written as "
                       f"{self.file_format.upper()}; choose one of {valid}.")
    if self.loudness_dbfs is not None and not -80.0 <= float(self.loudness_dbfs) <= 0.0:
      raise ValueError(f"--loudness_dbfs={self.loudness_dbfs} must lie in [-80, 0] dBFS (RMS).")
    return self


def resample(audio: np.ndarray, source_rate_hz: int, target_rate_hz: int) -> np.ndarray:
  """Polyphase resampling of float (frames, C) along frames; float32 out."""
  from sashimi_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  return audio_lib.resample_audio(np.asarray(audio, np.float32), int(source_rate_hz),
                                  int(target_rate_hz))


def rms_dbfs(audio: np.ndarray) -> float:
  """RMS level over every sample of every channel, in dB relative to full scale (-inf if silent)."""
  rms = float(np.sqrt(np.mean(np.square(np.asarray(audio, np.float64)))))
  return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def normalize_loudness(audio: np.ndarray, target_dbfs: float) -> tuple[np.ndarray, float]:
  """Scales audio to `target_dbfs` RMS, or less if its peak would pass full scale (1.0).

  Returns:
    (scaled float32 audio, gain in dB). Silence is returned unchanged (gain 0).
  """
  level = rms_dbfs(audio)
  if not math.isfinite(level):
    return np.asarray(audio, np.float32), 0.0
  gain = 10.0 ** ((target_dbfs - level) / 20.0)
  peak = float(np.max(np.abs(audio)))
  gain = min(gain, 1.0 / peak) if peak > 0 else gain
  return (np.asarray(audio, np.float64) * gain).astype(np.float32), 20.0 * math.log10(gain)


def write_audio(path: str, audio: np.ndarray, model_rate_hz: int,
                options: OutputOptions) -> dict[str, Any]:
  """Writes one clip (frames, C) at the model's rate to `path` as the options ask (the format is
  the option's, whatever `path`'s extension: callers may write to a temporary name).

  Returns:
    {"output_sample_rate_hz", "frames", "gain_db" (with loudness)}.
  """
  audio = np.asarray(audio, np.float32)
  if audio.ndim == 1:
    audio = audio[:, None]
  if audio.ndim != 2 or audio.shape[1] not in (1, 2):
    raise ValueError(f"audio must be (frames, 1 or 2), got shape {audio.shape}.")
  rate = int(options.output_rate_hz or model_rate_hz)
  audio = resample(audio, model_rate_hz, rate)
  info: dict[str, Any] = {}
  if options.loudness_dbfs is not None:
    audio, info["gain_db"] = normalize_loudness(audio, float(options.loudness_dbfs))
  sf.write(path, np.clip(audio, -1.0, 1.0), rate, format=options.file_format.upper(),
           subtype=options.resolved_subtype)
  return {"output_sample_rate_hz": rate, "frames": int(audio.shape[0]), **info}


def write_clip(path_without_extension: str, audio: np.ndarray, model_rate_hz: int,
               options: OutputOptions) -> dict[str, Any]:
  """`write_audio` to `path_without_extension` + "." + the format; adds "file" (basename)."""
  path = f"{path_without_extension}.{options.file_format}"
  return {"file": os.path.basename(path), **write_audio(path, audio, model_rate_hz, options)}


def record_units(log_likelihood_nats: float, mean_entropy_nats: float,
                 new_tokens: int) -> dict[str, float]:
  """A clip's scores as samples.json records them, units in the keys."""
  return {"log_likelihood_nats": float(log_likelihood_nats),
          "bits_per_token": -float(log_likelihood_nats) / (new_tokens * LN2),
          "mean_entropy_bits": float(mean_entropy_nats) / LN2}


def options_record(options: OutputOptions, model_rate_hz: int) -> dict[str, Any]:
  """samples.json / job.json fields describing how the files were written."""
  return {"model_sample_rate_hz": int(model_rate_hz),
          "output_sample_rate_hz": int(options.output_rate_hz or model_rate_hz),
          "format": options.file_format, "subtype": options.resolved_subtype,
          "loudness_target_dbfs_rms": options.loudness_dbfs}


def speed_report(*, generated_tokens: int, generated_frames: int, model_rate_hz: int,
                 wall_seconds: float, compile_seconds: float) -> dict[str, float]:
  """Tokens/s and real-time factor (seconds of audio per wall second), with and without
  compilation (`compile_seconds` from `CompileTimer`)."""
  audio_seconds = generated_frames / float(model_rate_hz)
  run_seconds = max(wall_seconds - compile_seconds, 1e-9)
  return {
      "wall_seconds": wall_seconds,
      "compile_seconds": compile_seconds,
      "tokens_per_second_incl_compile": generated_tokens / max(wall_seconds, 1e-9),
      "tokens_per_second_excl_compile": generated_tokens / run_seconds,
      "real_time_factor_incl_compile": audio_seconds / max(wall_seconds, 1e-9),
      "real_time_factor_excl_compile": audio_seconds / run_seconds,
  }


def format_speed(speed: dict[str, float]) -> str:
  """One phrase for the console from `speed_report` ({} = nothing generated)."""
  if not speed:
    return "nothing generated"
  return (f"{speed['tokens_per_second_excl_compile']:.0f} tokens/s, "
          f"{speed['real_time_factor_excl_compile']:.2f}x real time without compilation "
          f"({speed['tokens_per_second_incl_compile']:.0f} tokens/s, "
          f"{speed['real_time_factor_incl_compile']:.2f}x with {speed['compile_seconds']:.1f} s "
          "compiling)")


_LOCK = threading.Lock()
_ACTIVE: list["CompileTimer"] = []
_REGISTERED = [False]


def _on_duration(event: str, seconds: float, **kwargs) -> None:
  del kwargs
  # Tracing, lowering and backend compilation (which includes reading the persistent cache).
  if event.startswith("/jax/core/compile/"):
    with _LOCK:
      for timer in _ACTIVE:
        timer.seconds += float(seconds)


class CompileTimer:
  """Context manager summing the seconds JAX reports spending on tracing, lowering and compiling
  (or reading the persistent compilation cache) while it is open (`jax.monitoring` events of
  this process, from any thread)."""

  def __init__(self):
    self.seconds = 0.0

  def __enter__(self) -> "CompileTimer":
    from jax import monitoring  # pylint: disable=g-import-not-at-top
    with _LOCK:
      if not _REGISTERED[0]:
        monitoring.register_event_duration_secs_listener(_on_duration)
        _REGISTERED[0] = True
      _ACTIVE.append(self)
    return self

  def __exit__(self, *exc) -> None:
    with _LOCK:
      _ACTIVE.remove(self)
