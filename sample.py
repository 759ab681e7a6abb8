"""Generate audio from a trained sashimi-jax run.

The model and its data settings come from the config saved with the checkpoint (never from
flags), so samples are decoded with the quantizer and interleaving the model was trained with.

  python sample.py --workdir=runs/demo --output_dir=runs/demo/samples --num_samples=4 --seconds=2
  python sample.py --workdir=runs/demo --prompt=clip.wav --prompt_seconds=0.5 --seconds=2
  python sample.py --workdir=runs/demo --verify_step --num_samples=0   # conv vs recurrent check

Writes `sample_NNN.wav` (float32, training sample rate, (frames, 2) for stereo), optional
`sample_NNN.png` spectrograms, and `samples.json` with every sample's log-likelihood, sorted from
most to least likely.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sashimi_jax import audio_summaries
from sashimi_jax import compilation_cache
from sashimi_jax import console
from sashimi_jax import sampling
from sashimi_jax.data import pipeline
from sashimi_jax.data import stereo


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this program's flags on `fv` (tests pass their own FlagValues)."""
  flags.DEFINE_string("workdir", None, "The training run's --workdir (holds checkpoints/).",
                      flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).",
                       flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where to write WAVs/JSON (default WORKDIR/samples).",
                      flag_values=fv)
  flags.DEFINE_integer("num_samples", 4, "Clips to generate (0: only --verify_step).",
                       flag_values=fv)
  flags.DEFINE_integer("batch_size", 4, "Clips generated together.", flag_values=fv)
  flags.DEFINE_float("seconds", 1.0, "Length of each clip in seconds, prompt included.",
                     flag_values=fv)
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).", flag_values=fv)
  flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1]; tiny values = greedy.",
                     flag_values=fv)
  flags.DEFINE_integer("seed", 0, "PRNG seed; clip i depends only on (seed, i).", flag_values=fv)
  flags.DEFINE_string("prompt", None, "Audio file whose beginning every clip continues.",
                      flag_values=fv)
  flags.DEFINE_float("prompt_seconds", 1.0, "Seconds of --prompt to use.", flag_values=fv)
  flags.DEFINE_bool("verify_step", False,
                    "Compare convolution-mode and recurrent outputs on a validation clip; exit "
                    "non-zero if their relative difference exceeds --verify_tolerance.",
                    flag_values=fv)
  flags.DEFINE_float("verify_tolerance", 1e-4, "Largest accepted relative difference.",
                     flag_values=fv)
  flags.DEFINE_bool("spectrograms", False, "Also write a spectrogram PNG per clip.",
                    flag_values=fv)
  flags.DEFINE_integer("chunk_tokens", 4096, "Tokens per compiled segment (progress updates).",
                       flag_values=fv)
  flags.DEFINE_string("compilation_cache_dir", compilation_cache.DEFAULT_DIR,
                      "Persistent XLA compilation cache, so repeated sampling jobs skip "
                      "recompiling ('' = off).", flag_values=fv)


def _head_kwargs(config) -> dict[str, Any]:
  head = config.model.output_head
  return {"head": head, "bits": int(config.dataset.bits),
          "n_mixtures": int(config.model.n_mixtures) if head == "dml" else 0}


