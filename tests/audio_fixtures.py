"""Helpers that write small audio fixtures (WAV/FLAC/OGG/MP3, good and broken) at test time."""

import os

import ml_collections
import numpy as np
import soundfile as sf


def tone(num_frames: int, channels: int, *, seed: int = 0, sample_rate: int = 8000) -> np.ndarray:
  """Deterministic float32 (num_frames, channels) test signal: a sine per channel plus noise.

  The right channel is quieter than the left so joint scaling can be checked.
  """
  rng = np.random.default_rng(seed)
  t = np.arange(num_frames) / sample_rate
  columns = []
  for c in range(channels):
    freq = 220.0 * (1 + c) * (1 + seed % 5)
    columns.append((0.5 / (1 + 2 * c)) * np.sin(2 * np.pi * freq * t)
                   + 0.02 * rng.standard_normal(num_frames))
  return np.stack(columns, axis=-1).astype(np.float32)


def write_audio(path, num_frames: int, *, channels: int = 2, sample_rate: int = 8000,
                seed: int = 0, subtype: str | None = None) -> np.ndarray:
  """Writes a tone to `path` (format from its extension) and returns the float32 data written."""
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  data = tone(num_frames, channels, seed=seed, sample_rate=sample_rate)
  sf.write(str(path), data, sample_rate, subtype=subtype)
  return data


def write_index_wav(path, num_frames: int, *, channels: int = 2, sample_rate: int = 8000,
                    file_id: int = 0) -> None:
  """A float32 WAV whose left channel holds `file_id` + frame / 2**20 (exactly recoverable).

  Reading any clip then tells which file and frame it came from.
  """
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  frames = np.arange(num_frames, dtype=np.float64)
  left = (file_id + frames / 2**20) / 1000.0
  data = np.stack([left] + [-left] * (channels - 1), axis=-1).astype(np.float32)
  sf.write(str(path), data, sample_rate, subtype="FLOAT")


def decode_index(value: float) -> tuple[int, int]:
  """Inverse of the labelling in `write_index_wav`: (file_id, frame)."""
  scaled = float(value) * 1000.0
  file_id = int(np.floor(scaled + 1e-9))
  return file_id, int(round((scaled - file_id) * 2**20))


def truncate(path, keep_fraction: float) -> None:
  """Chops the end off a file, keeping `keep_fraction` of its bytes."""
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: int(len(data) * keep_fraction)])


def make_folder(root, num_files: int, *, num_frames: int = 4000, channels: int = 2,
                sample_rate: int = 8000, ext: str = "wav") -> list[str]:
  """A folder of `num_files` good files named a0.ext, a1.ext, ...; returns their paths."""
  paths = []
  for i in range(num_files):
    path = os.path.join(str(root), f"a{i}.{ext}")
    write_audio(path, num_frames, channels=channels, sample_rate=sample_rate, seed=i)
    paths.append(path)
  return paths


def dataset_config(path="", **overrides) -> ml_collections.ConfigDict:
  """A small `config.dataset` with every field the pipeline reads."""
  cfg = ml_collections.ConfigDict(dict(
      path=str(path), sample_rate=8000, sample_len=256, is_stereo=True,
      interleaving_strategy="temporal", bits=8, quantization="mu-law", normalize=True,
      resample=True, mono_to_stereo="error", valid_fraction=0.2, test_fraction=0.2,
      num_workers=0))
  cfg.update(overrides)
  return cfg
