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

import sys

from absl import app
from absl import flags
from absl import logging

from sashimi_jax import audio_output
from sashimi_jax import compilation_cache
from sashimi_jax import console
from sashimi_jax import distributed
from sashimi_jax import prompts
from sashimi_jax import sample_job


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
  flags.DEFINE_integer("cpu_devices", None, "On a CPU host: XLA devices the cores are split into, "
                       "each generating its share of every batch on its own thread (default: one "
                       "per core this process may use; XLA_FLAGS' "
                       "--xla_force_host_platform_device_count wins). Not part of the job: the "
                       "clips do not depend on it.", flag_values=fv)
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
  flags.DEFINE_enum("prompt_mono", "duplicate", list(prompts.PROMPT_MONO),
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_library_logs()
  try:
    compilation_cache.enable(flags.FLAGS.compilation_cache_dir)
    code = sample_job.run_from_flags(flags.FLAGS)
  except (FileNotFoundError, ValueError) as e:  # bad flags, files or checkpoint: one line.
    # A caught ValueError may also be a bug: its traceback is shown with --verbosity=1.
    logging.debug("Traceback of the error below:", exc_info=True)
    sys.exit(f"sample.py: error: {e}")
  sys.exit(code)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
