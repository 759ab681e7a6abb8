"""Scores a trained checkpoint: bits per token, per frame, per channel and per file.

  python evaluate.py --workdir=runs/demo                          # latest checkpoint, test split
  python evaluate.py --workdir=runs/demo --step=best --split=valid
  python evaluate.py --workdir=runs/demo --step=200 --audio=/data/new_music   # any folder or file

The audio is cut into clips and encoded with the run's own data settings (from the checkpoint's
config). Prints the totals and one line per file, and writes them to
WORKDIR/evaluation/<split or audio_NAME>_step<N>.json (or --output_json) and to TensorBoard
(WORKDIR/tensorboard, tags evaluate/<split>/bits_per_token...). --max_batches=K scores the clips
the training loop's evaluation reads (K batches) instead of every clip once.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from sashimi_jax import compilation_cache
from sashimi_jax import console

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's --workdir.")
_STEP = flags.DEFINE_string("step", "latest", "Checkpoint: 'latest', 'best' (lowest "
                            "eval/bits_per_token in metrics.jsonl) or a step number.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "valid", "train"],
                           "Split of the run's data to score (unless --audio is given).")
_AUDIO = flags.DEFINE_string("audio", None, "A folder (recursive) or file of audio to score "
                             "instead of a split; every file, unsplit.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Clips per batch (default: the run's "
                                   "train.batch_size).")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", None, "Score only the clips of the training "
                                    "loop's evaluation (this many batches); default every clip.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Where to write the JSON results.")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", compilation_cache.DEFAULT_DIR, "Persistent XLA compilation cache "
    "('' = off).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (the training run's directory).")
  console.quiet_library_logs()
  from sashimi_jax import evaluate  # pylint: disable=g-import-not-at-top
  try:
    compilation_cache.enable(_COMPILATION_CACHE_DIR.value)
    result = evaluate.evaluate_checkpoint(
        _WORKDIR.value, step=_STEP.value, split=_SPLIT.value, audio_path=_AUDIO.value,
        batch_size=_BATCH_SIZE.value, max_batches=_MAX_BATCHES.value)
    path = evaluate.write_results(result, _OUTPUT_JSON.value)
  except (FileNotFoundError, ValueError) as e:
    logging.debug("Traceback of the error below:", exc_info=True)
    sys.exit(f"evaluate.py: error: {e}")
  print(evaluate.format_report(result))
  print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
