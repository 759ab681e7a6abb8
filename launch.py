r"""Trains SaShiMi: `python launch.py --config=configs/<preset>.py[:arg] --workdir=DIR`.

Examples:
  python launch.py --config=configs/stereo_temporal.py:tiny --workdir=runs/demo
  python launch.py --config=configs/sc09.py --workdir=runs/sc09 \
      --config.dataset.path=/data/sc09 --config.train.batch_size=64

Re-running the same command resumes from the latest checkpoint in --workdir. On a multi-host
cluster every host runs the same command and `jax.distributed.initialize()` connects them; it is
called when the environment describes several processes (SLURM, Open MPI, a TPU pod's
TPU_WORKER_HOSTNAMES / multislice MEGASCALE_* variables, JAX_COORDINATOR_ADDRESS or
JAX_NUM_PROCESSES), when --coordinator_address/--num_processes/--process_id are given, or always
with --distributed=on (e.g. on Cloud TPU VMs, whose hosts JAX finds through the metadata server):

  python launch.py --config=... --workdir=gs://... --distributed=on            # every TPU host
  python launch.py --config=... --workdir=DIR --coordinator_address=host0:1234 \
      --num_processes=2 --process_id=0                                         # and 1 on host 1
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from sashimi_jax import compilation_cache
from sashimi_jax import console
from sashimi_jax import distributed
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.",
                               required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/stereo_temporal.py:tiny.", lock_config=True)


distributed.define_flags()
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", compilation_cache.DEFAULT_DIR,
    "Persistent XLA compilation cache, so a resumed run skips recompiling ('' = off).")


multi_host_reason = distributed.multi_host_reason  # the tests call them through launch.
initialize_distributed = distributed.initialize_distributed


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_library_logs()
  import jax  # pylint: disable=g-import-not-at-top  (after flags: XLA_FLAGS may be set)
  try:
    cache_dir = compilation_cache.enable(_COMPILATION_CACHE_DIR.value)
    if cache_dir:
      logging.debug("XLA compilation cache: %s", cache_dir)
    reason = distributed.initialize_from_flags(flags.FLAGS, os.environ)
    if reason:
      logging.info("jax.distributed initialized (%s).", reason)
    from sashimi_jax import train  # pylint: disable=g-import-not-at-top
    # The run's start block lists the devices and processes; this line is for debugging hangs.
    logging.debug("JAX process %d/%d, %d devices.", jax.process_index(), jax.process_count(),
                  jax.device_count())
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:  # bad config or data: one line, no traceback.
    logging.debug("Traceback of the error below:", exc_info=True)  # shown with --verbosity=1.
    sys.exit(f"launch.py: error: {e}")


def print_help(argv) -> None:
  """Usage, this program's flags and the preset's config fields (with their comments)."""
  from sashimi_jax import config_help  # pylint: disable=g-import-not-at-top
  print(__doc__)
  print(flags.FLAGS.module_help(sys.modules[__name__]))
  print(flags.FLAGS.module_help(distributed))
  print()
  try:
    print(config_help.describe(config_help.preset_argument(argv)))
  except (FileNotFoundError, ValueError) as e:
    print(f"(cannot list the config fields: {e})")


if __name__ == "__main__":
  if any(a in ("--help", "-h", "-?", "--helpshort") for a in sys.argv[1:]):
    print_help(sys.argv)
    sys.exit(0)
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=console.parse_flags)
