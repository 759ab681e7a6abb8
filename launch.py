"""Trains SaShiMi: `python launch.py --config=configs/<preset>.py[:arg] --workdir=DIR`.

Examples:
  python launch.py --config=configs/stereo_temporal.py:tiny --workdir=runs/demo
  python launch.py --config=configs/sc09.py --workdir=runs/sc09 \
      --config.dataset.path=/data/sc09 --config.train.batch_size=64

Re-running the same command resumes from the latest checkpoint in --workdir. On a multi-host
cluster (TPU pod, SLURM, or JAX_COORDINATOR_ADDRESS set) every host runs the same command and
`jax.distributed.initialize()` connects them.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from sashimi_jax import console
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.",
                               required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/stereo_temporal.py:tiny.", lock_config=True)


def _is_multi_host() -> bool:
  """True when the environment describes more than one JAX process."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in tpu_hosts.split(",") if h]) > 1


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_library_logs()
  import jax  # pylint: disable=g-import-not-at-top  (after flags: XLA_FLAGS may be set)
  if _is_multi_host():
    jax.distributed.initialize()
  from sashimi_jax import train  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d/%d, %d devices.", jax.process_index(), jax.process_count(),
               jax.device_count())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:  # bad config or data: one line, no traceback.
    logging.debug("Traceback of the error below:", exc_info=True)  # shown with --verbosity=1.
    sys.exit(f"launch.py: error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
