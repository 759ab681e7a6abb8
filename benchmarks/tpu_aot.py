"""Compile the real train steps for TPU pods on a CPU host; print per-chip peak memory and FLOPs.

Needs libtpu (compile-only TPU devices, no TPU required):
  pip install "jax[tpu]"          # or: pip install --target DIR libtpu==<version jax wants>
  ALLOW_MULTIPLE_LIBTPU_LOAD=1 python benchmarks/tpu_aot.py
  python benchmarks/tpu_aot.py --libtpu_path=DIR --topologies=v5e:4x4 --cases=sc09
  python benchmarks/tpu_aot.py --topologies=v5e:4x4,v5e:16x16 --remat=block \
      --compute_dtype=float32,bfloat16       # each case in each variant

For each case (SC09 mono: configs/sc09.py; YouTubeMix stereo: configs/youtubemix.py:stereo, a
262144-token stream) and topology (v5e:4x4 = 16 chips, v5e:16x16 = 256 chips, v4:2x2x2 = 8 chips)
it lowers and compiles `train.jit_train_step` with the run's shardings at a fixed per-chip batch,
then prints XLA's memory analysis and FLOPs (both per chip: the module is SPMD-partitioned).

FLOPs: XLA's `cost_analysis()` counts the body of a while loop once, and the train step runs each
stage's layers under one `lax.scan` (and `conv_impl=chunked` scans over chunks), so its figure
counts one layer per stage. `TFLOP/chip` here is counted from the compiled HLO by
`benchmarks/hlo_flops.py` with every loop multiplied by its trip count (checked against XLA's own
count of fully unrolled programs); XLA's loop-once figure is printed alongside as `XLA TFLOP`.
`GB acc.` is XLA's bytes accessed per chip (loop bodies once, like its FLOPs). `compile s` is wall
time (lowering + compiling); `CPU s` the process's CPU time over the same span, which a busy host
inflates less.
Data parallelism must keep per-chip memory flat as chips are added; the script exits non-zero if
peak memory grows more than 10% from the smallest to the largest pod of the same TPU generation.
"""

import json
import os
import runpy
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hlo_flops  # pylint: disable=g-import-not-at-top,wrong-import-position

_LIBTPU_PATH = flags.DEFINE_string("libtpu_path", "", "Directory holding the libtpu package, if "
                                   "it is not installed in the environment.")
_TOPOLOGIES = flags.DEFINE_list("topologies", ["v4:2x2x2", "v5e:4x4", "v5e:16x16"],
                                "TPU topologies (compile-only).")
_CASES = flags.DEFINE_list("cases", ["sc09", "youtubemix_stereo"], "Configs to compile.")
_PER_CHIP_BATCH = flags.DEFINE_integer("per_chip_batch", 1, "Examples per chip per step.")
_SHARD_OPT = flags.DEFINE_bool("shard_optimizer_state", False, "Split the optimizer state.")
_CONV_IMPL = flags.DEFINE_string("conv_impl", "", "Override model.conv_impl (e.g. fft, chunked); "
                                  "empty keeps the config's (auto).")
_REMAT = flags.DEFINE_list("remat", ["config"], "model.remat values to compile (none, block); "
                           "'config' keeps the config's.")
_COMPUTE_DTYPE = flags.DEFINE_list("compute_dtype", ["config"], "model.compute_dtype values to "
                                   "compile (float32, bfloat16); 'config' keeps the config's.")
_SAMPLE_LEN = flags.DEFINE_integer("sample_len", 0, "Override dataset.sample_len (frames) for a "
                                   "quicker probe; 0 keeps the config's.")

MIB = 2**20


def case_config(name: str):
  if name == "sc09":
    return runpy.run_path("configs/sc09.py")["get_config"](None)
  if name == "youtubemix_stereo":
    return runpy.run_path("configs/youtubemix.py")["get_config"]("stereo")
  raise ValueError(f"unknown case {name!r}; use sc09 or youtubemix_stereo")


