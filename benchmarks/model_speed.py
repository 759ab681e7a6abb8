"""Training-step speed, compiled memory and recurrent-step speed of SaShiMiLM on this machine.

Run (from the repository root):
  PYTHONPATH=. python benchmarks/model_speed.py                                    # everything below
  PYTHONPATH=. python benchmarks/model_speed.py --parts=train --layers=s4d --n_layers=2,8
  PYTHONPATH=. python benchmarks/model_speed.py --parts=memory --memory_lengths=16384,65536,262144
  PYTHONPATH=. python benchmarks/model_speed.py --parts=step --batch_sizes=1,16

Model: the SC09 SaShiMi (d_model 64, pool [4, 4], expand 2, ff 2, d_state 64, GLU, n_ssm 1,
256 tokens, categorical head), S4D and/or DPLR S4, `--n_layers` per stage (8 = SC09; 2 = the
1.46M model the reference was timed with in docs/REFERENCE.md).
  * train: seconds per forward + backward + AdamW step (jit-compiled, params and optimizer state
    donated) and tokens/s, batch 1, at --train_lengths tokens (16000 = one mono SC09 clip,
    32000 = a stereo clip as one 2L-token stream); minimum of --repeats after a warm-up;
  * memory: the compiled train step's memory_analysis() (arguments + outputs + temporaries,
    minus aliased donations) at --memory_lengths, compiled only; growth should be linear;
  * step: recurrent generation, ms per scan step and per token (teacher-forced tokens through
    `lax.scan(model.step)`, --step_tokens steps) at --batch_sizes.
The machine is shared by several processes: wall-clock timings are noisy, so each timing also
reports the process CPU time (all threads), which contention inflates much less.
Prints a table and a JSON line.
"""

from __future__ import annotations

import json
import math
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sashimi_jax.models.sashimi import SaShiMiLM

_PARTS = flags.DEFINE_list("parts", ["train", "memory", "step"], "train, memory and/or step.")
_LAYERS = flags.DEFINE_list("layers", ["s4d", "s4"], "s4d and/or s4 (DPLR).")
_N_LAYERS = flags.DEFINE_list("n_layers", ["8"], "Residual pairs per stage (8 = SC09).")
_TRAIN_LENGTHS = flags.DEFINE_list("train_lengths", ["16000", "32000"], "Tokens per sequence.")
_MEMORY_LENGTHS = flags.DEFINE_list("memory_lengths", ["16384", "65536", "262144"],
                                    "Tokens per sequence for the compiled-memory table.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes of the step timing.")
_STEP_TOKENS = flags.DEFINE_integer("step_tokens", 2048, "Recurrent steps per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs after a warm-up (minimum reported).")
_REMAT = flags.DEFINE_string("remat", "none", "model.remat; none (the default) is not passed on, "
                             "so the script also times checkouts without the option.")
_COMPUTE_DTYPE = flags.DEFINE_string("compute_dtype", "float32",
                                     "model.compute_dtype; float32 (the default) is not passed on.")


def model_options() -> dict:
  """SaShiMiLM keyword arguments from --remat / --compute_dtype (only those not at default)."""
  options = {}
  if _REMAT.value != "none":
    options["remat"] = _REMAT.value
  if _COMPUTE_DTYPE.value != "float32":
    options["compute_dtype"] = _COMPUTE_DTYPE.value
  return options


def make_model(layer: str, n_layers: int, l_max: int, **options) -> SaShiMiLM:
  """The SC09 SaShiMi with 2**8 tokens in and categorical logits out (`options`: more kwargs)."""
  return SaShiMiLM(
      vocab_size=256, output_dim=256, d_model=64, n_layers=n_layers, pool=(4, 4), expand=2, ff=2,
      unet=False, dropout=0.0, layer=layer, d_state=64, n_ssm=1, final_act="glu",
      disc="bilinear" if layer == "s4" else "zoh", l_max=l_max, rngs=nnx.Rngs(0), **options)


