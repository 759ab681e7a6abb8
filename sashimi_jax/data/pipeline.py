"""The grain input pipeline: split by file, shard per process, shuffle, transform, batch.

    items (sorted) -> probe (skip bad) -> split by item -> clips of sample_len frames
      -> [this process's shard] -> shuffle(seed) -> repeat -> encode_clip -> {x, y} -> batch

`encode_clip` is the whole per-clip transform (normalize -> interleave -> quantize) and
`decode_tokens` its inverse (up to quantization and the lost normalization), so sampling decodes
with exactly the definitions training encoded with. Training batches come from a grain
`DatasetIterator`: `get_state()`/`set_state()` (and Orbax through `grain.checkpoint`) resume it
exactly, with or without worker processes.

Splits (by item, the reference's order): sorted items (natural order, as the reference's natsort)
are cut into train | valid | test with `round(n * fraction)` items for valid and test; a split
whose fraction is > 0 gets at least one item, and training keeps at least one. With fewer items
than the non-empty splits need (one or two files), every item is cut by time instead: its first
`1 - valid_fraction - test_fraction` of frames train, the next `valid_fraction` validate, the last
`test_fraction` test (`split_by_time`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from absl import flags
from absl import logging
import grain
import jax
import numpy as np

from sashimi_jax.data import audio
from sashimi_jax.data import quantize
from sashimi_jax.data import stereo
from sashimi_jax.data import tfds_source

DEMO_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "demo_data")
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
# Batches each reading thread / worker keeps ready; small, because one batch can be many MB.
_PREFETCH_BATCHES = 2


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """The dataset config as plain, picklable values (what worker processes receive).

  Build it with `DataSettings.from_config(dataset_cfg)`; fields mirror `config.dataset`.
  """

  path: Any
  sample_rate: int
  sample_len: int
  is_stereo: bool
  interleaving_strategy: stereo.Strategy | None
  bits: int
  quantization: str
  normalize: bool
  resample: bool
  mono_to_stereo: str
  valid_fraction: float
  test_fraction: float
  num_workers: int
  verify_audio: str = "tail"
  tfds_name: str = ""
  tfds_split: str = "train"
  tfds_data_dir: str = ""
  tfds_audio_key: str = "audio"

  @classmethod
  def from_config(cls, dataset_cfg) -> "DataSettings":
    """Reads and validates a `config.dataset` ConfigDict (or returns a DataSettings unchanged)."""
    if isinstance(dataset_cfg, DataSettings):
      return dataset_cfg
    get = dataset_cfg.get if hasattr(dataset_cfg, "get") else (
        lambda k, d=None: getattr(dataset_cfg, k, d))
    is_stereo = bool(get("is_stereo", False))
    strategy = (stereo.parse_strategy(get("interleaving_strategy", "temporal"))
                if is_stereo else None)
    settings = cls(
        path=get("path", ""),
        sample_rate=int(get("sample_rate")),
        sample_len=int(get("sample_len")),
        is_stereo=is_stereo,
        interleaving_strategy=strategy,
        bits=int(get("bits", 8)),
        quantization=str(get("quantization", "mu-law")),
        normalize=bool(get("normalize", False)),
        resample=bool(get("resample", True)),
        mono_to_stereo=str(get("mono_to_stereo", "error")),
        valid_fraction=float(get("valid_fraction", 0.06)),
        test_fraction=float(get("test_fraction", 0.06)),
        num_workers=int(get("num_workers", 0)),
        verify_audio=str(get("verify_audio", "tail")),
        tfds_name=str(get("tfds_name", "") or ""),
        tfds_split=str(get("tfds_split", "train") or "train"),
        tfds_data_dir=str(get("tfds_data_dir", "") or ""),
        tfds_audio_key=str(get("tfds_audio_key", "audio") or "audio"),
    )
    quantize.vocab_size(settings.bits)  # validates bits
    if settings.quantization not in quantize.METHODS:
      raise ValueError(f"dataset.quantization={settings.quantization!r} is unknown; valid: "
                       f"{', '.join(quantize.METHODS)}.")
    if settings.sample_len < 1 or settings.sample_rate < 1:
      raise ValueError(f"dataset.sample_len={settings.sample_len} and dataset.sample_rate="
                       f"{settings.sample_rate} must be positive.")
    if settings.mono_to_stereo not in audio.MONO_TO_STEREO:
      raise ValueError(f"dataset.mono_to_stereo={settings.mono_to_stereo!r} is unknown; valid: "
                       f"{', '.join(audio.MONO_TO_STEREO)}.")
    for name in ("valid_fraction", "test_fraction"):
      if not 0.0 <= getattr(settings, name) < 1.0:
        raise ValueError(f"dataset.{name}={getattr(settings, name)} must be in [0, 1).")
    if settings.valid_fraction + settings.test_fraction >= 1.0:
      raise ValueError("dataset.valid_fraction + dataset.test_fraction must be < 1.")
    if settings.verify_audio not in audio.VERIFY_AUDIO:
      raise ValueError(f"dataset.verify_audio={settings.verify_audio!r} is unknown; valid: "
                       f"{', '.join(audio.VERIFY_AUDIO)}.")
    if settings.num_workers < 0:
      raise ValueError(f"dataset.num_workers={settings.num_workers} must be >= 0.")
    return settings

  @property
  def num_channels(self) -> int:
    return stereo.num_channels(self.is_stereo)


def encode_clip(clip, dataset_cfg) -> np.ndarray:
  """The per-clip transform: [normalize] -> interleave (stereo) -> quantize.

  Args:
    clip: float array (L, C) (C = 2 for stereo, 1 for mono; a mono clip may also be (L,)).
    dataset_cfg: `config.dataset` or `DataSettings`.

  Returns:
    int32 tokens (T,), T = L (mono) or 2 L (stereo), in [0, 2**bits).
  """
  s = DataSettings.from_config(dataset_cfg)
  clip = np.asarray(clip)
  if clip.ndim == 1 and not s.is_stereo:
    clip = clip[:, None]
  if clip.ndim != 2 or clip.shape[1] != s.num_channels:
    raise ValueError(f"encode_clip expects a clip of shape (L, {s.num_channels}) for a "
                     f"{'stereo' if s.is_stereo else 'mono'} config, got {clip.shape}.")
  if s.normalize:
    clip = quantize.normalize(clip)
  stream = stereo.interleave(clip, s.interleaving_strategy) if s.is_stereo else clip[:, 0]
  return quantize.encode(stream, s.bits, s.quantization)


def decode_tokens(tokens, dataset_cfg):
  """Inverse of `encode_clip` up to quantization (normalization cannot be undone).

  Args:
    tokens: integer array (..., T), numpy or jax.
    dataset_cfg: `config.dataset` or `DataSettings`.

  Returns:
    float32 (..., L, C) in [-1, 1], C = 2 (stereo) or 1 (mono).
  """
  s = DataSettings.from_config(dataset_cfg)
  samples = quantize.decode(tokens, s.bits, s.quantization)
  if s.is_stereo:
    return stereo.deinterleave(samples, s.interleaving_strategy)
  return samples[..., None]


def shift_right(tokens: np.ndarray, bits: int) -> np.ndarray:
  """Model inputs from targets: (..., T) -> (..., T), `x[0] = zero_token`, `x[t] = y[t - 1]`."""
  x = np.roll(tokens, 1, axis=-1)
  x[..., 0] = quantize.zero_token(bits)
  return x


class EncodeExample(grain.transforms.Map):
  """clip float32 (L, C) -> {"x": int32 (T,), "y": int32 (T,)} (picklable for workers)."""

  def __init__(self, settings: DataSettings):
    self.settings = settings

  def map(self, clip: np.ndarray) -> dict[str, np.ndarray]:
    y = encode_clip(clip, self.settings)
    return {"x": shift_right(y, self.settings.bits), "y": y}


def split_items(items: Sequence[Any], split: str, *, valid_fraction: float,
                test_fraction: float) -> list[Any]:
  """The items of one split, cut from the ordered `items` as train | valid | test.

  Args:
    items: usable items in their fixed order.
    split: `train`, `valid` (or `validation`) or `test`.
    valid_fraction: fraction of items for validation (0 = no validation split).
    test_fraction: fraction of items for test (0 = no test split).

  Returns:
    The items of `split` (empty only if its fraction is 0).

  Raises:
    ValueError: for an unknown split, or too few items to give every non-empty split one.
  """
  if split not in _SPLIT_ALIASES:
    raise ValueError(f"Unknown split {split!r}; valid: {', '.join(_SPLIT_ALIASES)}.")
  split = _SPLIT_ALIASES[split]
  n = len(items)
  counts = {}
  for name, fraction in (("valid", valid_fraction), ("test", test_fraction)):
    counts[name] = max(1, round(n * fraction)) if fraction > 0 else 0
  needed = 1 + (counts["valid"] > 0) + (counts["test"] > 0)
  if n < needed:
    raise ValueError(
        f"Only {n} usable audio item(s), but train/valid/test fractions need at least {needed} "
        "(one per non-empty split); add files or set dataset.valid_fraction/test_fraction to 0.")
  while n - counts["valid"] - counts["test"] < 1:  # keep one training item
    bigger = "valid" if counts["valid"] >= counts["test"] else "test"
    counts[bigger] -= 1
  n_train = n - counts["valid"] - counts["test"]
  bounds = {"train": (0, n_train), "valid": (n_train, n_train + counts["valid"]),
            "test": (n_train + counts["valid"], n)}
  lo, hi = bounds[split]
  return list(items[lo:hi])


def _probe_source(s: DataSettings, source: Any):
  """Finds and probes the items of `source` (or `s.tfds_name`, or `s.path`): (reader, usable
  infos, description)."""
  where = s.path if source is None else source
  if source is None and s.tfds_name:
    where = tfds_source.TfdsAudio(s.tfds_name, split=s.tfds_split, data_dir=s.tfds_data_dir,
                                  audio_key=s.tfds_audio_key)
  if isinstance(where, str) and where == "":
    where = DEMO_DATA_DIR
  is_file_list = isinstance(where, (list, tuple)) and all(
      isinstance(p, (str, os.PathLike)) for p in where)
  if isinstance(where, (str, os.PathLike)) or is_file_list:
    paths, ignored = audio.find_audio_files(where)
    reader = audio.FileReader()
    keys = paths
    description = repr(os.fspath(where)) if not isinstance(where, (list, tuple)) else (
        f"[{len(where)} listed files]")
    if ignored:
      logging.info("Audio source %s: ignored %d file(s) without an audio extension (%s).",
                   description, ignored, ", ".join(audio.AUDIO_EXTENSIONS))
  elif hasattr(where, "__len__") and hasattr(where, "__getitem__"):
    reader = audio.SequenceReader(where, getattr(where, "sample_rate", None) or s.sample_rate)
    keys = list(range(len(where)))
    description = f"{where!r} of {len(keys)} items" if isinstance(
        where, tfds_source.TfdsAudio) else f"{type(where).__name__} of {len(keys)} items"
  else:
    raise ValueError(f"dataset.path must be a folder, a file or a list of files, or pass a "
                     f"sequence of audio arrays as `source`; got {type(where).__name__}.")
  infos = audio.probe_all(reader, keys, description=description, verify=s.verify_audio)
  if not infos:
    if not keys:
      raise ValueError(f"No audio in {description}: no file with an audio extension "
                       f"({', '.join(audio.AUDIO_EXTENSIONS)}) was found.")
    raise ValueError(f"No usable audio in {description}: {len(keys)} candidate item(s) "
                     f"({', '.join(audio.AUDIO_EXTENSIONS)}), none readable; see the warnings "
                     "above.")
  for info in infos:
    audio.check_compatible(info, sample_rate=s.sample_rate, is_stereo=s.is_stereo,
                           resample=s.resample, mono_to_stereo=s.mono_to_stereo)
  return reader, infos, description


def split_by_time(infos: Sequence[audio.AudioInfo], *, valid_fraction: float,
                  test_fraction: float) -> dict[str, list[audio.AudioInfo]]:
  """Cuts every item in time into train | valid | test parts of its frames (too few items).

  Each part is an `AudioInfo` whose `offset_frames`/`frames` select that stretch of the item, so
  no clip (nor the resampling filter's context) crosses from one split into another.

  Raises:
    ValueError: if an item is too short to give every non-empty split one frame.
  """
  parts = {name: [] for name in SPLITS}
  for info in infos:
    valid = round(info.frames * valid_fraction) if valid_fraction > 0 else 0
    test = round(info.frames * test_fraction) if test_fraction > 0 else 0
    valid, test = (max(1, valid) if valid_fraction > 0 else 0), (
        max(1, test) if test_fraction > 0 else 0)
    train = info.frames - valid - test
    if train < 1:
      raise ValueError(f"{info.name} has only {info.frames} frames: too short to split by time "
                       "into train/valid/test; use a longer file or set dataset.valid_fraction/"
                       "test_fraction to 0.")
    start = 0
    for name, frames in (("train", train), ("valid", valid), ("test", test)):
      if frames:
        first_s, last_s = start / info.sample_rate, (start + frames) / info.sample_rate
        parts[name].append(dataclasses.replace(
            info, name=f"{info.name} [{first_s:.2f}-{last_s:.2f} s]",
            offset_frames=info.offset_frames + start, frames=frames))
      start += frames
  return parts


def split_sources(dataset_cfg, *, source: Any = None) -> dict[str, audio.AudioClipSource]:
  """Finds, probes and validates the data once and splits it: {split: AudioClipSource}.

  Items are split by file (`split_items`); with fewer items than the non-empty splits need
  (e.g. one file), every item is split by time instead (`split_by_time`), with a warning.
  The returned dict also has the key "by_time" (bool).

  Raises:
    FileNotFoundError: missing path. ValueError: no usable audio, or a file the config cannot
      use. All raised here, before anything is compiled.
  """
  s = DataSettings.from_config(dataset_cfg)
  reader, infos, description = _probe_source(s, source)
  fractions = dict(valid_fraction=s.valid_fraction, test_fraction=s.test_fraction)
  needed = 1 + (s.valid_fraction > 0) + (s.test_fraction > 0)
  by_time = len(infos) < needed
  if by_time:
    logging.warning(
        "Audio source %s: %d item(s) for %d non-empty splits; splitting each item by time "
        "instead (first %.0f%% train, then %.0f%% valid, %.0f%% test).", description, len(infos),
        needed, 100 * (1 - s.valid_fraction - s.test_fraction), 100 * s.valid_fraction,
        100 * s.test_fraction)
    chosen = split_by_time(infos, **fractions)
  else:
    chosen = {name: split_items(infos, name, **fractions) for name in SPLITS}
  out = {}
  for name in SPLITS:
    clips = audio.AudioClipSource(reader, chosen[name], sample_len=s.sample_len,
                                  sample_rate=s.sample_rate, is_stereo=s.is_stereo)
    logging.info("Split %s: %d item(s), %d clip(s) of %d frames (%d short item(s) padded).",
                 name, len(chosen[name]), len(clips), s.sample_len, clips.num_padded_items)
    out[name] = clips
  out["by_time"] = by_time
  return out


def build_clip_source(dataset_cfg, split: str, *, source: Any = None) -> audio.AudioClipSource:
  """The `AudioClipSource` of one split (see `split_sources`).

  Args:
    dataset_cfg: `config.dataset` or `DataSettings`. `path` "" means the bundled demo data.
    split: `train`, `valid`/`validation` or `test`.
    source: optional override of `dataset.path` / `dataset.tfds_name`: a folder, a file, a
      list of files, or a random-access sequence of audio arrays (e.g. a TFDS `data_source`).
  """
  if split not in _SPLIT_ALIASES:
    raise ValueError(f"Unknown split {split!r}; valid: {', '.join(_SPLIT_ALIASES)}.")
  return split_sources(dataset_cfg, source=source)[_SPLIT_ALIASES[split]]


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"process_index={index} must be in [0, process_count={count}).")
  return index, count


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  """Examples per process: global_batch_size // process_count (must divide exactly)."""
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of the "
                     f"process count {process_count}.")
  return global_batch_size // process_count


