"""Finding, validating and reading audio: files (WAV/FLAC/OGG/MP3 via soundfile) or a sequence.

Three layers, each usable on its own:
  * `find_audio_files(path)`: a folder (recursive), one file, or a list of files -> sorted paths.
  * `FileReader` / `SequenceReader`: probe an item (frames, rate, channels; raising `BadAudioError`
    for an unreadable, empty, truncated or non-audio item) and read frames by offset.
  * `AudioClipSource`: the random-access source of fixed-length clips that grain reads from.

Clips. Each item is cut into non-overlapping clips of `sample_len` frames (at the target rate)
starting at frame 0; the tail shorter than a clip is dropped (the reference's paper configs set
`drop_last: true`). An item shorter than one clip gives one clip padded at the end with digital
silence, so short utterances (SC09-like data) are kept rather than lost; the reference instead pads
such clips in its collate function and masks the padding out of the loss.

Channels. Mono configs average all channels (as the reference does). Stereo configs take two-
channel items as they are; a one-channel item is an error unless `mono_to_stereo == "duplicate"`;
more than two channels is an error. Rates. An item at another sample rate is resampled with
`scipy.signal.resample_poly` when `resample` is on, otherwise it is an error naming the file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
import re
import threading
from typing import Any, Sequence

from absl import logging
import numpy as np
import scipy.signal
import soundfile as sf

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MONO_TO_STEREO = ("error", "duplicate")
# Frames read at the end of a file while probing it, to catch truncated compressed streams.
_PROBE_TAIL_FRAMES = 1024
# Source frames read on each side of a clip before resampling, so the filter sees real context.
_RESAMPLE_MARGIN_FRAMES = 64
_MAX_SUBSTITUTIONS = 8
# dataset.verify_audio: what probing decodes before training.
VERIFY_AUDIO = ("tail", "full")
_VERIFY_BLOCK_FRAMES = 1 << 18
# Clip reads that failed and were substituted, by item name, since the last report (this process).
_SUBSTITUTIONS: collections.Counter = collections.Counter()
_WARNED_ITEMS: set = set()
_SUBSTITUTION_LOCK = threading.Lock()


def report_substitutions() -> dict[str, int]:
  """Logs one line with the substitutions since the last call, per item; returns and resets them.

  The first failure of each item is logged when it happens; later ones only count here (the
  trainer calls this at each evaluation). Counts cover reads in this process (with
  dataset.num_workers > 0 the worker processes log their own first failures).
  """
  with _SUBSTITUTION_LOCK:
    counts = dict(_SUBSTITUTIONS)
    _SUBSTITUTIONS.clear()
  if counts:
    items = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
    logging.warning("Substituted %d unreadable clip(s) since the last report (%s); "
                    "dataset.verify_audio='full' finds such files before training.",
                    sum(counts.values()), items)
  return counts


class BadAudioError(ValueError):
  """An item that cannot be used as audio: unreadable, empty, truncated or not audio."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
  """What probing an item found.

  Attributes:
    key: how the reader finds the item again (a path, or an index into a sequence).
    name: how messages name it (the path, or `item <index>`).
    frames: frames at the item's own sample rate (of the stretch used, see offset_frames).
    sample_rate: Hz.
    channels: channels in the item.
    offset_frames: where the stretch used starts in the item, at its own rate (0 = the whole
      item; a split by time uses parts of an item).
  """

  key: Any
  name: str
  frames: int
  sample_rate: int
  channels: int
  offset_frames: int = 0


def natural_sort_key(text: str) -> list:
  """Sort key that orders `a2` before `a10` (the reference sorts files with natsort)."""
  return [(0, int(part), "") if part.isdigit() else (1, 0, part)
          for part in re.split(r"(\d+)", text)]


def find_audio_files(path: "str | os.PathLike | Sequence[str | os.PathLike]") -> tuple[list[str], int]:
  """Lists the audio files to use, in natural sort order.

  Args:
    path: a folder (searched recursively for .wav/.flac/.ogg/.mp3, case-insensitive), a single file,
      or a list of files (each listed file is used whatever its extension).

  Returns:
    (paths, ignored): the sorted audio paths, and how many files in a folder were ignored because
    their extension is not an audio one (e.g. README.md).

  Raises:
    FileNotFoundError: if `path` (or a listed file) does not exist.
  """
  if isinstance(path, (list, tuple)):
    missing = [str(p) for p in path if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f"Audio file(s) not found: {', '.join(missing)}")
    return sorted((str(p) for p in path), key=natural_sort_key), 0
  path = os.fspath(path)
  if os.path.isfile(path):
    return [path], 0
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Audio path {path!r} does not exist (expected a folder or a file).")
  found, ignored = [], 0
  for root, dirs, files in os.walk(path, followlinks=True):
    dirs.sort()
    for name in files:
      if name.startswith("."):
        continue
      if name.lower().endswith(AUDIO_EXTENSIONS):
        found.append(os.path.join(root, name))
      else:
        ignored += 1
  return sorted(found, key=natural_sort_key), ignored


