"""Cost of one S4 layer's long convolution per token, by implementation (`model.conv_impl`).

Run (from the repository root; the TPU columns need libtpu, e.g. the `.[tpu]` extra):
  PYTHONPATH=. python benchmarks/conv_cost.py
  PYTHONPATH=. python benchmarks/conv_cost.py --lengths=16000 --layers=s4 --chunks=32,64,128
  PYTHONPATH=. python benchmarks/conv_cost.py --tpu=false     # CPU columns only

One layer (H = --channels, d_state 64, batch 1), forward + backward of the kernel and the
convolution together (what a train step pays), for each implementation:
  fft       kernel in time (Vandermonde / Cauchy + irfft), three FFTs of n >= 2L (today's path)
  fft_freq  kernel evaluated at the 2L-point roots of unity, two FFTs
  chunked   state passed between chunks of C tokens: matmuls and a scan, no FFT
and L in --lengths tokens. Columns: TPU v5e AOT FLOPs and bytes accessed per token and peak
memory (compile-only devices, XLA's cost and memory analysis of the compiled program), CPU
seconds per token (minimum wall time of --repeats warm runs) and compiled CPU peak memory.
Prints a table and a JSON line.

XLA's cost analysis counts the body of a while loop once (checked: a 10-step scan of a matmul
reports one matmul), which would undercount the chunk scan (L / C - 1 steps), the DPLR dense
solve's loop and the `fft` path's Cauchy lax.map over node chunks. The TPU FLOP column is
therefore counted from the compiled HLO with every loop multiplied by its trip count
(benchmarks/hlo_flops.py); bytes accessed are XLA's (loop bodies once).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx

from sashimi_jax.models.kernels import ssm_kernel
from sashimi_jax.models.ssm import chunkconv
from sashimi_jax.models.ssm import fftconv
from sashimi_jax.models.ssm import freqconv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hlo_flops  # pylint: disable=g-import-not-at-top,wrong-import-position

_LAYERS = flags.DEFINE_list("layers", ["s4d", "s4"], "s4d and/or s4 (DPLR).")
_LENGTHS = flags.DEFINE_list("lengths", ["1024", "4096", "16000", "65536", "262144"],
                             "Tokens per sequence.")
_IMPLS = flags.DEFINE_list("impls", ["fft", "fft_freq", "chunked"], "Implementations.")
_CHUNKS = flags.DEFINE_list("chunks", ["64"], "Chunk sizes C of `chunked`.")
_CHANNELS = flags.DEFINE_integer("channels", 64, "Channels H of the layer.")
_TPU = flags.DEFINE_bool("tpu", True, "Also compile for a compile-only TPU v5e chip.")
_CPU = flags.DEFINE_bool("cpu", True, "Time on this CPU.")
_CPU_MAX_TOKENS = flags.DEFINE_integer("cpu_max_tokens", 65536, "Longest L timed on the CPU.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs after a warm-up (minimum reported).")

MIB = 2**20


def _loss_fn(layer: str, impl: str, chunk: int, graphdef):
  """(kernel state, u (1, L, H), g (1, L, H)) -> sum(conv(u) * g); gradients w.r.t. both."""

  def loss(state, u, g):
    kernel = nnx.merge(graphdef, state)
    length = u.shape[1]
    if impl == "fft":
      y = fftconv.causal_fft_conv(u, kernel(length))
    elif impl == "fft_freq":
      y = freqconv.causal_spectrum_conv(u, kernel.spectrum(length))
    else:
      y = chunkconv.chunked_causal_conv(u, kernel.chunk_ops(min(chunk, length)))
    return jnp.sum(y * g)

  del layer
  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _peak_mib(compiled) -> float:
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes) / MIB


def _tpu_device():
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topology = topologies.get_topology_desc(
      platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
      chips_per_host_bounds=(2, 2, 1), num_slices=1)
  return topology.devices[0]


def measure(layer: str, impl: str, chunk: int, length: int, tpu_device) -> dict:
  """One row: per-token TPU FLOPs/bytes, TPU and CPU peak MiB, CPU seconds per token."""
  kernel = ssm_kernel(_CHANNELS.value, layer=layer, d_state=64, n_ssm=1, l_max=length,
                      rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(kernel)
  step = _loss_fn(layer, impl, chunk, graphdef)
  shape = (1, length, _CHANNELS.value)
  row = {"layer": layer, "impl": impl, "chunk": chunk if impl == "chunked" else None,
         "tokens": length}
  if tpu_device is not None:
    sharding = jax.sharding.SingleDeviceSharding(tpu_device)
    spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    abstract = (jax.tree.map(spec, state), spec(jnp.zeros(shape)), spec(jnp.zeros(shape)))
    compiled = jax.jit(step, in_shardings=jax.tree.map(lambda _: sharding, abstract)).lower(
        *abstract).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    row.update(tpu_kflop_per_token=hlo_flops.count_flops(compiled.as_text()).flops / length / 1e3,
               xla_kflop_per_token_loop_bodies_once=float(cost.get("flops", math.nan)) / length
               / 1e3,
               tpu_kbytes_per_token=float(cost.get("bytes accessed", math.nan)) / length / 1e3,
               tpu_peak_mib=_peak_mib(compiled))
  if _CPU.value and length <= _CPU_MAX_TOKENS.value:
    u = jax.random.normal(jax.random.key(1), shape)
    g = jax.random.normal(jax.random.key(2), shape)
    compiled = step.lower(state, u, g).compile()
    jax.block_until_ready(compiled(state, u, g))
    best = math.inf
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(compiled(state, u, g))
      best = min(best, time.perf_counter() - start)
    row.update(cpu_us_per_token=best / length * 1e6, cpu_peak_mib=_peak_mib(compiled))
  return row


def main(argv):
  del argv
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  tpu_device = _tpu_device() if _TPU.value else None
  print(f"{'layer':<5} {'impl':<9} {'C':>4} {'tokens':>7} {'TPU kFLOP/tok':>13} "
        f"{'TPU kB/tok':>10} {'TPU peak MiB':>12} {'CPU us/tok':>10} {'CPU peak MiB':>12}")
  rows = []
  nan = math.nan
  for layer in _LAYERS.value:
    for length in (int(x) for x in _LENGTHS.value):
      for impl in _IMPLS.value:
        for chunk in ([int(c) for c in _CHUNKS.value] if impl == "chunked" else [0]):
          r = measure(layer, impl, chunk, length, tpu_device)
          rows.append(r)
          print(f"{layer:<5} {impl:<9} {chunk or '':>4} {length:>7} "
                f"{r.get('tpu_kflop_per_token', nan):>13.1f} "
                f"{r.get('tpu_kbytes_per_token', nan):>10.1f} {r.get('tpu_peak_mib', nan):>12.1f} "
                f"{r.get('cpu_us_per_token', nan):>10.3f} {r.get('cpu_peak_mib', nan):>12.1f}",
                flush=True)
  print(json.dumps({"benchmark": "conv_cost", "channels": _CHANNELS.value, "batch": 1,
                    "load_average": os.getloadavg()[0], "rows": rows}))


if __name__ == "__main__":
  app.run(main)
