"""CPU/GPU seconds of the DPLR layer's dense per-channel algebra (forward + backward).

Times, on the local backend, jit'd pieces that use dplr.matrix_power / dplr.krylov (run per
group of channels by models/ssm/channel_map.py): the chunked convolution's operators with their
gradient (`conv_impl=chunked` train step), the recurrence set-up for sampling, and the prefill
of a prompt. Run it from two checkouts (PYTHONPATH=...) to compare their forms side by side.

Run:
  PYTHONPATH=. taskset -c 0,1 python benchmarks/dplr_algebra_speed.py [--widths=64,256]
Prints a table (minimum of --repeats runs, milliseconds) and one JSON line.
"""

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from flax import nnx

from sashimi_jax.models import kernels  # from PYTHONPATH: the checkout being timed
from sashimi_jax.models.ssm import chunkconv
from sashimi_jax.models.ssm import dplr

_WIDTHS = flags.DEFINE_list("widths", ["64", "256"], "Channels H.")
_L_MAX = flags.DEFINE_integer("l_max", 16000, "The layer's l_max (C~ length).")
_CHUNK = flags.DEFINE_integer("chunk", 64, "Chunk tokens of the chunked operators.")
_PREFILL_TOKENS = flags.DEFINE_integer("prefill_tokens", 4096, "Prompt tokens of the prefill.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs after a warm-up (minimum reported).")


def _best_ms(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return 1e3 * best


def rows_for_width(width: int) -> list:
  kernel = kernels.ssm_kernel(width, layer="s4", d_state=64, n_ssm=1, l_max=_L_MAX.value,
                              rngs=nnx.Rngs(0))
  args = kernel.ssm_args()
  sq = lambda tree: sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree))
  chunk_ops_grad = jax.jit(jax.grad(
      lambda a: sq(chunkconv.dplr_chunk_ops(*a, chunk=_CHUNK.value, l_max=_L_MAX.value))))
  recurrence = jax.jit(lambda a: dplr.dplr_recurrence(*a, length=_L_MAX.value))
  rec = recurrence(args)
  prompt = jax.random.normal(jax.random.PRNGKey(0), (1, _PREFILL_TOKENS.value, width))
  prefill = jax.jit(dplr.dplr_prefill_state)
  return [{"piece": name, "H": width, "ms": round(_best_ms(fn, *a), 2)} for name, fn, a in (
      ("chunk_ops fwd+bwd", chunk_ops_grad, (args,)),
      ("dplr_recurrence", recurrence, (args,)),
      ("prefill", prefill, (rec, prompt)))]


def main(argv):
  del argv
  rows = [row for width in map(int, _WIDTHS.value) for row in rows_for_width(width)]
  print("piece | H | ms")
  for row in rows:
    print(f"{row['piece']} | {row['H']} | {row['ms']}")
  print(json.dumps({"benchmark": "dplr_algebra_speed", "backend": jax.default_backend(),
                    "dplr_module": dplr.__file__,
                    "load_average": os.getloadavg()[0], "rows": rows}))


if __name__ == "__main__":
  app.run(main)
