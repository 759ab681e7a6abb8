"""Seconds to compile one S4 layer's forward + backward for a compile-only TPU v5e chip.

Why: full TPU AOT compiles of the train step (benchmarks/tpu_aot.py) take many minutes; one layer
compiles in seconds to minutes and shows which part of a layer the TPU backend spends its time
on. Each row lowers and compiles grad of sum(S4Block(x) ** 2) with respect to the parameters and
x (batch 1, H channels, L tokens) for one v5e chip; nothing is run (no TPU here). Wall seconds
and the process's CPU seconds are printed (the latter less inflated on a busy host).
To time another checkout's layer, point PYTHONPATH at it.

Run (needs libtpu, the `.[tpu]` extra):
  PYTHONPATH=. python benchmarks/tpu_layer_compile.py --layers=s4,s4d --conv_impls=fft,chunked \
      --width=64 --lengths=1024
  PYTHONPATH=. python benchmarks/tpu_layer_compile.py --pieces=chunk_ops,chunked_conv --width=256
Prints a table and one JSON line.
"""

import json
import os
import time

from absl import app
from absl import flags


_LAYERS = flags.DEFINE_list("layers", ["s4", "s4d"], "s4 (DPLR) and/or s4d.")
_CONV_IMPLS = flags.DEFINE_list("conv_impls", ["fft", "chunked"], "model.conv_impl values.")
_WIDTH = flags.DEFINE_integer("width", 64, "Channels H.")
_LENGTHS = flags.DEFINE_list("lengths", ["1024"], "Tokens L (also the layer's l_max).")
_PIECES = flags.DEFINE_list("pieces", [], "Instead of whole layers, DPLR pieces (grad, H = "
                            "--width, l_max = L, chunk 64): chunk_ops, chunked_conv, "
                            "matrix_power (to L), krylov (64 columns).")


def _device_sharding():
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from jax.sharding import SingleDeviceSharding  # pylint: disable=g-import-not-at-top
  device = topologies.get_topology_desc(
      platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
      chips_per_host_bounds=(2, 2, 1), num_slices=1).devices[0]
  return SingleDeviceSharding(device)


def _timed_compile(fn, *specs) -> dict:
  """Lowers and compiles grad of fn (all arguments) for the specs; wall and CPU seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  start, start_cpu = time.perf_counter(), time.process_time()
  lowered = jax.jit(jax.grad(fn, argnums=tuple(range(len(specs))))).lower(*specs)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at, compiled_at_cpu = time.perf_counter(), time.process_time()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"lower_s": round(lowered_at - start, 1), "compile_s": round(compiled_at - lowered_at, 1),
          "lower_compile_cpu_s": round(compiled_at_cpu - start_cpu, 1),
          "xla_gflop_loops_once": round(float(cost.get("flops", float("nan"))) / 1e9, 3),
          "load_average": round(os.getloadavg()[0], 1)}


def _given(operators):
  """The operators themselves (the chunked_conv piece convolves with given operators)."""
  return operators


def piece_row(piece: str, width: int, length: int, chunk: int = 64) -> dict:
  """Compiles grad of one piece of the chunked DPLR layer for one v5e chip."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sashimi_jax.models import kernels  # pylint: disable=g-import-not-at-top
  from sashimi_jax.models.ssm import chunkconv, dplr  # pylint: disable=g-import-not-at-top

  sharding = _device_sharding()
  spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
  squares = lambda tree: sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree))
  kernel = kernels.ssm_kernel(width, layer="s4", d_state=64, n_ssm=1, l_max=length,
                              rngs=nnx.Rngs(0))
  args = [spec(a) for a in kernel.ssm_args()]
  # dplr_chunk_ops binds the parameters to a builder; calling it builds the operator dict.
  build = lambda *a: chunkconv.dplr_chunk_ops(*a, chunk=chunk, l_max=length)()
  matrices = spec(jax.ShapeDtypeStruct((width, 64, 64), jnp.float32))
  vectors = spec(jax.ShapeDtypeStruct((width, 64), jnp.float32))
  fn, specs = {
      "chunk_ops": (lambda *a: squares(build(*a)), args),
      "chunked_conv": (lambda u, ops: squares(chunkconv.chunked_causal_conv(
          u, jax.tree_util.Partial(_given, ops))),
                       [spec(jax.ShapeDtypeStruct((1, length, width), jnp.float32)),
                        jax.tree_util.tree_map(spec, jax.eval_shape(build, *args))]),
      "matrix_power": (lambda a: squares(dplr.matrix_power(a, length)), [matrices]),
      "krylov": (lambda a, b: squares(dplr.krylov(a, b, chunk)), [matrices, vectors]),
  }[piece]
  return {"layer": f"s4 piece {piece}", "conv_impl": "chunked", "H": width, "L": length,
          **_timed_compile(fn, *specs)}


def compile_row(layer: str, conv_impl: str, width: int, length: int) -> dict:
  """Lowers and compiles one layer's gradient for one v5e chip; returns the timings."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sashimi_jax.models import s4  # pylint: disable=g-import-not-at-top

  sharding = _device_sharding()
  block = s4.S4Block(width, l_max=length, layer=layer, conv_impl=conv_impl, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(block)

  def loss(params, x):
    return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

  spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)
  x = jax.ShapeDtypeStruct((1, length, width), jnp.float32, sharding=sharding)
  return {"layer": layer, "conv_impl": conv_impl, "H": width, "L": length,
          **_timed_compile(loss, jax.tree_util.tree_map(spec, params), x)}


def main(argv):
  del argv
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  rows = []
  print("layer | conv_impl | H | L | lower s | compile s | lower + compile CPU s | "
        "XLA GFLOP (loops once) | load")
  for length in map(int, _LENGTHS.value):
    jobs = ([lambda p=p: piece_row(p, _WIDTH.value, length) for p in _PIECES.value]
            or [lambda l=l, c=c: compile_row(l, c, _WIDTH.value, length)
                for l in _LAYERS.value for c in _CONV_IMPLS.value])
    for job in jobs:
      row = job()
      rows.append(row)
      print(" | ".join(str(v) for v in row.values()), flush=True)
  print(json.dumps({"benchmark": "tpu_layer_compile", "rows": rows}))


if __name__ == "__main__":
  app.run(main)