def compile_case(config, topology_name: str, remat: str = "config",
                 compute_dtype: str = "config") -> dict:
  """Compiles the train step of `config` for `topology_name`; returns per-chip figures."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from sashimi_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from sashimi_jax import sharding, train  # pylint: disable=g-import-not-at-top
  from sashimi_jax.models import s4  # pylint: disable=g-import-not-at-top
  from sashimi_jax import state as state_lib  # pylint: disable=g-import-not-at-top

  topology = topologies.get_topology_desc(
      platform="tpu", topology_name=topology_name, chip_config_name="default",
      chips_per_host_bounds=(2, 2, 1), num_slices=1)
  devices = topology.devices
  num_chips = len(devices)
  config.train.batch_size = _PER_CHIP_BATCH.value * num_chips
  if _SAMPLE_LEN.value:
    config.dataset.sample_len = _SAMPLE_LEN.value
  if _CONV_IMPL.value:
    config.model.conv_impl = _CONV_IMPL.value
  # `auto` resolves for the tracing host's backend (CPU here): resolve it for the TPU target.
  config.model.conv_impl = s4.resolve_conv_impl(config.model.conv_impl, "tpu")
  if remat != "config":
    config.model.remat = remat
  if compute_dtype != "config":
    config.model.compute_dtype = compute_dtype
  config.train.shard_optimizer_state = _SHARD_OPT.value
  config_lib.validate(config, num_devices=num_chips)
  mesh = sharding.create_mesh(devices)
  graphdef, abstract_state, tx = state_lib.abstract_train_state(config, mesh)
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, abstract_state)
  tokens = config_lib.token_stream_length(config.dataset)
  batch_spec = jax.ShapeDtypeStruct((config.train.batch_size, tokens), jax.numpy.int32,
                                    sharding=sharding.batch_sharding(mesh))
  step = train.jit_train_step(config, graphdef, tx, mesh, shardings)
  start, start_cpu = time.perf_counter(), time.process_time()
  compiled = step.lower(abstract_state, {"x": batch_spec, "y": batch_spec}).compile()
  compile_seconds = time.perf_counter() - start
  compile_cpu_seconds = time.process_time() - start_cpu
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  counted = hlo_flops.count_flops(compiled.as_text())
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return {"remat": config.model.remat, "compute_dtype": config.model.compute_dtype,
          "chips": num_chips, "tokens_per_chip": _PER_CHIP_BATCH.value * tokens,
          "peak_mib": peak / MIB, "argument_mib": memory.argument_size_in_bytes / MIB,
          "temp_mib": memory.temp_size_in_bytes / MIB,
          "tflops_per_chip": counted.flops / 1e12,
          "xla_tflops_per_chip_loop_bodies_once": float(cost.get("flops", float("nan"))) / 1e12,
          "xla_gbytes_accessed_per_chip": float(cost.get("bytes accessed", float("nan"))) / 1e9,
          "compile_seconds": compile_seconds, "compile_cpu_seconds": compile_cpu_seconds}


def main(argv):
  del argv
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if _LIBTPU_PATH.value:
    sys.path.insert(0, _LIBTPU_PATH.value)
  failures = []
  print(f"{'case':<18} {'remat':<5} {'dtype':<8} {'topology':<10} {'chips':>5} {'tokens/chip':>11} {'peak MiB':>9} "
        f"{'args MiB':>9} {'temp MiB':>9} {'TFLOP/chip':>10} {'XLA TFLOP':>9} {'GB acc.':>8} "
        f"{'compile s':>9} {'CPU s':>7} {'load':>5}")
  rows = []
  variants = [(r, d) for r in _REMAT.value for d in _COMPUTE_DTYPE.value]
  for case, (remat, dtype) in [(c, v) for c in _CASES.value for v in variants]:
    by_generation = {}
    for topology_name in _TOPOLOGIES.value:
      r = compile_case(case_config(case), topology_name, remat, dtype)
      print(f"{case:<18} {r['remat']:<5} {r['compute_dtype']:<8} {topology_name:<10} {r['chips']:>5} {r['tokens_per_chip']:>11,} "
            f"{r['peak_mib']:>9.1f} {r['argument_mib']:>9.1f} {r['temp_mib']:>9.1f} "
            f"{r['tflops_per_chip']:>10.3f} {r['xla_tflops_per_chip_loop_bodies_once']:>9.3f} "
            f"{r['xla_gbytes_accessed_per_chip']:>8.2f} {r['compile_seconds']:>9.0f} "
            f"{r['compile_cpu_seconds']:>7.0f} "
            f"{os.getloadavg()[0]:>5.1f}", flush=True)
      rows.append(dict(r, case=case, topology=topology_name, load_average=os.getloadavg()[0]))
      by_generation.setdefault(topology_name.split(":")[0], []).append(r)
    for generation, results in by_generation.items():
      results.sort(key=lambda r: r["chips"])
      if len(results) > 1 and results[-1]["peak_mib"] > 1.1 * results[0]["peak_mib"]:
        failures.append(f"{case} on {generation}: per-chip peak grew from "
                        f"{results[0]['peak_mib']:.1f} MiB ({results[0]['chips']} chips) to "
                        f"{results[-1]['peak_mib']:.1f} MiB ({results[-1]['chips']} chips)")
  print(json.dumps({"benchmark": "tpu_aot", "per_chip_batch": _PER_CHIP_BATCH.value,
                    "conv_impl": _CONV_IMPL.value or "config",
                    "rows": rows}))
  if failures:
    print("FAIL: " + "; ".join(failures))
    sys.exit(1)
  print("OK: per-chip peak memory does not grow with the number of chips.")


if __name__ == "__main__":
  app.run(main)
