"""How many XLA devices the host CPU is split into, for data-parallel sampling on a CPU.

XLA:CPU runs one program's ops one after another on one thread, and a recurrent sampling step is
hundreds of small ops, so one device keeps about one core busy. Split into one device per core,
the batch is sharded over the devices like over a TPU slice's chips and each device runs its rows
on its own thread: on the 2-core CI machine batch 16 steps 1.8x faster than on one device
(README "Speed"). The clips do not change: a clip depends on (checkpoint, seed, index) and on how
many rows a device computes together (`--per_device_batch_size`), not on the device count.

`jax_num_cpu_devices` must be set before JAX creates its backends, so entry points call
`configure` first, before anything touches a device.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional

from absl import logging

_FORCE_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def available_cores() -> int:
  """Cores this process may run on (its CPU affinity), at least 1."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except (AttributeError, OSError):  # not Linux
    return max(1, os.cpu_count() or 1)


def configure(requested: Optional[int], environ: Mapping[str, str]) -> int:
  """Splits the CPU platform into `requested` devices (None: one per available core).

  XLA_FLAGS' --xla_force_host_platform_device_count, when set, wins (tests and benchmarks use it).
  Accelerator hosts are unaffected: their default devices are the accelerators.

  Returns:
    the CPU device count in effect (or to come).

  Raises:
    ValueError: `requested` < 1.
  """
  if requested is not None and requested < 1:
    raise ValueError(f"--cpu_devices must be >= 1, got {requested}.")
  forced = _FORCE_FLAG.search(environ.get("XLA_FLAGS", ""))
  if forced:
    if requested is not None and requested != int(forced.group(1)):
      logging.warning("--cpu_devices=%d ignored: XLA_FLAGS sets %s.", requested, forced.group(0))
    return int(forced.group(1))
  count = requested if requested is not None else available_cores()
  import jax  # pylint: disable=g-import-not-at-top

  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:  # backends already created (e.g. called twice in one process)
    count = len(jax.devices("cpu"))
    logging.info("CPU devices left at %d (%s).", count, e)
  return count