def _worker_init(worker_index: int, worker_count: int) -> None:
  """Marks absl flags parsed (with their defaults) if nothing parsed them: grain reads flags."""
  del worker_index, worker_count
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def create_train_iterator(dataset_cfg, *, global_batch_size: int, seed: int,
                          process_index: int | None = None, process_count: int | None = None,
                          source: Any = None, num_workers: int | None = None,
                          clips: audio.AudioClipSource | None = None):
  """The infinite, shuffled, sharded training iterator.

  Args:
    dataset_cfg: `config.dataset` (or `DataSettings`).
    global_batch_size: examples per step over all processes.
    seed: shuffle seed (each epoch is reshuffled deterministically from it).
    process_index: this process's shard (default `jax.process_index()`; tests override it).
    process_count: number of shards (default `jax.process_count()`).
    source: optional override of `dataset.path` (see `build_clip_source`).
    num_workers: override of `dataset.num_workers` (grain worker processes; 0 = in-process).
    clips: the training split already built by `split_sources` (skips probing again).

  Returns:
    A grain `DatasetIterator` yielding {"x": int32 (B, T), "y": int32 (B, T)} with
    B = global_batch_size // process_count; `get_state()`/`set_state()` resume it exactly, and
    `grain.checkpoint.CheckpointSave/CheckpointRestore` save it with Orbax.
  """
  s = DataSettings.from_config(dataset_cfg)
  index, count = _process_shard(process_index, process_count)
  batch_size = host_batch_size(global_batch_size, count)
  if clips is None:
    clips = build_clip_source(s, "train", source=source)
  if len(clips) < count:
    raise ValueError(f"The training split has {len(clips)} clip(s), fewer than the {count} "
                     "processes that each need a shard.")
  workers = s.num_workers if num_workers is None else int(num_workers)
  ds = grain.MapDataset.source(clips)[index::count]
  ds = ds.shuffle(seed=int(seed)).repeat().map(EncodeExample(s))
  ds = ds.batch(batch_size, drop_remainder=True)
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if workers else 2,
                                                 prefetch_buffer_size=_PREFETCH_BATCHES))
  if workers > 0:
    # grain reads absl flags when it starts workers; outside app.run (tests, notebooks) nothing
    # has parsed them, so accept the defaults.
    _worker_init(0, workers)
    iter_ds = iter_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=_PREFETCH_BATCHES),
        worker_init_fn=_worker_init)
  return iter(iter_ds)


