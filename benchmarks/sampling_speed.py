"""Speed of the compiled sampler versus a Python loop over a jitted step (the reference's way).

Run (from the repository root):
  python benchmarks/sampling_speed.py                              # tiny + SC09, mono + stereo
  python benchmarks/sampling_speed.py --configs=tiny --channels=mono --batch_sizes=1,16
                                      # the README's rows (issue #12: batch 16 vs the reference)
  python benchmarks/sampling_speed.py --configs=tiny --channels=mono --batch_sizes=16 --devices=1,2
  python benchmarks/sampling_speed.py --configs=tiny --batch_sizes=1 --num_tokens=4096
  python benchmarks/sampling_speed.py --configs=sc09 --sc09_layers=s4d,s4   # SC09 with S4D too

For every config x channels x batch size: generated tokens/s, ms per scan step and per token,
real-time factor (seconds of audio generated per wall-clock second), compile time, and the same
for a Python loop dispatching one jitted step+sample per token. Each batch size is measured on
every count of --devices that divides it (the batch sharded over a data mesh, as sample.py does;
on a CPU the cores are split into that many XLA devices: sashimi_jax/cpu_devices.py); the Python
loop always runs on one device. Machine ceilings are measured
first: a float32 matmul rate (GFLOP/s) and a copy bandwidth (GB/s, read + write). From them:
  * achieved FLOP rate = estimated FLOPs per step / step time, as a fraction of the matmul rate;
    FLOPs per token are estimated as 2 x the weights each token touches (level k of the U-Net
    runs once every prod(pool[:k]) tokens; the embedding is a lookup and is not counted);
  * at batch 1, per-token time versus the time to read those weights once from memory;
  * at batch >= 16, per-step time versus those FLOPs at the matmul rate.
Timings are the minimum of --repeats runs after a warm-up. The machine may be shared: numbers
are noisy; `cpu ms/t` (process CPU time per token) is the steadier figure for a mostly
single-threaded batch-1 run. Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import runpy
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere
from sashimi_jax import cpu_devices  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax import sampling  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax.state import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIGS = flags.DEFINE_list("configs", ["tiny", "sc09"], "tiny (configs/mono.py:tiny, the "
                             "reference's 1.46M S4D model) and/or sc09 (configs/sc09.py).")
_CHANNELS = flags.DEFINE_list("channels", ["mono", "stereo"], "mono and/or stereo.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16", "32"], "Batch sizes.")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 2048, "Tokens generated per timed run.")
_LOOP_TOKENS = flags.DEFINE_integer("loop_tokens", 256, "Tokens per timed Python-loop run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs (minimum reported).")
_UNROLL = flags.DEFINE_integer("unroll", 1, "lax.scan unroll.")
_DEVICES = flags.DEFINE_list("devices", ["1", "cores"], "Device counts to shard each batch over "
                             "(those that divide it); 'cores' = one per core this process may "
                             "use (sample.py's default on a CPU).")
_SC09_LAYERS = flags.DEFINE_list(
    "sc09_layers", ["s4"], "S4 layer kinds to measure the SC09 config with: s4 (its own DPLR "
    "layers, bilinear) and/or s4d (diagonal, diag-lin init, zoh), e.g. --sc09_layers=s4,s4d.")

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _best_wall_and_cpu_seconds(fn, repeats: int) -> tuple[float, float]:
  """Minimum wall seconds and minimum process CPU seconds of `repeats` runs after a warm-up.

  On a shared machine the process CPU time of a mostly single-threaded run is a steadier
  estimate of the unshared speed than the wall time.
  """
  jax.block_until_ready(fn())  # warm-up (and compile)
  best, best_cpu = math.inf, math.inf
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
    best_cpu = min(best_cpu, time.process_time() - start_cpu)
  return best, best_cpu


def _best_seconds(fn, repeats: int) -> float:
  """Minimum wall seconds of `repeats` runs after a warm-up."""
  return _best_wall_and_cpu_seconds(fn, repeats)[0]


def matmul_gflops(size: int = 1024, repeats: int = 10) -> float:
  """Measured float32 matmul rate in GFLOP/s (size x size x size)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  return 2 * size**3 / _best_seconds(lambda: f(a, b), repeats) / 1e9


