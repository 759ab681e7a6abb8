"""Compile time on a compile-only TPU v5e of the DPLR matrix power, batched vs mapped over channels.

Why: XLA:TPU emits code per batch element for batched HIGHEST-precision small matmuls, so the
DPLR algebra (matrix powers, Krylov blocks, solves on (H, N, N) arrays) dominates compile time of
full models (README "Training", TPU section). This isolates one such piece, grad of
sum(A^16000 ** 2) for (H, 64, 64) A, in three forms:
  batched:  the one-channel power vmapped over the whole (H, N, N) array (the old code);
  mapped:   mapped over the H channels one at a time (one (N, N) body);
  mapped8:  mapped over groups of 8 channels (channel_map.CHANNELS_PER_TRIP, dplr.matrix_power).
Only compile time is measured (no TPU here): the run time of each form on a real chip is unknown.

Run (needs libtpu, the `.[tpu]` extra):
  PYTHONPATH=. python benchmarks/tpu_batched_matmul_compile.py [H ...]
Prints a table and one JSON line.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sashimi_jax.models.ssm import channel_map  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax.models.ssm import dplr  # pylint: disable=g-import-not-at-top,wrong-import-position

EXPONENT = 16000
NUM_STATE = 64
GROUP = 8


def _forms():
  power = lambda a: dplr._matrix_power_one(a, EXPONENT)  # pylint: disable=protected-access
  return {
      "batched": jax.vmap(power),
      "mapped": lambda a: channel_map.map_channels(power, a, channels_per_trip=1),
      "mapped8": lambda a: channel_map.map_channels(power, a, channels_per_trip=GROUP),
  }


def main(argv):
  widths = [int(h) for h in argv[1:]] or [64, 256]
  device = topologies.get_topology_desc(
      platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
      chips_per_host_bounds=(2, 2, 1), num_slices=1).devices[0]
  rows = []
  for width in widths:
    spec = jax.ShapeDtypeStruct((width, NUM_STATE, NUM_STATE), jnp.float32,
                                sharding=SingleDeviceSharding(device))
    for name, form in _forms().items():
      loss = lambda a, form=form: jnp.sum(form(a) ** 2)
      start = time.perf_counter()
      jax.jit(jax.grad(loss)).lower(spec).compile()
      rows.append({"form": name, "H": width, "compile_s": round(time.perf_counter() - start, 1)})
  print("form | H | compile s")
  for row in rows:
    print(f"{row['form']} | {row['H']} | {row['compile_s']}")
  print(json.dumps({"benchmark": "tpu_batched_matmul_compile", "load": os.getloadavg(),
                    "rows": rows}))


if __name__ == "__main__":
  main(sys.argv)