class EvalBatches(Sequence):
  """A finite, deterministic, re-iterable sequence of host-local evaluation batches.

  Batch b of process p holds clips [b G + p B, b G + (p + 1) B) of the split (G global batch
  size, B = G // process_count), so every process sees the same number of batches and together
  they cover each global batch once. A split with fewer clips than one global batch is cycled to
  fill one batch.
  """

  def __init__(self, clips: audio.AudioClipSource, settings: DataSettings, *,
               global_batch_size: int, max_batches: int | None, process_index: int,
               process_count: int):
    self.clips = clips
    self.encode = EncodeExample(settings)
    self.global_batch_size = global_batch_size
    self.batch_size = host_batch_size(global_batch_size, process_count)
    self.offset = process_index * self.batch_size
    available = max(1, len(clips) // global_batch_size)
    self.num_batches = available if not max_batches or max_batches < 0 else min(available, max_batches)

  def __len__(self) -> int:
    return self.num_batches

  def __getitem__(self, b: int) -> dict[str, np.ndarray]:
    if isinstance(b, slice):
      return [self[i] for i in range(*b.indices(len(self)))]
    if not -len(self) <= b < len(self):
      raise IndexError(f"eval batch {b} out of range [0, {len(self)})")
    b %= len(self)
    first = b * self.global_batch_size + self.offset
    examples = [self.encode.map(self.clips[(first + i) % len(self.clips)])
                for i in range(self.batch_size)]
    return {k: np.stack([e[k] for e in examples]) for k in ("x", "y")}


def create_eval_batches(dataset_cfg, *, split: str, global_batch_size: int,
                        max_batches: int | None = None, process_index: int | None = None,
                        process_count: int | None = None, source: Any = None,
                        clips: audio.AudioClipSource | None = None) -> EvalBatches:
  """Finite, deterministic (unshuffled) batches of one split.

  Args:
    dataset_cfg: `config.dataset` (or `DataSettings`).
    split: `valid`/`validation`, `test` or `train`.
    global_batch_size: examples per batch over all processes.
    max_batches: at most this many batches (None or <= 0: every full batch of the split).
    process_index, process_count: shard overrides, as in `create_train_iterator`.
    source: optional override of `dataset.path`.
    clips: the split already built by `split_sources` (skips probing again).

  Returns:
    `EvalBatches`: a sequence of {"x": int32 (B, T), "y": int32 (B, T)},
    B = global_batch_size // process_count.
  """
  s = DataSettings.from_config(dataset_cfg)
  index, count = _process_shard(process_index, process_count)
  host_batch_size(global_batch_size, count)
  if clips is None:
    clips = build_clip_source(s, split, source=source)
  if not len(clips):
    raise ValueError(f"Split {split!r} is empty (its fraction is 0); evaluate another split.")
  return EvalBatches(clips, s, global_batch_size=global_batch_size, max_batches=max_batches,
                     process_index=index, process_count=count)