def make_train_step(graphdef, optimizer):
  """(params, opt_state, x (B, T), y (B, T)) -> (params, opt_state, loss in nats/token)."""

  def loss_fn(params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(train_step, donate_argnums=(0, 1))


def abstract_model(layer, n_layers, length, **options):
  """(graphdef, abstract params) of `make_model` (default: --remat etc.), nothing computed."""
  options = options or model_options()
  return nnx.split(nnx.eval_shape(lambda: make_model(layer, n_layers, length, **options)))


def _init_params(layer, n_layers, length):
  # Eager: one jit-compiled init of the SC09 model took 138-142 s to compile (S4D and DPLR,
  # shared machine), the eager build 12-36 s, since eager ops of equal shapes share compiles.
  return nnx.split(make_model(layer, n_layers, length, **model_options()))[1]


def _best_wall_and_cpu_seconds(run_once) -> tuple[float, float]:
  """Minimum wall and minimum process CPU seconds of --repeats calls of `run_once` (warm)."""
  best, best_cpu = math.inf, math.inf
  for _ in range(_REPEATS.value):
    start, start_cpu = time.perf_counter(), time.process_time()
    run_once()
    best = min(best, time.perf_counter() - start)
    best_cpu = min(best_cpu, time.process_time() - start_cpu)
  return best, best_cpu


def train_row(layer: str, n_layers: int, length: int) -> dict:
  """Measures one training step configuration (batch 1)."""
  graphdef, abstract_params = abstract_model(layer, n_layers, length)
  optimizer = optax.adamw(1e-3, weight_decay=0.0)
  params = _init_params(layer, n_layers, length)
  opt_state = jax.jit(optimizer.init)(params)
  step = make_train_step(graphdef, optimizer)
  x = jax.random.randint(jax.random.key(0), (1, length), 0, 256, jnp.int32)
  y = jnp.roll(x, -1, axis=1)
  start = time.perf_counter()
  compiled = step.lower(params, opt_state, x, y).compile()
  compile_seconds = time.perf_counter() - start
  params, opt_state, loss = compiled(params, opt_state, x, y)  # warm-up
  jax.block_until_ready(loss)

  def train_once():
    nonlocal params, opt_state, loss
    params, opt_state, loss = compiled(params, opt_state, x, y)
    jax.block_until_ready(loss)

  best, best_cpu = _best_wall_and_cpu_seconds(train_once)
  num_params = sum(p.size for p in jax.tree.leaves(abstract_params))
  return {"part": "train", "layer": layer, "n_layers": n_layers, "params": num_params,
          "tokens": length, "batch_size": 1, "step_s": round(best, 4),
          "cpu_s": round(best_cpu, 4),
          "tokens_per_s": round(length / best), "compile_s": round(compile_seconds, 1),
          "loss_finite": bool(jnp.isfinite(loss))}


def memory_row(layer: str, n_layers: int, length: int) -> dict:
  """Compiled memory of one training step at `length` tokens (nothing is run)."""
  graphdef, abstract_params = abstract_model(layer, n_layers, length)
  optimizer = optax.adamw(1e-3, weight_decay=0.0)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  start = time.perf_counter()
  compiled = make_train_step(graphdef, optimizer).lower(
      abstract_params, abstract_opt, tokens, tokens).compile()
  stats = compiled.memory_analysis()
  peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes
          + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
  return {"part": "memory", "layer": layer, "n_layers": n_layers, "tokens": length,
          "temp_mb": round(stats.temp_size_in_bytes / 2**20, 1),
          "peak_mb": round(peak / 2**20, 1), "peak_bytes_per_token": round(peak / length),
          "compile_s": round(time.perf_counter() - start, 1)}


def step_row(layer: str, n_layers: int, batch_size: int) -> dict:
  """Recurrent mode: ms per lax.scan step of model.step over teacher-forced tokens."""
  graphdef, _ = abstract_model(layer, n_layers, 16000)
  params = _init_params(layer, n_layers, 16000)
  num_steps = _STEP_TOKENS.value

  @jax.jit
  def run(params, tokens):
    m = nnx.merge(graphdef, params)
    rec = m.setup_recurrence()

    def body(state, token):
      out, state = m.step(rec, state, token)
      return state, out[:, 0]

    return jax.lax.scan(body, m.init_state(tokens.shape[1]), tokens)[1]

  # The recurrence constants are part of each timed run (computed once per run, not per step).
  tokens = jax.random.randint(jax.random.key(0), (num_steps, batch_size), 0, 256, jnp.int32)
  start = time.perf_counter()
  jax.block_until_ready(run(params, tokens))
  compile_seconds = time.perf_counter() - start
  best, best_cpu = _best_wall_and_cpu_seconds(lambda: jax.block_until_ready(run(params, tokens)))
  step_ms = best / num_steps * 1e3
  return {"part": "step", "layer": layer, "n_layers": n_layers, "batch_size": batch_size,
          "step_ms": round(step_ms, 4), "ms_per_token": round(step_ms / batch_size, 5),
          "cpu_ms_per_step": round(best_cpu / num_steps * 1e3, 4),
          "tokens_per_s": round(batch_size * num_steps / best),
          "compile_s": round(compile_seconds, 1)}


def print_table(rows: list[dict]) -> None:
  """Prints rows as a `|`-separated table whose columns are every key, in first-seen order."""
  keys = []
  for row in rows:
    keys += [k for k in row if k not in keys]
  print(" | ".join(keys))
  for row in rows:
    print(" | ".join(str(row.get(k, "")) for k in keys))


def main(argv):
  del argv
  rows = []
  for n_layers in map(int, _N_LAYERS.value):
    for layer in _LAYERS.value:
      jobs = []
      if "train" in _PARTS.value:
        jobs += [(train_row, int(n)) for n in _TRAIN_LENGTHS.value]
      if "memory" in _PARTS.value:
        jobs += [(memory_row, int(n)) for n in _MEMORY_LENGTHS.value]
      if "step" in _PARTS.value:
        jobs += [(step_row, int(b)) for b in _BATCH_SIZES.value]
      for fn, arg in jobs:
        rows.append(fn(layer, n_layers, arg))
        print(rows[-1], flush=True)
  print_table(rows)
  print(json.dumps({"benchmark": "model_speed", "devices": str(jax.devices()), "rows": rows}))


if __name__ == "__main__":
  app.run(main)
