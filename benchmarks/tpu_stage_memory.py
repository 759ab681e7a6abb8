"""Peak memory and FLOPs of one SaShiMi stage's train pass on a compile-only TPU v5e chip.

A quicker probe than the whole train step (benchmarks/tpu_aot.py) for where a convolution's memory
goes: `--layers` scanned (S4, FF) pairs of width `--width` at `--tokens` tokens, batch 1, forward
+ backward of sum(y^2), for each `--conv_impls`. The SC09 center stage (where `chunked` once
needed 5x the temporaries of `fft`):
  PYTHONPATH=. python benchmarks/tpu_stage_memory.py --width=256 --tokens=1000 --layers=8
Add XLA_FLAGS=--xla_dump_to=DIR for the buffer assignment (`*memory-usage-report.txt` lists the
largest buffers). Prints a table and a JSON line.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hlo_flops  # pylint: disable=g-import-not-at-top,wrong-import-position

_WIDTH = flags.DEFINE_integer("width", 256, "Channels H of the stage.")
_TOKENS = flags.DEFINE_integer("tokens", 1000, "Sequence length L at the stage.")
_LAYERS = flags.DEFINE_integer("layers", 8, "Scanned (S4, FF) pairs.")
_LAYER = flags.DEFINE_string("layer", "s4", "s4 (DPLR, LegS) or s4d.")
_CONV_IMPLS = flags.DEFINE_list("conv_impls", ["fft", "chunked"], "model.conv_impl values.")

MIB = 2**20


def measure(conv_impl: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from sashimi_jax.models.stage import Stage  # pylint: disable=g-import-not-at-top

  device = topologies.get_topology_desc(
      platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
      chips_per_host_bounds=(2, 2, 1), num_slices=1).devices[0]
  stage = Stage(_WIDTH.value, n_layers=_LAYERS.value, ff=2, dropout=0.0, rngs=nnx.Rngs(0),
                l_max=_TOKENS.value, layer=_LAYER.value, d_state=64, n_ssm=1,
                conv_impl=conv_impl, init="legs" if _LAYER.value == "s4" else None)
  graphdef, state = nnx.split(stage)

  def loss(state, x):
    y, _ = nnx.merge(graphdef, state)(x)
    return jnp.sum(y * y)

  sharding = jax.sharding.SingleDeviceSharding(device)
  spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
  args = (jax.tree.map(spec, state), spec(jnp.zeros((1, _TOKENS.value, _WIDTH.value))))
  start = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss)).lower(*args).compile()
  memory = compiled.memory_analysis()
  return {"conv_impl": conv_impl, "temp_mib": memory.temp_size_in_bytes / MIB,
          "argument_mib": memory.argument_size_in_bytes / MIB,
          "gflop": hlo_flops.count_flops(compiled.as_text()).flops / 1e9,
          "compile_seconds": time.perf_counter() - start, "load_average": os.getloadavg()[0]}


def main(argv):
  del argv
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  print(f"{'conv':<9} {'temp MiB':>9} {'args MiB':>9} {'GFLOP':>8} {'compile s':>9} {'load':>5}")
  rows = []
  for conv_impl in _CONV_IMPLS.value:
    r = measure(conv_impl)
    rows.append(r)
    print(f"{conv_impl:<9} {r['temp_mib']:>9.1f} {r['argument_mib']:>9.1f} {r['gflop']:>8.1f} "
          f"{r['compile_seconds']:>9.0f} {r['load_average']:>5.1f}", flush=True)
  print(json.dumps({"benchmark": "tpu_stage_memory", "width": _WIDTH.value,
                    "tokens": _TOKENS.value, "layers": _LAYERS.value, "layer": _LAYER.value,
                    "rows": rows}))


if __name__ == "__main__":
  app.run(main)
