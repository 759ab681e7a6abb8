"""Train-step throughput (tokens/s, s/step) for the tiny and SC09 configs, mono and stereo.

Times the compiled train step alone (random tokens, no data pipeline) on the local devices.

  python benchmarks/train_throughput.py                      # all four cases
  python benchmarks/train_throughput.py --cases=tiny_stereo --steps=10 --batch_size=4

Cases: tiny_mono, tiny_stereo (configs/stereo_temporal.py:tiny with is_stereo False/True),
sc09_mono, sc09_stereo (configs/sc09.py, the stereo variant with the same 16000 frames =
32000 tokens). --batch_size overrides the config's global batch (SC09's 32 is slow on a CPU;
the default here is 1 for SC09). Numbers on a shared machine are noisy: report the minimum.
All cases are compiled first, then timed one step each in turn
(`--model_variants=base,input_conv_width=0+fine_conv_width=0` compares model variants side by side).
"""

import json
import os
import runpy
import time

from absl import app
from absl import flags
import jax
import numpy as np

from sashimi_jax import config as config_lib
from sashimi_jax import sharding
from sashimi_jax import state as state_lib
from sashimi_jax import train

_CASES = flags.DEFINE_list("cases", ["tiny_mono", "tiny_stereo", "sc09_mono", "sc09_stereo"],
                           "Which configurations to time.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per case (after one warm-up step).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch override (0: tiny config's, SC09 1).")
_MODEL_VARIANTS = flags.DEFINE_list(
    "model_variants", ["base"], "Model overrides to time side by side, each "
    "`field=value[+field=value...]` (`base` = the case's config as it is).")


def case_config(name: str):
  """The config of a benchmark case."""
  preset, channels = name.rsplit("_", 1)
  if preset == "tiny":
    config = runpy.run_path("configs/stereo_temporal.py")["get_config"]("tiny")
  elif preset == "sc09":
    config = runpy.run_path("configs/sc09.py")["get_config"](None)
    config.train.batch_size = 1
  else:
    raise ValueError(f"unknown case {name!r}")
  config.dataset.is_stereo = channels == "stereo"
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  return config


def prepare_case(config) -> dict:
  """Compiles the train step of `config` on a random batch; runs it once (warm-up)."""
  mesh = sharding.create_mesh()
  graphdef, state, tx = state_lib.init_train_state(config, mesh)
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)
  step = train.jit_train_step(config, graphdef, tx, mesh, shardings)
  tokens = config_lib.token_stream_length(config.dataset)
  batch_size = int(config.train.batch_size)
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2**config.dataset.bits, (batch_size, tokens), dtype=np.int32)
  x = np.concatenate([np.full((batch_size, 1), 2**(config.dataset.bits - 1), np.int32),
                      y[:, :-1]], axis=1)
  batch = sharding.global_batch(mesh, {"x": x, "y": y})
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state["params"]))
  return {"compiled": compiled, "state": state, "batch": batch, "times": [],
          "params": params, "tokens_per_step": batch_size * tokens,
          "compile_seconds": compile_seconds}


def time_round_robin(cases: list[dict], steps: int) -> None:
  """Times `steps` steps of every case, one step of each in turn, so that load changing over
  time on a shared machine hits every case alike; appends to each case's `times`."""
  for _ in range(steps):
    for case in cases:
      start = time.perf_counter()
      case["state"], metrics = case["compiled"](case["state"], case["batch"])
      jax.block_until_ready(metrics)
      case["times"].append(time.perf_counter() - start)


def main(argv):
  del argv
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
  labels, cases = [], []
  for name in _CASES.value:
    for variant in _MODEL_VARIANTS.value:
      config = case_config(name)
      for field in ([] if variant == "base" else variant.split("+")):
        key, value = field.split("=")
        config.model[key] = int(value) if value.isdigit() else value
      labels.append(name if variant == "base" else f"{name}+{variant}")
      cases.append(prepare_case(config))
  time_round_robin(cases, _STEPS.value)
  print(f"{'case':<20} {'params':>9} {'tokens/step':>11} {'compile s':>9} {'s/step min':>10} "
        f"{'s/step med':>10} {'tokens/s':>10}")
  rows = []
  for label, r in zip(labels, cases):
    best = min(r["times"])
    row = {"case": label, "params": r["params"], "tokens_per_step": r["tokens_per_step"],
           "compile_seconds": r["compile_seconds"], "seconds_per_step_min": best,
           "seconds_per_step_median": float(np.median(r["times"])),
           "tokens_per_second": r["tokens_per_step"] / best}
    rows.append(row)
    print(f"{label:<20} {row['params']:>9,} {row['tokens_per_step']:>11,} "
          f"{row['compile_seconds']:>9.1f} {best:>10.3f} {row['seconds_per_step_median']:>10.3f} "
          f"{row['tokens_per_second']:>10,.0f}", flush=True)
  print(json.dumps({"benchmark": "train_throughput", "load": os.getloadavg()[0], "rows": rows}))


if __name__ == "__main__":
  app.run(main)
