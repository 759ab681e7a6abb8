"""Trains SaShiMi: `python launch.py --config=configs/<preset>.py[:arg] --workdir=DIR`.

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
from typing import Mapping, Optional

from absl import app
from absl import flags
from absl import logging

from sashimi_jax import compilation_cache
from sashimi_jax import console
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.",
                               required=True)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/stereo_temporal.py:tiny.", lock_config=True)


_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Call jax.distributed.initialize(): auto = when the environment or the flags below describe "
    "several processes; on = always (Cloud TPU VM pods); off = never.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for jax.distributed.initialize().")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of JAX processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", compilation_cache.DEFAULT_DIR,
    "Persistent XLA compilation cache, so a resumed run skips recompiling ('' = off).")


def _count(environ: Mapping[str, str], name: str) -> int:
  value = environ.get(name, "")
  try:
    return int(value) if value.strip() else 1
  except ValueError:
    raise ValueError(f"Environment variable {name}={value!r} is not an integer.") from None


def _num_hosts(value: str) -> int:
  return len([h for h in value.split(",") if h.strip()])


def multi_host_reason(environ: Mapping[str, str], *, coordinator_address: Optional[str] = None,
                      num_processes: Optional[int] = None,
                      process_id: Optional[int] = None) -> Optional[str]:
  """Why this run has several JAX processes, or None for a single-process run.

  Args:
    environ: the environment variables (e.g. `os.environ`).
    coordinator_address, num_processes, process_id: the explicit flags (None = not given).

  Returns:
    A short description of what was detected (logged), or None.

  Raises:
    ValueError: if a process-count variable is not an integer.
  """
  if coordinator_address or process_id is not None or (num_processes or 1) > 1:
    return "explicit --coordinator_address/--num_processes/--process_id"
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if _count(environ, "JAX_NUM_PROCESSES") > 1:
    return "JAX_NUM_PROCESSES > 1"
  if _count(environ, "SLURM_NTASKS") > 1 or _count(environ, "SLURM_NPROCS") > 1:
    return "SLURM job with several tasks"
  if _count(environ, "OMPI_COMM_WORLD_SIZE") > 1:
    return "Open MPI job with several ranks"
  for name in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
    if _num_hosts(environ.get(name, "")) > 1:
      return f"TPU pod ({name} lists several hosts)"
  if environ.get("MEGASCALE_COORDINATOR_ADDRESS") and _count(environ, "MEGASCALE_NUM_SLICES") > 1:
    return "multislice TPU (MEGASCALE_NUM_SLICES > 1)"
  return None


def initialize_distributed(mode: str, environ: Mapping[str, str], *,
                           coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           initialize=None) -> Optional[str]:
  """Calls `initialize` (default `jax.distributed.initialize`) if this run is multi-process.

  Args:
    mode: "auto" (initialize if `multi_host_reason` says so), "on" (always), "off" (never).
    environ: the environment variables.
    coordinator_address, num_processes, process_id: explicit flags, passed on when given.
    initialize: the function to call (tests pass a recorder).

  Returns:
    The reason initialize was called, or None if it was not.

  Raises:
    ValueError: explicit flags with --distributed=off, or an incomplete explicit set outside a
      cluster JAX can detect by itself.
  """
  explicit = {k: v for k, v in dict(coordinator_address=coordinator_address,
                                    num_processes=num_processes,
                                    process_id=process_id).items() if v is not None}
  if mode == "off":
    if explicit:
      raise ValueError(f"--distributed=off contradicts --{', --'.join(sorted(explicit))}.")
    return None
  reason = multi_host_reason(environ, **explicit)
  if mode == "on":
    reason = reason or "--distributed=on"
  if reason is None:
    return None
  if explicit and len(explicit) < 3 and multi_host_reason(environ) is None:
    # Clusters JAX detects (SLURM, Open MPI, TPU) supply the rest; plain hosts need all three.
    missing = sorted({"coordinator_address", "num_processes", "process_id"} - set(explicit))
    raise ValueError(f"Multi-process run ({reason}) needs --{' and --'.join(missing)} too.")
  if initialize is None:
    import jax  # pylint: disable=g-import-not-at-top
    initialize = jax.distributed.initialize
  initialize(**explicit)
  return reason


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet_library_logs()
  import jax  # pylint: disable=g-import-not-at-top  (after flags: XLA_FLAGS may be set)
  try:
    cache_dir = compilation_cache.enable(_COMPILATION_CACHE_DIR.value)
    if cache_dir:
      logging.info("XLA compilation cache: %s", cache_dir)
    reason = initialize_distributed(
        _DISTRIBUTED.value, os.environ, coordinator_address=_COORDINATOR_ADDRESS.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    if reason:
      logging.info("jax.distributed initialized (%s).", reason)
    from sashimi_jax import train  # pylint: disable=g-import-not-at-top
    logging.info("JAX process %d/%d, %d devices.", jax.process_index(), jax.process_count(),
                 jax.device_count())
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:  # bad config or data: one line, no traceback.
    logging.debug("Traceback of the error below:", exc_info=True)  # shown with --verbosity=1.
    sys.exit(f"launch.py: error: {e}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=console.parse_flags)
