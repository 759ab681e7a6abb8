"""Cost of checkpoint integrity checks: manifest (size + CRC32 of every file) vs the save itself.

Run (from the repository root):
  python benchmarks/checkpoint_integrity.py                 # 16 and 256 MiB states
  python benchmarks/checkpoint_integrity.py --mib=1024

Saves a state of random float32 arrays with `Checkpointer.save` (which writes and verifies the
manifest), then times `write_manifest` and `manifest_problem` (the resume-time check) alone on the
saved step. Minimum of --repeats runs. Prints a table and one JSON line.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import grain
import jax.numpy as jnp
import numpy as np

from sashimi_jax import checkpoint
from sashimi_jax import checkpoint_integrity as integrity

_MIB = flags.DEFINE_list("mib", ["16", "256"], "State sizes in MiB.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per size; the minimum is reported.")


def _best(fn, repeats):
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main(argv):
  del argv
  rows = []
  for mib in (int(m) for m in _MIB.value):
    values = mib * 2**20 // 4 // 8
    rng = np.random.default_rng(0)
    state = {"params": {f"w{i}": jnp.asarray(rng.standard_normal(values, np.float32))
                        for i in range(8)}, "step": jnp.zeros((), jnp.int32)}
    with tempfile.TemporaryDirectory() as workdir:
      ckpt = checkpoint.Checkpointer(workdir, keep=100)
      iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
      steps = iter(range(1, 1000))
      save = _best(lambda: ckpt.save(next(steps), state, iterator, {"seed": 0}), _REPEATS.value)
      step_dir = ckpt.step_dir(ckpt.latest_step())
      write = _best(lambda: integrity.write_manifest(step_dir), _REPEATS.value)
      check = _best(lambda: integrity.manifest_problem(step_dir), _REPEATS.value)
      ckpt.close()
    rows.append({"mib": mib, "save_seconds": save, "write_manifest_seconds": write,
                 "check_manifest_seconds": check})
  load = os.getloadavg()
  print(f"load average {load[0]:.1f}")
  print(f"{'MiB':>6} {'save s':>8} {'manifest s':>11} {'check s':>8} {'manifest/save':>14}")
  for r in rows:
    print(f"{r['mib']:>6} {r['save_seconds']:>8.3f} {r['write_manifest_seconds']:>11.3f} "
          f"{r['check_manifest_seconds']:>8.3f} {r['write_manifest_seconds'] / r['save_seconds']:>14.1%}")
  print(json.dumps({"benchmark": "checkpoint_integrity", "load_average": [round(x, 2) for x in load],
                    "rows": rows}))


if __name__ == "__main__":
  app.run(main)
