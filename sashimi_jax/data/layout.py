"""The stream layout of generated clips and prompts: the training layout, at any requested length.

A model learns the token order of `sample_len`-frame clips. `stereo.permutation(F, strategy)` is
that order only for some lengths F:
  * `temporal`: every F (frame t always sits at stream positions 2t, 2t+1);
  * `blocking`: only F = sample_len (the right channel starts at stream position sample_len);
  * `blocking-N`: F = sample_len or any multiple of N (whole blocks; a clip whose last block is
    short has a different order inside that block).
`generated_frames` is the one place that decides how many frames to generate for a request:
`temporal` any length; `blocking` exactly one `sample_len` clip (longer requests are an error,
shorter ones are cut from it); `blocking-N` the request rounded up to whole blocks (or
`sample_len`), then cut. `sample.py`, the TensorBoard samples and prompts all go through it.

A prompt (its first P frames) covers the stream positions whose samples lie in frames < P. For
`temporal` and whole `blocking-N` blocks these are a prefix of the stream (consumed by prefill);
otherwise (`blocking`: the prompt's right channel comes after the whole generated left channel)
the later ones are forced in during generation (`sampling.generate(forced=...)`).
"""

from __future__ import annotations

import numpy as np

from sashimi_jax.data import stereo

NOT_GIVEN = -1  # a stream position the prompt does not cover: generated.


def generated_frames(requested_frames: int, *, is_stereo: bool, strategy, sample_len: int) -> int:
  """Frames to generate so that a clip of `requested_frames` frames has the training layout.

  Args:
    requested_frames: frames the caller wants (>= 1).
    is_stereo: stereo model (mono: the request itself).
    strategy: the run's interleaving strategy (string or `stereo.Strategy`).
    sample_len: the run's training clip length in frames.

  Returns:
    F >= requested_frames; generate F frames, de-interleave with `stereo.deinterleave` (length F),
    and keep the first `requested_frames`.

  Raises:
    ValueError: `blocking` and more than `sample_len` frames requested.
  """
  requested_frames = int(requested_frames)
  if requested_frames < 1:
    raise ValueError(f"Need at least one frame to generate, got {requested_frames}.")
  if not is_stereo:
    return requested_frames
  strategy = stereo.parse_strategy(strategy)
  sample_len = int(sample_len)
  if strategy.block_frames is None:  # blocking
    if requested_frames > sample_len:
      raise ValueError(
          f"A 'blocking' model generates one training clip of dataset.sample_len={sample_len} "
          f"frames (all left samples, then all right ones); {requested_frames} frames were "
          f"requested. Ask for at most {sample_len} frames.")
    return sample_len
  block = strategy.block_frames
  if requested_frames == sample_len or block == 1:
    return requested_frames
  return -(-requested_frames // block) * block


def trim_frames(audio: np.ndarray, requested_frames: int) -> np.ndarray:
  """audio (..., F, C) -> (..., requested_frames, C): the first frames of generated clips."""
  return audio[..., :int(requested_frames), :]


def prompt_stream(prompt_tokens_frame_major: np.ndarray, stream_frames: int, strategy) -> np.ndarray:
  """The stream positions a stereo prompt covers, in the order of a `stream_frames` clip.

  Args:
    prompt_tokens_frame_major: int (2P,) prompt tokens, sample (t, c) at index 2t + c.
    stream_frames: F, frames of the generated clip (from `generated_frames`), F > P.
    strategy: interleaving strategy.

  Returns:
    int32 (K,): the stream's first K positions, K = 1 + the last position the prompt covers;
    `NOT_GIVEN` (-1) where the stream holds a sample of a frame >= P (to be generated).
  """
  flat = np.asarray(prompt_tokens_frame_major)
  prompt_frames = flat.shape[0] // 2
  if not 1 <= prompt_frames < stream_frames:
    raise ValueError(f"The prompt ({prompt_frames} frames) must be shorter than the clips "
                     f"({stream_frames} frames).")
  order = stereo.permutation(stream_frames, strategy)
  covered = order < 2 * prompt_frames
  length = int(np.nonzero(covered)[0][-1]) + 1
  out = np.full((length,), NOT_GIVEN, np.int32)
  out[covered[:length]] = flat[order[:length][covered[:length]]]
  return out


def split_prompt(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A prompt stream (K,) -> (prefix (P,) of given tokens, rest (K - P,) with NOT_GIVEN holes).

  The prefix is consumed by prefill; the rest is forced in during generation.
  """
  stream = np.asarray(stream, np.int32)
  missing = np.nonzero(stream == NOT_GIVEN)[0]
  prefix_len = int(missing[0]) if missing.size else stream.shape[0]
  if prefix_len < 1:
    raise ValueError("The prompt covers no position at the start of the stream.")
  return stream[:prefix_len], stream[prefix_len:]


def check_prefill_length(prefix_tokens: int, *, layer: str, l_max: int) -> None:
  """Refuses a prompt prefix that convolution-mode prefill cannot take, before any compile.

  Prefill pads the prompt to the next multiple of the pooling factor *above* it; a DPLR (`s4`)
  layer's kernel is tied to l_max tokens, so its prompt must be shorter than l_max tokens.

  Raises:
    ValueError: naming the limit.
  """
  if layer == "s4" and prefix_tokens >= l_max:
    raise ValueError(
        f"The prompt fills {prefix_tokens} stream tokens; a DPLR ('s4') model's prefill takes "
        f"fewer than its training stream of {l_max} tokens. Lower --prompt_seconds.")
