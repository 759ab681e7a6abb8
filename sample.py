"""Generate audio from a trained sashimi-jax run: a batch sampling job (sashimi_jax/sample_job.py).

The model and its data settings come from the config saved with the checkpoint (never from
flags), so samples are decoded with the quantizer and interleaving the model was trained with.

  python sample.py --workdir=runs/demo --output_dir=runs/demo/samples --num_samples=4 --seconds=2
  python sample.py --workdir=runs/demo --prompt=clip.wav --prompt_seconds=0.5 --seconds=2
  python sample.py --workdir=runs/demo --prompt=prompts/ --num_samples=200   # clip i: prompt i % n
  python sample.py --workdir=runs/demo --verify_step --num_samples=0   # conv vs recurrent check

Each batch is split over every device; on several hosts (same flags as launch.py: SLURM, TPU pod,
or --coordinator_address/--num_processes/--process_id) each host generates and writes its share.
Output: --output_rate (polyphase resampling), --format wav/flac, --subtype, --loudness_dbfs
(see sashimi_jax/audio_output.py); samples.json also records tokens/s and the real-time factor
with and without compilation.
Rerunning the same command continues an interrupted job; other arguments into the same
--output_dir are an error. Writes `sample_NNN.wav` (float32, training sample rate, (frames, 2) for
stereo), optional `sample_NNN.png` spectrograms, `job.json`, `records/` and `samples.json` with
every clip's log-likelihood (and prompt), sorted from most to least likely.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sashimi_jax import audio_output
from sashimi_jax import compilation_cache
from sashimi_jax import config as config_lib
from sashimi_jax import console
from sashimi_jax import distributed
from sashimi_jax import sample_job
from sashimi_jax import sampling
from sashimi_jax.data import layout
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
  flags.DEFINE_integer("per_device_batch_size", 4, "Clips each device generates together (a "
                       "batch is this times the device count). Part of the job: on CPU a clip's "
                       "rounding depends on how many rows a device computes together.",
                       flag_values=fv)
  flags.DEFINE_float("seconds", 1.0, "Length of each clip in seconds, prompt included.",
                     flag_values=fv)
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).", flag_values=fv)
  flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1]; tiny values = greedy.",
                     flag_values=fv)
  flags.DEFINE_integer("seed", 0, "PRNG seed; clip i depends only on (seed, i).", flag_values=fv)
  flags.DEFINE_string("prompt", None, "Prompt audio: a file, a folder of files or a list file "
                      "(.txt/.lst/.list, one path a line); clip i continues prompt i mod n "
                      "(every prompt cut to the shortest one's length).", flag_values=fv)
  flags.DEFINE_float("prompt_seconds", None, "Seconds of each prompt to use (default: half a "
                     "clip, at most one training clip minus one pooling block).", flag_values=fv)
  flags.DEFINE_enum("prompt_mono", "duplicate", list(sample_job.PROMPT_MONO),
                    "A mono prompt for a stereo model: duplicate it to both channels (logged), "
                    "or refuse it.", flag_values=fv)
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
  flags.DEFINE_integer("output_rate", None, "Sample rate of the written files in Hz, resampled "
                       "(polyphase) from the model's rate (default: the model's rate).",
                       flag_values=fv)
  flags.DEFINE_enum("format", "wav", list(audio_output.FORMATS), "File format.", flag_values=fv)
  flags.DEFINE_string("subtype", None, "soundfile subtype, e.g. PCM_16, PCM_24, FLOAT (default: "
                      "FLOAT for wav, PCM_16 for flac).", flag_values=fv)
  flags.DEFINE_float("loudness_dbfs", None, "Scale each clip to this RMS level in dBFS (all "
                     "channels together, e.g. -20), less if a peak would clip; default: as "
                     "generated.", flag_values=fv)
  flags.DEFINE_string("compilation_cache_dir", compilation_cache.DEFAULT_DIR,
                      "Persistent XLA compilation cache, so repeated sampling jobs skip "
                      "recompiling ('' = off).", flag_values=fv)
  distributed.define_flags(fv)


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


def _prompt_tokens(fv, config, clip_frames: int) -> tuple[Optional[np.ndarray], list[str], dict]:
  """The prompts' (n, P) tokens, their names, and the job arguments they add."""
  if not fv.prompt:
    return None, [], {"prompts": None}
  rate = int(config.dataset.sample_rate)
  if fv.prompt_seconds is None:
    frames = sample_job.default_prompt_frames(config, clip_frames)
    logging.info("Using the first %d frames (%.4f s) of each prompt: half a clip, at most one "
                 "training clip minus one pooling block (set --prompt_seconds to choose).",
                 frames, frames / rate)
  else:
    frames = int(round(fv.prompt_seconds * rate))
    if frames < 1:
      raise ValueError(f"--prompt_seconds={fv.prompt_seconds} gives no frames.")
    most = sample_job.max_prompt_frames(config)
    if frames > most:
      raise ValueError(f"--prompt_seconds={fv.prompt_seconds} ({frames} frames) is longer than "
                       f"this model takes: at most {most / rate:.4f} s ({most} frames, one "
                       "training clip minus one pooling block).")
  paths = sample_job.prompt_paths(fv.prompt)
  loaded = sample_job.load_prompts(paths, config, frames=frames, mono=fv.prompt_mono)
  tokens = sample_job.common_prompt_tokens(
      [prompt_tokens(clip, config, clip_frames) for _, clip in loaded])
  names = [os.path.abspath(path) for path, _ in loaded]
  return tokens, names, {"prompts": names, "prompt_frames": frames,
                         "prompt_mono": fv.prompt_mono}