def copy_gbytes_per_s(megabytes: int = 256, repeats: int = 5) -> float:
  """Measured memory bandwidth in GB/s: bytes read + written by `out = v + 1 + 0 * out`.

  The output buffer is donated and the two buffers swapped every run, so no fresh allocation
  (and its page faults) is timed; 3 buffers' bytes move per run (2 read, 1 written).
  """
  buffers = [jnp.zeros((megabytes * 2**20 // 4,), jnp.float32) for _ in range(2)]
  f = jax.jit(lambda v, out: v + 1.0 + 0.0 * out, donate_argnums=1)

  def run():
    buffers.append(f(buffers[0], buffers.pop(1)))
    buffers.reverse()
    return buffers[0]

  return 3 * buffers[0].nbytes / _best_seconds(run, repeats) / 1e9


def get_config(name: str, stereo: bool, layer: str | None = None):
  """The benchmarked config; `layer="s4d"` swaps in diagonal S4D layers (init diag-lin, zoh)."""
  if name == "tiny":
    config = runpy.run_path(str(_ROOT / "configs" / "mono.py"))["get_config"]("tiny")
  elif name == "sc09":
    config = runpy.run_path(str(_ROOT / "configs" / "sc09.py"))["get_config"]()
  else:
    raise ValueError(f"Unknown config {name!r}; use tiny or sc09.")
  config.dataset.is_stereo = stereo
  if layer is not None and layer != config.model.layer:
    if layer == "s4d":
      config.model.update(layer="s4d", init="diag-lin", disc="zoh")
    elif layer == "s4":
      config.model.update(layer="s4", init="legs", disc="bilinear")
    else:
      raise ValueError(f"Unknown layer {layer!r}; use s4 or s4d.")
  return config


def weights_per_token(model) -> tuple[float, int]:
  """(weights touched per token, averaged over the pooling schedule; all weights)."""
  rates = model.rate_frames  # fine tokens per step of level k
  total, per_token = 0, 0.0
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
    keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
    size = int(np.prod(leaf.shape))
    total += size
    top = keys[0]
    if top == "embedding":
      continue  # a lookup
    if top == "level":
      depth = keys.count("inner")  # level k sits under k `inner` attributes
      part = keys[1 + depth]
      # Stages run once per frame of their level, the pooling linears once per coarse frame.
      rate = rates[depth + 1] if part in ("down_pool", "up_pool") else rates[depth]
    else:
      rate = 1  # final norm and head
    per_token += size / rate
  return per_token, total


def _python_loop_seconds(model, batch_size: int, num_tokens: int, repeats: int) -> float:
  """A Python loop calling one jitted (step + sample) per token, like the reference."""
  graphdef, params = nnx.split(model)
  settings = sampling._Settings(  # pylint: disable=protected-access
      spec=sampling.head_spec(model), batch_size=batch_size, temperature=1.0, top_p=1.0,
      unroll=1)

  @jax.jit
  def one_step(params, rec, state, token, uniform):
    m = nnx.merge(graphdef, params)
    outputs, state = m.step(rec, state, token)
    token, _, _ = sampling._sample_rows(settings, uniform, outputs)  # pylint: disable=protected-access
    return state, token

  rec = jax.jit(lambda p: nnx.merge(graphdef, p).setup_recurrence())(params)
  uniforms = jax.random.uniform(jax.random.key(0), (num_tokens, batch_size))

  def run():
    state = model.init_state(batch_size)
    token = jnp.full((batch_size,), settings.spec.zero_token, jnp.int32)
    for t in range(num_tokens):
      state, token = one_step(params, rec, state, token, uniforms[t])
    return token

  return _best_seconds(run, repeats)


def measure(name: str, stereo: bool, batch_size: int, ceilings: dict,
            layer: str | None = None, devices: int = 1, loop_ms: dict | None = None) -> dict:
  """One table row: the compiled scan sampler (on `devices` devices) and the Python step loop.

  `loop_ms` caches the Python loop's time per (config, layer, channels, batch) across device
  counts (it always runs on one device).
  """
  config = get_config(name, stereo, layer)
  note = ""
  try:
    model = build_model(config, nnx.Rngs(0))
  except (NotImplementedError, ValueError) as e:
    if config.model.layer == "s4" and "bilinear" in str(e):
      # The DPLR recurrence is exact for the bilinear discretisation only.
      note = f"disc={config.model.disc} unsupported by s4; measured disc=bilinear"
      config.model.disc = "bilinear"
    else:  # e.g. a layer not available yet
      note = f"{config.model.layer} unavailable ({e}); measured s4d"
      config.model.layer, config.model.init = "s4d", "diag-lin"
    model = build_model(config, nnx.Rngs(0))
  num_tokens = _NUM_TOKENS.value
  mesh = sharding.create_mesh(jax.devices()[:devices]) if devices > 1 else None

  def run(seed=[0]):  # pylint: disable=dangerous-default-value
    seed[0] += 1
    return sampling.generate(model, jax.random.key(seed[0]), batch_size=batch_size,
                             new_tokens=num_tokens, unroll=_UNROLL.value, mesh=mesh)["tokens"]

  start = time.perf_counter()
  jax.block_until_ready(run())
  compile_seconds = time.perf_counter() - start
  seconds, cpu_seconds = _best_wall_and_cpu_seconds(run, _REPEATS.value)
  cpu_step_ms = cpu_seconds / num_tokens * 1e3
  step_ms = seconds / num_tokens * 1e3
  tokens_per_s = batch_size * num_tokens / seconds
  channels = 2 if stereo else 1
  per_token_weights, total_weights = weights_per_token(model)
  flops_per_step = 2.0 * per_token_weights * batch_size
  achieved_gflops = flops_per_step / (step_ms / 1e3) / 1e9
  loop_key = (name, config.model.layer, channels, batch_size)
  loop_ms = {} if loop_ms is None else loop_ms
  if loop_key not in loop_ms:
    loop_ms[loop_key] = (_python_loop_seconds(model, batch_size, _LOOP_TOKENS.value, 1)
                         / _LOOP_TOKENS.value * 1e3)
  loop_step_ms = loop_ms[loop_key]
  row = {
      "config": name, "layer": config.model.layer, "channels": channels,
      "batch_size": batch_size, "devices": devices, "params": total_weights,
      "compile_s": round(compile_seconds, 2),
      "step_ms": round(step_ms, 5), "ms_per_token": round(step_ms / batch_size, 5),
      "cpu_ms_per_token": round(cpu_step_ms / batch_size, 5),
      "tokens_per_s": round(tokens_per_s), "real_time_factor":
          round(tokens_per_s / (config.dataset.sample_rate * channels), 4),
      "python_loop_step_ms": round(loop_step_ms, 5),
      "scan_speedup_over_loop": round(loop_step_ms / step_ms, 2),
      "gflops_achieved": round(achieved_gflops, 2),
      "fraction_of_matmul_rate": round(achieved_gflops / ceilings["matmul_gflops"], 4),
  }
  if batch_size == 1:
    read_ms = per_token_weights * 4 / (ceilings["copy_gbytes_per_s"] * 1e9) * 1e3
    row["weight_read_ms"] = round(read_ms, 5)
    row["step_over_weight_read"] = round(step_ms / read_ms, 2)
  if batch_size >= 16:
    floor_ms = flops_per_step / (ceilings["matmul_gflops"] * 1e9) * 1e3
    row["matmul_floor_ms"] = round(floor_ms, 5)
    row["step_over_matmul_floor"] = round(step_ms / floor_ms, 2)
  if note:
    row["note"] = note
  return row


def _device_counts() -> list[int]:
  counts = [cpu_devices.available_cores() if d == "cores" else int(d) for d in _DEVICES.value]
  if any(c < 1 for c in counts):
    raise app.UsageError(f"--devices must be >= 1 or 'cores', got {_DEVICES.value}")
  return sorted(set(counts))


def main(argv):
  del argv
  counts = _device_counts()
  # Before any JAX operation: split a CPU into as many devices as the largest count asks for.
  available = cpu_devices.configure(max(counts), os.environ)
  counts = [c for c in counts if c <= min(available, jax.device_count())]
  ceilings = {"matmul_gflops": round(matmul_gflops(), 1),
              "copy_gbytes_per_s": round(copy_gbytes_per_s(), 1)}
  print(f"matmul {ceilings['matmul_gflops']} GFLOP/s, copy {ceilings['copy_gbytes_per_s']} GB/s "
        f"(read + write); {jax.device_count()} {jax.default_backend()} device(s); load average "
        f"{os.getloadavg()[0]:.2f}")
  rows = []
  header = (f"{'config':>9} {'ch':>2} {'B':>3} {'dev':>3} {'ms/step':>9} {'ms/token':>9} {'cpu ms/t':>9} "
            f"{'tok/s':>9} "
            f"{'RTF':>7} {'loop ms':>9} {'xloop':>6} {'GFLOP/s':>8} {'%mm':>6} {'vs read':>8} "
            f"{'vs mm':>6} {'compile':>8}")
  print(header)
  runs = [(name, layer) for name in _CONFIGS.value
          for layer in (_SC09_LAYERS.value if name == "sc09" else [None])]
  for name, layer in runs:
    for channels in _CHANNELS.value:
      loop_ms = {}
      for batch_size, devices in ((int(b), d) for b in _BATCH_SIZES.value for d in counts
                                  if int(b) % d == 0):
        row = measure(name, channels == "stereo", batch_size, ceilings, layer, devices, loop_ms)
        rows.append(row)
        label = f"{name}/{row['layer']}"
        print(f"{label:>9} {row['channels']:>2} {batch_size:>3} {devices:>3} {row['step_ms']:9.4f} "
              f"{row['ms_per_token']:9.4f} {row['cpu_ms_per_token']:9.4f} "
              f"{row['tokens_per_s']:9d} "
              f"{row['real_time_factor']:7.3f} {row['python_loop_step_ms']:9.4f} "
              f"{row['scan_speedup_over_loop']:6.1f} {row['gflops_achieved']:8.2f} "
              f"{100 * row['fraction_of_matmul_rate']:6.2f} "
              f"{row.get('step_over_weight_read', float('nan')):8.2f} "
              f"{row.get('step_over_matmul_floor', float('nan')):6.2f} "
              f"{row['compile_s']:8.1f}" + (f"  ({row['note']})" if "note" in row else ""),
              flush=True)
  print(json.dumps({"benchmark": "sampling_speed", "num_tokens": _NUM_TOKENS.value,
                    "unroll": _UNROLL.value, "load_average": os.getloadavg(), **ceilings,
                    "rows": rows}))


if __name__ == "__main__":
  app.run(main)