def prompt_tokens(prompt_audio: np.ndarray, config, total_frames: int) -> np.ndarray:
  """Stream tokens of a prompt clip that open a stream of `total_frames` frames.

  The prompt is encoded exactly like a training clip (`pipeline.encode_clip`). For stereo, the
  usable prompt is the longest prefix of the full stream's order whose samples all lie in the
  prompt's frames: all of it for `temporal` and for `blocking-N` with whole blocks; for
  `blocking` only the prompt's left channel (the stream holds every left sample first).

  Args:
    prompt_audio: float32 (prompt_frames, C) at the training sample rate and channel count.
    config: the run's ConfigDict.
    total_frames: frames of the clips to generate (> prompt_frames).

  Returns:
    int32 (P,) stream tokens, P >= 1.
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
  if not dataset.is_stereo:
    return stream.astype(np.int32)
  strategy = dataset.interleaving_strategy
  flat = stream[stereo.inverse_permutation(prompt_frames, strategy)]  # frame-major (2 P,)
  order = stereo.permutation(total_frames, strategy)
  outside = np.nonzero(order >= 2 * prompt_frames)[0]
  usable = int(outside[0]) if outside.size else order.size
  if usable < 1:
    raise ValueError("The prompt covers no whole position of the stream's order.")
  return flat[order[:usable]].astype(np.int32)


def load_prompt(path: str, config, seconds: float) -> np.ndarray:
  """Reads `seconds` of an audio file, resampled and channel-checked like training data.

  Returns:
    float32 (frames, C).

  Raises:
    FileNotFoundError, ValueError: naming the file and the problem (e.g. a mono prompt for a
      stereo model).
  """
  from sashimi_jax.data import audio  # pylint: disable=g-import-not-at-top

  dataset = config.dataset
  try:
    clip = audio.load_audio(
        path, sample_rate=int(dataset.sample_rate), is_stereo=bool(dataset.is_stereo),
        resample=bool(dataset.get("resample", True)),
        mono_to_stereo=str(dataset.get("mono_to_stereo", "error")))
  except ValueError as e:
    raise ValueError(f"--prompt {path}: {e}") from e
  frames = int(round(seconds * int(dataset.sample_rate)))
  if frames < 1:
    raise ValueError(f"--prompt_seconds={seconds} gives no frames.")
  if clip.shape[0] < frames:
    logging.warning("Prompt %s has %d frames, fewer than --prompt_seconds asks (%d); using all.",
                    path, clip.shape[0], frames)
  return clip[:frames]


def generate_clips(model, config, *, num_samples: int, batch_size: int, num_frames: int,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   prompt: Optional[np.ndarray] = None, chunk_tokens: int = 4096,
                   show_progress: bool = True) -> dict[str, np.ndarray]:
  """Generates `num_samples` clips of `num_frames` frames and decodes them to audio.

  Args:
    model: the trained `SaShiMiLM`.
    config: its ConfigDict (head, bits, quantization, stereo strategy).
    num_samples, batch_size: clip i comes from batch i // batch_size but depends only on
      (seed, i): the last batch is padded and the padding discarded.
    num_frames: frames per clip (tokens = frames x channels), prompt included.
    temperature, top_p: see `heads.sample_tokens`.
    seed: PRNG seed.
    prompt: optional int32 (P,) stream tokens every clip starts with.
    chunk_tokens: tokens per compiled segment.
    show_progress: draw a tqdm bar with tokens/s.

  Returns:
    dict(audio=float32 (N, frames, C), tokens=int32 (N, T), log_likelihood=float32 (N,),
    mean_entropy=float32 (N,), seconds=float wall time and tokens_per_second=float, both
    including compilation).
  """
  if num_samples < 1 or batch_size < 1:
    raise ValueError(f"need num_samples >= 1 and batch_size >= 1, got {num_samples}, "
                     f"{batch_size}.")
  channels = 2 if config.dataset.is_stereo else 1
  total_tokens = num_frames * channels
  prompt_len = 0 if prompt is None else int(prompt.shape[0])
  new_tokens = total_tokens - prompt_len
  if new_tokens < 1:
    raise ValueError(f"Nothing to generate: the prompt has {prompt_len} tokens and a clip "
                     f"{total_tokens}.")
  batch_size = min(batch_size, num_samples)
  key = jax.random.key(seed)
  batch_prompt = None if prompt is None else jnp.asarray(
      np.broadcast_to(prompt, (batch_size, prompt_len)))
  results = []
  start = time.perf_counter()
  with tqdm.tqdm(total=num_samples * new_tokens, unit="tok", unit_scale=True,
                 disable=not show_progress, desc="sampling") as bar:
    for first in range(0, num_samples, batch_size):
      rows = min(batch_size, num_samples - first)
      done_before = [0]

      def progress(done, rows=rows, done_before=done_before):
        bar.update((done - done_before[0]) * rows)
        done_before[0] = done

      out = sampling.generate(
          model, key, batch_size=batch_size, num_tokens=new_tokens, prompt=batch_prompt,
          temperature=temperature, top_p=top_p, first_sample_index=first,
          chunk_tokens=chunk_tokens, progress=progress, **_head_kwargs(config))
      results.append({k: np.asarray(v)[:rows] for k, v in out.items()})
  seconds = time.perf_counter() - start
  tokens = np.concatenate([r["tokens"] for r in results])
  return {
      "tokens": tokens,
      "audio": np.asarray(pipeline.decode_tokens(tokens, config.dataset), np.float32),
      "log_likelihood": np.concatenate([r["log_likelihood"] for r in results]),
      "mean_entropy": np.concatenate([r["mean_entropy"] for r in results]),
      "seconds": seconds,
      "tokens_per_second": num_samples * new_tokens / max(seconds, 1e-9),
  }


def write_outputs(output_dir: str, result: dict[str, Any], config, *, spectrograms: bool,
                  metadata: dict[str, Any]) -> list[dict[str, Any]]:
  """Writes sample_NNN.wav (+ .png) and samples.json (records sorted by log-likelihood).

  Returns:
    The JSON records, most likely first.
  """
  os.makedirs(output_dir, exist_ok=True)
  sample_rate = int(config.dataset.sample_rate)
  new_tokens = result["tokens"].shape[1] - metadata.get("prompt_tokens", 0)
  records = []
  for i, clip in enumerate(result["audio"]):
    name = f"sample_{i:03d}"
    audio_summaries.write_wav(os.path.join(output_dir, name + ".wav"), clip, sample_rate)
    record = {
        "file": name + ".wav",
        "log_likelihood": float(result["log_likelihood"][i]),
        "bits_per_token": float(-result["log_likelihood"][i] / (new_tokens * math.log(2.0))),
        "mean_entropy": float(result["mean_entropy"][i]),
    }
    if spectrograms:
      audio_summaries.spectrogram_png(clip, sample_rate, os.path.join(output_dir, name + ".png"),
                                      title=name)
      record["spectrogram"] = name + ".png"
    records.append(record)
  records.sort(key=lambda r: -r["log_likelihood"])
  with open(os.path.join(output_dir, "samples.json"), "w", encoding="utf-8") as f:
    json.dump({**metadata, "samples": records}, f, indent=2)
  return records


def verify_recurrence(model, config, *, max_tokens: Optional[int] = None) -> float:
  """Relative L2 difference between convolution-mode and recurrent outputs on one clip.

  The clip is the first validation clip (the training split if the run has no validation
  split), fed as in training (`x = [zero, y[:-1]]`).
  """
  try:
    batches = pipeline.create_eval_batches(config.dataset, split="valid", global_batch_size=1,
                                           max_batches=1)
  except ValueError:
    batches = pipeline.create_eval_batches(config.dataset, split="train", global_batch_size=1,
                                           max_batches=1)
  batch = batches[0]
  x, y = jnp.asarray(batch["x"]), jnp.asarray(batch["y"])
  if max_tokens is not None:
    x, y = x[:, :max_tokens], y[:, :max_tokens]
  conv = jax.jit(lambda m, t: m(t))(model, x)
  recurrent = sampling.teacher_forced_outputs(model, y)
  return sampling.relative_difference(conv, recurrent)


def run(fv: flags.FlagValues) -> int:
  """Runs the program for parsed flags; returns the process exit code."""
  from sashimi_jax import checkpoint  # pylint: disable=g-import-not-at-top

  if not fv.workdir:
    raise app.UsageError("--workdir is required (the training run's directory).")
  config, model, step = checkpoint.load_for_inference(fv.workdir, fv.step)
  logging.info("Loaded step %d from %s", step, fv.workdir)
  if fv.verify_step:
    difference = verify_recurrence(model, config)
    ok = difference <= fv.verify_tolerance
    print(f"conv vs recurrent relative difference: {difference:.3e} "
          f"(tolerance {fv.verify_tolerance:.1e}): {'OK' if ok else 'FAILED'}")
    if not ok:
      return 1
  if fv.num_samples < 1:
    return 0
  sample_rate = int(config.dataset.sample_rate)
  num_frames = int(round(fv.seconds * sample_rate))
  prompt = None
  if fv.prompt:
    prompt = prompt_tokens(load_prompt(fv.prompt, config, fv.prompt_seconds), config, num_frames)
  result = generate_clips(
      model, config, num_samples=fv.num_samples, batch_size=fv.batch_size,
      num_frames=num_frames, temperature=fv.temperature, top_p=fv.top_p, seed=fv.seed,
      prompt=prompt, chunk_tokens=fv.chunk_tokens)
  output_dir = fv.output_dir or os.path.join(fv.workdir, "samples")
  metadata = {
      "workdir": os.path.abspath(fv.workdir), "step": step, "seed": fv.seed,
      "temperature": fv.temperature, "top_p": fv.top_p, "seconds": fv.seconds,
      "sample_rate": sample_rate, "prompt": fv.prompt,
      "prompt_tokens": 0 if prompt is None else int(prompt.shape[0]),
      "tokens_per_second_incl_compile": result["tokens_per_second"],
  }
  records = write_outputs(output_dir, result, config, spectrograms=fv.spectrograms,
                          metadata=metadata)
  print(f"Wrote {len(records)} clips to {output_dir} at {result['tokens_per_second']:.0f} "
        f"tokens/s (incl. compilation); most likely: {records[0]['file']} "
        f"({records[0]['bits_per_token']:.3f} bits/token).")
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_library_logs()
  try:
    compilation_cache.enable(flags.FLAGS.compilation_cache_dir)
    code = run(flags.FLAGS)
  except (FileNotFoundError, ValueError) as e:  # bad flags, files or checkpoint: one line.
    # A caught ValueError may also be a bug: its traceback is shown with --verbosity=1.
    logging.debug("Traceback of the error below:", exc_info=True)
    sys.exit(f"sample.py: error: {e}")
  sys.exit(code)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