def run(fv: flags.FlagValues) -> int:
  """Runs the program for parsed flags; returns the process exit code."""
  from sashimi_jax import checkpoint  # pylint: disable=g-import-not-at-top

  if not fv.workdir:
    raise app.UsageError("--workdir is required (the training run's directory).")
  reason = distributed.initialize_from_flags(fv, os.environ)
  if reason:
    logging.info("jax.distributed initialized (%s).", reason)
  config, model, step = checkpoint.load_for_inference(fv.workdir, fv.step)
  logging.info("Loaded step %d from %s; process %d/%d, %d devices.", step, fv.workdir,
               jax.process_index(), jax.process_count(), jax.device_count())
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
  clip_frames = int(round(fv.seconds * sample_rate))
  prompts, prompt_names, prompt_job = _prompt_tokens(fv, config, clip_frames)
  output_dir = fv.output_dir or os.path.join(fv.workdir, "samples")
  options = audio_output.OutputOptions(
      output_rate_hz=fv.output_rate, file_format=fv.format, subtype=fv.subtype,
      loudness_dbfs=fv.loudness_dbfs).validate()
  job = {"workdir": os.path.abspath(fv.workdir), "step": step, "num_samples": fv.num_samples,
         "clip_seconds": fv.seconds, "seed": fv.seed, "temperature": fv.temperature,
         "top_p": fv.top_p, "spectrograms": fv.spectrograms,
         "per_device_batch_size": fv.per_device_batch_size, **prompt_job,
         **audio_output.options_record(options, sample_rate)}
  is_main = jax.process_index() == 0
  new_tokens = clip_frames * (2 if config.dataset.is_stereo else 1) - (
      0 if prompts is None else prompts.shape[1])
  with tqdm.tqdm(total=fv.num_samples * max(new_tokens, 0), unit="tok", unit_scale=True,
                 disable=not is_main, desc="sampling") as bar:

    def progress(tokens_done):
      bar.update(tokens_done - bar.n)

    result = sample_job.run_job(
        model, config, output_dir=output_dir, job=job, num_samples=fv.num_samples,
        per_device_batch_size=fv.per_device_batch_size, clip_frames=clip_frames,
        prompts=prompts, prompt_names=prompt_names, temperature=fv.temperature, top_p=fv.top_p,
        seed=fv.seed, chunk_tokens=fv.chunk_tokens, spectrograms=fv.spectrograms,
        progress=progress, output_options=options)
  if is_main:
    best = result.records[0]
    print(f"Wrote {result.generated} clips to {output_dir} ({result.skipped} already complete); "
          f"{audio_output.format_speed(result.speed)}; most likely: "
          f"{best['file']} ({best['bits_per_token']:.3f} bits/token).")
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
