"""Compile time on a compile-only TPU v5e of the DPLR matrix power, batched vs mapped over channels.

Why: XLA:TPU emits code per batch element for batched HIGHEST-precision small matmuls, so the
DPLR algebra (matrix powers, Krylov blocks, solves on (H, N, N) arrays) dominates compile time of
full models (README "Training", TPU section). This isolates one such piece, grad of
sum(A^16000 ** 2) for (H, 64, 64) A, in three forms:
  batched:  dplr.matrix_power on the whole (H, N, N) array (today's code);
  mapped:   jax.lax.map over the H channels (one (N, N) body);
  mapped8:  jax.lax.map over groups of 8 channels.
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
from sashimi_jax.models.ssm import dplr  # pylint: disable=g-import-not-at-top,wrong-import-position

EXPONENT = 16000
NUM_STATE = 64
GROUP = 8


def _forms():
  power = lambda a: dplr.matrix_power(a, EXPONENT)
  return {
      "batched": power,
      "mapped": lambda a: jax.lax.map(lambda x: power(x[None])[0], a),
      "mapped8": lambda a: jax.lax.map(power, a.reshape(-1, GROUP, NUM_STATE, NUM_STATE)),
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
