"""When to call `jax.distributed.initialize()`: shared by launch.py and sample.py.

A run is multi-process when the environment describes several processes (SLURM, Open MPI, a TPU
pod's TPU_WORKER_HOSTNAMES / multislice MEGASCALE_* variables, JAX_COORDINATOR_ADDRESS or
JAX_NUM_PROCESSES), when --coordinator_address/--num_processes/--process_id are given, or always
with --distributed=on (e.g. on Cloud TPU VMs, whose hosts JAX finds through the metadata server).
"""

from __future__ import annotations

from typing import Mapping, Optional

from absl import flags

MODES = ("auto", "on", "off")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """--distributed, --coordinator_address, --num_processes, --process_id on `fv`."""
  flags.DEFINE_enum(
      "distributed", "auto", list(MODES),
      "Call jax.distributed.initialize(): auto = when the environment or the flags below "
      "describe several processes; on = always (Cloud TPU VM pods); off = never.",
      flag_values=fv)
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for jax.distributed.initialize().", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Number of JAX processes.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index, 0-based.", flag_values=fv)


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


def initialize_from_flags(fv: flags.FlagValues, environ: Mapping[str, str]) -> Optional[str]:
  """`initialize_distributed` with the flags of `define_flags`."""
  return initialize_distributed(fv.distributed, environ,
                                coordinator_address=fv.coordinator_address,
                                num_processes=fv.num_processes, process_id=fv.process_id)