def _truncation_note(extra_info: str) -> str | None:
  """libsndfile's header log says when a WAV/AIFF data chunk or an Ogg stream is cut short."""
  for line in extra_info.splitlines():
    if line.startswith("data") and "should be" in line:
      return f"truncated: header declares more audio data than the file holds ({line.strip()})"
    if "lacks an end-of-stream" in line:
      return "truncated: the last Ogg page lacks an end-of-stream bit"
  return None


class FileReader:
  """Probes and reads audio files by frame offset (soundfile/libsndfile)."""

  def name(self, key: str) -> str:
    return str(key)

  def probe(self, key: str) -> AudioInfo:
    """Validates one file.

    Args:
      key: file path.

    Returns:
      Its `AudioInfo`.

    Raises:
      BadAudioError: naming the cause (empty, not audio, unreadable, no frames, truncated).
    """
    try:
      size_bytes = os.path.getsize(key)
    except OSError as e:
      raise BadAudioError(f"unreadable ({e.strerror or e})") from e
    if size_bytes == 0:
      raise BadAudioError("empty file (0 bytes)")
    try:
      info = sf.info(key)
    except sf.LibsndfileError as e:
      if "Format not recognised" in str(e) or "unknown format" in str(e).lower():
        raise BadAudioError(f"not a recognised audio format ({e})") from e
      raise BadAudioError(f"unreadable ({e})") from e
    except (OSError, RuntimeError) as e:
      raise BadAudioError(f"unreadable ({e})") from e
    note = _truncation_note(info.extra_info or "")
    if note:
      raise BadAudioError(note)
    if info.frames <= 0:
      raise BadAudioError("no audio frames")
    # Decoding the last frames catches FLAC/MP3 streams cut after a complete header.
    tail_frames = min(_PROBE_TAIL_FRAMES, info.frames)
    try:
      tail = self.read(key, info.frames - tail_frames, tail_frames)
    except BadAudioError as e:
      raise BadAudioError(f"truncated: {e}") from e
    del tail
    return AudioInfo(key=key, name=str(key), frames=int(info.frames),
                     sample_rate=int(info.samplerate), channels=int(info.channels))

  def read(self, key: str, start_frame: int, num_frames: int) -> np.ndarray:
    """Reads frames [start_frame, start_frame + num_frames) as float32 (num_frames, channels).

    Raises:
      BadAudioError: if the file cannot be decoded there or yields fewer frames than asked.
    """
    try:
      with sf.SoundFile(key) as f:
        if start_frame:
          f.seek(start_frame)
        data = f.read(num_frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
      raise BadAudioError(f"could not decode frames {start_frame}..{start_frame + num_frames} ({e})") from e
    if data.shape[0] != num_frames:
      raise BadAudioError(
          f"could only decode {data.shape[0]} of frames {start_frame}..{start_frame + num_frames}")
    check_finite(data, start_frame)
    return data


def check_finite(data: np.ndarray, start_frame: int = 0) -> None:
  """Raises BadAudioError if float audio (frames, channels) holds NaN or +-inf samples."""
  if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
    bad = ~np.isfinite(data)
    first = start_frame + int(np.argmax(bad.any(axis=1)))
    raise BadAudioError(f"non-finite samples: {int(np.isnan(data).sum())} NaN and "
                        f"{int(np.isinf(data).sum())} infinite, the first at frame {first}")


def _as_frames(item: Any) -> np.ndarray:
  """An item of a sequence source as a (frames, channels) array (still in its own dtype)."""
  if isinstance(item, dict):
    if "audio" not in item:
      raise BadAudioError(f"item is a dict without an 'audio' entry (keys: {sorted(item)})")
    item = item["audio"]
  array = np.asarray(item)
  if array.ndim == 1:
    array = array[:, None]
  if array.ndim != 2 or not (np.issubdtype(array.dtype, np.floating)
                             or np.issubdtype(array.dtype, np.integer)):
    raise BadAudioError(f"not audio: expected a numeric (frames,) or (frames, channels) array, "
                        f"got {array.dtype} {array.shape}")
  return array


def _to_float32(array: np.ndarray) -> np.ndarray:
  if np.issubdtype(array.dtype, np.integer):  # full-scale integer PCM -> [-1, 1)
    return (array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)).astype(np.float32)
  return array.astype(np.float32)


