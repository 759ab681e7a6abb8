"""Seconds to compile the SaShiMi train step, by depth (n_layers per stage) and layer type.

Run (from the repository root):
  PYTHONPATH=. python benchmarks/compile_time.py                      # n_layers 1,2,4,8; s4, s4d
  PYTHONPATH=. python benchmarks/compile_time.py --n_layers=2,8 --layers=s4 --remat=block
To time another checkout's model with this script, point PYTHONPATH at it (flags the model does
not know, such as --remat, must then keep their defaults).

Model: the SC09 SaShiMi of benchmarks/model_speed.py (d_model 64, pool [4, 4], 256 tokens), batch
1, --length tokens. Each row traces, lowers and compiles one fresh jit of forward + backward +
AdamW (nothing is run, no compilation cache), in a fresh process per row so that no trace or
compile cache is shared: `lower_s` (tracing + lowering) and `compile_s` (XLA) are wall seconds.
The machine is shared: take the minimum of --repeats fresh processes and record `uptime` load.
Prints a table and a JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_speed  # pylint: disable=g-import-not-at-top,wrong-import-position  (its flags too)

# Shared with model_speed: --layers, --n_layers, --remat, --compute_dtype, --repeats.
flags.FLAGS.set_default("layers", ["s4", "s4d"])
flags.FLAGS.set_default("n_layers", ["1", "2", "4", "8"])
_LENGTH = flags.DEFINE_integer("length", 16000, "Tokens per sequence (16000 = one SC09 clip).")
flags.FLAGS.set_default("repeats", 1)  # here: fresh processes per row (minimum reported).
_ONE = flags.DEFINE_string("one", "", "Internal: measure one 'layer,n_layers' row and print it.")


def _measure_one(layer: str, n_layers: int) -> dict:
  """Traces, lowers and compiles one train step in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  options = model_speed.model_options()
  length = _LENGTH.value
  graphdef, params = model_speed.abstract_model(layer, n_layers, length, **options)
  optimizer = optax.adamw(1e-3, weight_decay=0.0)
  opt_state = jax.eval_shape(optimizer.init, params)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  step = model_speed.make_train_step(graphdef, optimizer)
  start = time.perf_counter()
  lowered = step.lower(params, opt_state, tokens, tokens)
  lowered_at = time.perf_counter()
  lowered.compile()
  done = time.perf_counter()
  return {"layer": layer, "n_layers": n_layers, "tokens": length, **options, "lower_s": round(lowered_at - start, 1),
          "compile_s": round(done - lowered_at, 1), "total_s": round(done - start, 1)}


def main(argv):
  del argv
  if _ONE.value:
    layer, n_layers = _ONE.value.split(",")
    print("ROW " + json.dumps(_measure_one(layer, int(n_layers))), flush=True)
    return
  rows = []
  for layer in flags.FLAGS.layers:
    for n_layers in map(int, flags.FLAGS.n_layers):
      best = None
      for _ in range(flags.FLAGS.repeats):
        flags_ = [f"--{name}={flags.FLAGS[name].value}" for name in
                  ("length", "remat", "compute_dtype")]
        out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--one={layer},{n_layers}"]
                             + flags_, check=True, capture_output=True, text=True).stdout
        row = json.loads(next(l for l in out.splitlines() if l.startswith("ROW "))[4:])
        if best is None or row["total_s"] < best["total_s"]:
          best = row
      rows.append(best)
      print(best, flush=True)
  model_speed.print_table(rows)
  print(json.dumps({"benchmark": "compile_time", "load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
  app.run(main)
