"""Prompts for sampling jobs: which files, how much of each, and their tokens in the model's layout.

A prompt is read like training data (same checks and named skips), encoded like a training clip,
and laid out in the order of the clip the model generates (`data/layout.py`).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

from absl import logging
import numpy as np

from sashimi_jax import config as config_lib
from sashimi_jax.data import audio
from sashimi_jax.data import layout
from sashimi_jax.data import pipeline
from sashimi_jax.data import stereo

PROMPT_MONO = ("duplicate", "error")
LIST_EXTENSIONS = (".txt", ".lst", ".list")


def prompt_paths(spec: str) -> list[str]:
  """The prompt files a --prompt value names, in order.

  Args:
    spec: an audio file; a folder (its audio files, recursively, in natural sort order); or a
      list file (.txt/.lst/.list): one path per line, relative to the list's folder, blank lines
      and lines starting with '#' ignored.

  Raises:
    FileNotFoundError: naming what is missing.
  """
  if os.path.isdir(spec):
    paths, ignored = audio.find_audio_files(spec)
    if ignored:
      logging.info("--prompt %s: ignored %d non-audio files.", spec, ignored)
    if not paths:
      raise FileNotFoundError(f"--prompt {spec}: the folder holds no audio files.")
    return paths
  if not os.path.isfile(spec):
    raise FileNotFoundError(f"--prompt {spec} does not exist (expected an audio file, a folder "
                            "or a list file).")
  if not spec.lower().endswith(LIST_EXTENSIONS):
    return [spec]
  base = os.path.dirname(os.path.abspath(spec))
  with open(spec, encoding="utf-8") as f:
    lines = [l.strip() for l in f]
  paths = [os.path.join(base, l) for l in lines if l and not l.startswith("#")]
  if not paths:
    raise FileNotFoundError(f"--prompt {spec}: the list names no files.")
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"--prompt {spec}: listed file(s) not found: {', '.join(missing)}")
  return paths


def max_prompt_frames(config) -> int:
  """The longest prompt the model's convolution-mode prefill takes: one training clip minus one
  coarsest block (prefill pads the prompt by up to one block and the kernels cover one clip)."""
  return max(1, int(config.dataset.sample_len) - config_lib.pool_factor(config.model))


def default_prompt_frames(config, clip_frames: int) -> int:
  """Half a clip, at most `max_prompt_frames`."""
  return max(1, min(clip_frames // 2, max_prompt_frames(config)))


def load_prompts(paths: Sequence[str], config, *, frames: int,
                 mono: str = "duplicate") -> list[tuple[str, np.ndarray]]:
  """Reads the first `frames` frames of each prompt file like training data.

  A file that is unreadable, empty, truncated or not audio is skipped with a warning naming the
  cause (as `audio.probe_all` does for training data) when several prompts are given, and is an
  error when it is the only one. A file the model cannot take (rate with resampling off, more
  than two channels) is an error. A mono file for a stereo model is duplicated to both channels
  (logged) with `mono="duplicate"`, an error with `mono="error"`.

  Returns:
    [(path, float32 (prompt_frames <= frames, C))] of the usable files, in order.
  """
  if mono not in PROMPT_MONO:
    raise ValueError(f"--prompt_mono={mono!r} is unknown; valid: {', '.join(PROMPT_MONO)}.")
  dataset = config.dataset
  rate, is_stereo = int(dataset.sample_rate), bool(dataset.is_stereo)
  reader = audio.FileReader()
  if len(paths) == 1:
    try:
      infos = [reader.probe(paths[0])]
    except audio.BadAudioError as e:
      raise audio.BadAudioError(f"--prompt {paths[0]}: {e}") from e
  else:
    infos = audio.probe_all(reader, list(paths), description="--prompt")
    if not infos:
      raise ValueError(f"--prompt: none of the {len(paths)} files is usable (see the warnings).")
  prompts = []
  for info in infos:
    if is_stereo and info.channels == 1:
      if mono == "error":
        raise ValueError(f"--prompt {info.name} is mono but the model is stereo; pass "
                         "--prompt_mono=duplicate to copy it to both channels.")
      logging.info("Prompt %s is mono: duplicated to both channels of the stereo model "
                   "(--prompt_mono=error refuses mono prompts).", info.name)
    try:
      audio.check_compatible(info, sample_rate=rate, is_stereo=is_stereo,
                             resample=bool(dataset.get("resample", True)),
                             mono_to_stereo="duplicate")
    except ValueError as e:
      raise ValueError(f"--prompt {e}") from e
    source_frames = min(info.frames, math.ceil(frames * info.sample_rate / rate) + 1)
    clip = audio.resample_audio(reader.read(info.key, 0, source_frames), info.sample_rate, rate)
    clip = audio.fix_channels(clip, is_stereo=is_stereo)[:frames]
    if clip.shape[0] < frames:
      logging.warning("Prompt %s has %d frames, fewer than the %d asked for; using all.",
                      info.name, clip.shape[0], frames)
    prompts.append((info.key, np.asarray(clip, np.float32)))
  return prompts


def common_prompt_tokens(token_lists: Sequence[np.ndarray]) -> np.ndarray:
  """(n, P) tokens: every prompt cut to the shortest one's P tokens (a batch shares one length,
  and a clip must not depend on which batch it lands in)."""
  length = min(int(t.shape[0]) for t in token_lists)
  longer = sum(int(t.shape[0]) > length for t in token_lists)
  if longer:
    logging.info("%d of %d prompts cut to the shortest prompt's %d tokens.", longer,
                 len(token_lists), length)
  return np.stack([np.asarray(t[:length], np.int32) for t in token_lists])


def prompt_tokens(prompt_audio: np.ndarray, config, total_frames: int) -> np.ndarray:
  """Stream tokens of a prompt clip that opens clips of `total_frames` frames.

  The prompt is encoded exactly like a training clip (`pipeline.encode_clip`) and laid out in the
  order of the clip the model generates (`layout.generated_frames`, `layout.prompt_stream`): for
  `temporal` and whole `blocking-N` blocks a prefix of the stream; otherwise (e.g. `blocking`,
  whose right channel follows the whole left one) with `layout.NOT_GIVEN` (-1) at the positions
  generated before later prompt samples. Lengths are checked here, before anything compiles.

  Args:
    prompt_audio: float32 (prompt_frames, C) at the training sample rate and channel count.
    config: the run's ConfigDict.
    total_frames: frames of the clips to generate (> prompt_frames).

  Returns:
    int32 (K,) stream tokens (-1 = generated), starting with at least one given token.
  """
  dataset = config.dataset
  prompt_frames = prompt_audio.shape[0]
  if not 1 <= prompt_frames < total_frames:
    raise ValueError(f"The prompt ({prompt_frames} frames) must be shorter than the clips "
                     f"({total_frames} frames); lower --prompt_seconds or raise --seconds.")
  if prompt_frames > int(dataset.sample_len):
    # The prompt is consumed in convolution mode, whose kernels cover one training clip.
    raise ValueError(f"The prompt ({prompt_frames} frames) is longer than the training clips "
                     f"(dataset.sample_len={dataset.sample_len} frames); lower --prompt_seconds.")
  stream = pipeline.encode_clip(prompt_audio, dataset)
  if dataset.is_stereo:
    strategy = dataset.interleaving_strategy
    flat = stream[stereo.inverse_permutation(prompt_frames, strategy)]  # frame-major (2 P,)
    stream_frames = layout.generated_frames(total_frames, is_stereo=True, strategy=strategy,
                                            sample_len=int(dataset.sample_len))
    stream = layout.prompt_stream(flat, stream_frames, strategy)
  prefix, _ = layout.split_prompt(stream)
  layout.check_prefill_length(prefix.shape[0], layer=str(config.model.layer),
                              l_max=config_lib.l_max(config))
  return stream.astype(np.int32)


def prepare_prompts(spec: Optional[str], config, clip_frames: int, *,
                    prompt_seconds: Optional[float], prompt_mono: str
                    ) -> tuple[Optional[np.ndarray], list[str], dict]:
  """The (n, P) stream tokens of the prompts `spec` names, their paths, and the job fields they add.

  Args:
    spec: --prompt (a file, a folder or a list file), or None/"" for no prompt.
    config: the run's ConfigDict.
    clip_frames: frames of each generated clip.
    prompt_seconds: seconds of each prompt to use (None: `default_prompt_frames`).
    prompt_mono: what a mono prompt for a stereo model does (PROMPT_MONO).
  """
  if not spec:
    return None, [], {"prompts": None}
  rate = int(config.dataset.sample_rate)
  if prompt_seconds is None:
    frames = default_prompt_frames(config, clip_frames)
    logging.info("Using the first %d frames (%.4f s) of each prompt: half a clip, at most one "
                 "training clip minus one pooling block (set --prompt_seconds to choose).",
                 frames, frames / rate)
  else:
    frames = int(round(prompt_seconds * rate))
    if frames < 1:
      raise ValueError(f"--prompt_seconds={prompt_seconds} gives no frames.")
    most = max_prompt_frames(config)
    if frames > most:
      raise ValueError(f"--prompt_seconds={prompt_seconds} ({frames} frames) is longer than "
                       f"this model takes: at most {most / rate:.4f} s ({most} frames, one "
                       "training clip minus one pooling block).")
  paths = prompt_paths(spec)
  loaded = load_prompts(paths, config, frames=frames, mono=prompt_mono)
  tokens = common_prompt_tokens(
      [prompt_tokens(clip, config, clip_frames) for _, clip in loaded])
  names = [os.path.abspath(path) for path, _ in loaded]
  return tokens, names, {"prompts": names, "prompt_frames": frames,
                         "prompt_mono": prompt_mono}