class SequenceReader:
  """Reads items of any random-access sequence (e.g. a TFDS `data_source`).

  Each item is an audio array (frames,) or (frames, channels), float or integer PCM, or a dict with
  such an array under "audio". Items carry no sample rate, so they are taken to be at
  `sample_rate` (the config's). Probing reads every item once to learn its length.
  """

  def __init__(self, data_source: Sequence[Any], sample_rate: int):
    self.data_source = data_source
    self.sample_rate = int(sample_rate)

  def name(self, key: int) -> str:
    return f"item {key}"

  def _load(self, key: int) -> np.ndarray:
    """Item `key` as (frames, channels); any failure becomes a BadAudioError naming its cause."""
    try:
      return _as_frames(self.data_source[key])
    except BadAudioError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise BadAudioError(f"unreadable ({type(e).__name__}: {e})") from e

  def probe(self, key: int) -> AudioInfo:
    array = self._load(key)
    if array.shape[0] == 0:
      raise BadAudioError("no audio frames")
    return AudioInfo(key=key, name=self.name(key), frames=int(array.shape[0]),
                     sample_rate=self.sample_rate, channels=int(array.shape[1]))

  def read(self, key: int, start_frame: int, num_frames: int) -> np.ndarray:
    array = self._load(key)
    data = array[start_frame:start_frame + num_frames]
    if data.shape[0] != num_frames:
      raise BadAudioError(f"holds {array.shape[0]} frames, fewer than the {start_frame + num_frames} read")
    data = _to_float32(data)
    check_finite(data, start_frame)
    return data


def check_compatible(info: AudioInfo, *, sample_rate: int, is_stereo: bool, resample: bool,
                     mono_to_stereo: str) -> None:
  """Raises ValueError, naming the item, if the config cannot use it as it is.

  Args:
    info: the probed item.
    sample_rate: target rate in Hz.
    is_stereo: whether the config wants two channels.
    resample: whether another rate may be resampled.
    mono_to_stereo: `error` or `duplicate` (what a stereo config does with a mono item).
  """
  if mono_to_stereo not in MONO_TO_STEREO:
    raise ValueError(f"dataset.mono_to_stereo={mono_to_stereo!r} is unknown; valid: "
                     f"{', '.join(MONO_TO_STEREO)}.")
  if info.sample_rate != sample_rate and not resample:
    raise ValueError(
        f"{info.name} is at {info.sample_rate} Hz but dataset.sample_rate={sample_rate} and "
        "dataset.resample=False; resample the file or set dataset.resample=True.")
  if is_stereo and info.channels == 1 and mono_to_stereo != "duplicate":
    raise ValueError(
        f"{info.name} is mono but the config is stereo (dataset.is_stereo=True); set "
        "dataset.mono_to_stereo='duplicate' to copy it to both channels, or remove it.")
  if is_stereo and info.channels > 2:
    raise ValueError(
        f"{info.name} has {info.channels} channels; a stereo config takes 1 or 2 channels.")


def fix_channels(audio: np.ndarray, *, is_stereo: bool) -> np.ndarray:
  """(frames, channels) -> (frames, 1) averaged (mono) or (frames, 2) (stereo; mono duplicated).

  Call `check_compatible` first: this does not re-check the channel rules.
  """
  if not is_stereo:
    return audio.mean(axis=1, keepdims=True, dtype=np.float32) if audio.shape[1] > 1 else audio
  if audio.shape[1] == 1:
    return np.repeat(audio, 2, axis=1)
  return audio[:, :2]


def _ratio(source_rate: int, target_rate: int) -> tuple[int, int]:
  gcd = math.gcd(int(source_rate), int(target_rate))
  return int(target_rate) // gcd, int(source_rate) // gcd


def resampled_frames(frames: int, source_rate: int, target_rate: int) -> int:
  """Whole frames at `target_rate` covered by `frames` frames at `source_rate`."""
  up, down = _ratio(source_rate, target_rate)
  return frames * up // down


def resample_audio(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
  """Polyphase resampling of (frames, channels) float32 along frames (scipy.signal.resample_poly)."""
  if source_rate == target_rate:
    return audio
  up, down = _ratio(source_rate, target_rate)
  return scipy.signal.resample_poly(audio, up, down, axis=0).astype(np.float32)


def read_resampled(reader, info: AudioInfo, start_frame: int, num_frames: int,
                   target_rate: int) -> np.ndarray:
  """Reads frames [start, start + num) on the target-rate time axis.

  Args:
    reader: a `FileReader` or `SequenceReader`.
    info: the probed item.
    start_frame: first frame, counted at `target_rate`.
    num_frames: frames to return, at `target_rate`.
    target_rate: Hz.

  Returns:
    float32 (num_frames, info.channels). Frames past the end of the item are digital silence.
  """
  if info.sample_rate == target_rate:
    available = max(0, min(num_frames, info.frames - start_frame))
    data = reader.read(info.key, info.offset_frames + start_frame, available)
  else:
    up, down = _ratio(info.sample_rate, target_rate)
    # Start on a multiple of `down` source frames so the output grid lines up with frame `start`.
    first_source = max(0, (start_frame * down) // up - _RESAMPLE_MARGIN_FRAMES)
    first_source -= first_source % down
    end_source = min(info.frames, -(-(start_frame + num_frames) * down // up) + _RESAMPLE_MARGIN_FRAMES)
    source = reader.read(info.key, info.offset_frames + first_source, end_source - first_source)
    offset = start_frame - first_source // down * up
    data = resample_audio(source, info.sample_rate, target_rate)[offset:offset + num_frames]
  if data.shape[0] < num_frames:
    data = np.concatenate([data, np.zeros((num_frames - data.shape[0], data.shape[1]), np.float32)])
  return data


def load_audio(path: str, *, sample_rate: int, is_stereo: bool, resample: bool = True,
               mono_to_stereo: str = "error") -> np.ndarray:
  """Loads one whole file, validated, at `sample_rate`, with the config's channels.

  Args:
    path: an audio file.
    sample_rate: target rate in Hz.
    is_stereo: return 2 channels (else 1, averaged).
    resample: resample another rate (else it is a ValueError).
    mono_to_stereo: `error` or `duplicate`.

  Returns:
    float32 (frames, 1 or 2).

  Raises:
    FileNotFoundError: if `path` does not exist.
    BadAudioError: (a ValueError) if the file is unusable, naming it and the cause.
    ValueError: if the file does not fit the config (rate, channels).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Audio file {path!r} does not exist.")
  reader = FileReader()
  try:
    info = reader.probe(path)
  except BadAudioError as e:
    raise BadAudioError(f"{path}: {e}") from e
  check_compatible(info, sample_rate=sample_rate, is_stereo=is_stereo, resample=resample,
                   mono_to_stereo=mono_to_stereo)
  audio = reader.read(path, 0, info.frames)
  audio = resample_audio(audio, info.sample_rate, sample_rate)
  return fix_channels(audio, is_stereo=is_stereo)


def decode_fully(reader, info: AudioInfo) -> None:
  """Decodes every frame of a probed item once, in blocks (memory stays small).

  Raises:
    BadAudioError: at the first block that does not decode or holds non-finite samples.
  """
  for start in range(0, info.frames, _VERIFY_BLOCK_FRAMES):
    reader.read(info.key, start, min(_VERIFY_BLOCK_FRAMES, info.frames - start))


def _check_item(reader, key, verify: str) -> AudioInfo:
  info = reader.probe(key)
  if verify == "full":
    decode_fully(reader, info)
  return info


def probe_all(reader, keys: Sequence[Any], *, description: str, verify: str = "tail",
              num_threads: int | None = None) -> list[AudioInfo]:
  """Probes every item, skipping bad ones with one warning each and one summary line.

  Args:
    reader: a `FileReader` or `SequenceReader`.
    keys: the items to probe.
    description: what the summary line calls the source (e.g. the folder).
    verify: `tail` (header and last frames: fast) or `full` (decode every frame once, so damage
      anywhere in a file is found now rather than mid-run).
    num_threads: parallel probes (default: up to 8, by CPU count); libsndfile decodes without
      holding the GIL.

  Returns:
    The `AudioInfo` of every usable item, in the order of `keys`.
  """
  if verify not in VERIFY_AUDIO:
    raise ValueError(f"dataset.verify_audio={verify!r} is unknown; valid: "
                     f"{', '.join(VERIFY_AUDIO)}.")
  threads = num_threads or min(8, os.cpu_count() or 1)

  def check(key):
    try:
      return _check_item(reader, key, verify)
    except BadAudioError as e:
      return e

  if threads > 1 and len(keys) > 1:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      results = list(pool.map(check, keys))
  else:
    results = [check(key) for key in keys]
  usable, skipped = [], {}
  for key, result in zip(keys, results):
    if isinstance(result, AudioInfo):
      usable.append(result)
    else:
      reason = str(result)
      logging.warning("Skipping audio %s: %s", reader.name(key), reason)
      kind = reason.split(" (")[0].split(":")[0]
      skipped[kind] = skipped.get(kind, 0) + 1
  if skipped:
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
    logging.warning("Audio source %s: %d usable, skipped %d bad (%s).", description, len(usable),
                    sum(skipped.values()), kinds)
  else:
    logging.info("Audio source %s: %d usable, none skipped.", description, len(usable))
  return usable


class AudioClipSource:
  """Random access to fixed-length clips of a list of probed items (a grain data source).

  `source[i]` is clip i: float32 (sample_len, 1 or 2) at `sample_rate`. Clips are numbered item
  by item, each item's clips in time order. A read that fails here (a file changed or broke after
  probing) is logged and replaced by the first clip of the next item that reads, so one bad file
  never stops a long run; the replacement depends only on i, keeping runs deterministic.
  """

  def __init__(self, reader, infos: Sequence[AudioInfo], *, sample_len: int, sample_rate: int,
               is_stereo: bool):
    """Indexes the clips.

    Args:
      reader: a `FileReader` or `SequenceReader`.
      infos: probed, compatible items (see `check_compatible`).
      sample_len: frames per clip at `sample_rate`.
      sample_rate: target rate in Hz.
      is_stereo: clips get 2 channels (else 1).
    """
    self.reader = reader
    self.infos = list(infos)
    self.sample_len = int(sample_len)
    self.sample_rate = int(sample_rate)
    self.is_stereo = bool(is_stereo)
    counts = [max(1, resampled_frames(i.frames, i.sample_rate, sample_rate) // self.sample_len)
              for i in self.infos]
    self.clips_per_item = np.asarray(counts, dtype=np.int64)
    self.first_clip = np.concatenate([[0], np.cumsum(self.clips_per_item)]).astype(np.int64)
    self.num_padded_items = sum(
        resampled_frames(i.frames, i.sample_rate, sample_rate) < self.sample_len for i in self.infos)
    self.substitutions = 0

  def __len__(self) -> int:
    return int(self.first_clip[-1])

  def locate(self, index: int) -> tuple[int, int]:
    """(item index, start frame at the target rate) of clip `index`."""
    if not 0 <= index < len(self):
      raise IndexError(f"clip index {index} out of range [0, {len(self)})")
    item = int(np.searchsorted(self.first_clip, index, side="right") - 1)
    return item, int(index - self.first_clip[item]) * self.sample_len

  def read_clip(self, index: int) -> np.ndarray:
    """Clip `index` without substitution: float32 (sample_len, 1 or 2); raises on failure."""
    item, start = self.locate(index)
    info = self.infos[item]
    data = read_resampled(self.reader, info, start, self.sample_len, self.sample_rate)
    return fix_channels(data, is_stereo=self.is_stereo)

  def __getitem__(self, index: int) -> np.ndarray:
    index = int(index)
    try:
      return self.read_clip(index)
    except Exception as e:  # pylint: disable=broad-except
      failed_item, _ = self.locate(index)
      failed_name = self.infos[failed_item].name
      with _SUBSTITUTION_LOCK:
        first_time = failed_name not in _WARNED_ITEMS
        _WARNED_ITEMS.add(failed_name)
        _SUBSTITUTIONS[failed_name] += 1
      if first_time:  # one warning per item; later failures are counted (report_substitutions).
        logging.warning("Reading clip %d of %s failed (%s); substituting another clip (further "
                        "failures of this file are counted, not logged).", index, failed_name, e)
    num_items = len(self.infos)
    for step in range(1, min(num_items, _MAX_SUBSTITUTIONS + 1)):
      item = (failed_item + step) % num_items
      try:
        clip = self.read_clip(int(self.first_clip[item]))
      except Exception:  # pylint: disable=broad-except
        continue
      self.substitutions += 1
      return clip
    raise RuntimeError(f"Clip {index} of {self.infos[failed_item].name} and every substitute tried "
                       "failed to read; the audio source is no longer readable.")
