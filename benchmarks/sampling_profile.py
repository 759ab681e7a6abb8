"""Where the recurrent sampler's time goes at batch 1, 16 and 32 (the 1.46M S4D model).

Run (from the repository root):
  python benchmarks/sampling_profile.py
  python benchmarks/sampling_profile.py --batch_sizes=1,16 --num_tokens=1024

Rows, all per scan step (one token per row), minimum of --repeats runs after a warm-up, wall and
process-CPU milliseconds:
  * model.step: `model.step` alone in a `lax.scan` (the deeper U-Net levels in `fori_loop`s of 0
    or 1 iterations, models/level.py);
  * levels 0 / 0-1 / all: the same scan with the step counter held at t mod 1 (only level 0 ever
    runs) or t mod prod(pool[:1]) (levels 0 and 1), so the differences are per-level costs per
    token (each level's work at its own rate, averaged over tokens);
  * sampler step copies: state-sized `copy` instructions in the compiled sampler
    (`sampling._generate_all`) and the bytes they move per token (each weighted by its level's
    rate), read from `compile().as_text()`;
  * sampler: the inverse-CDF draw of one token per row from fixed logits (the head's share);
  * static schedule: `model.step` unrolled 16 times per scan iteration with the level phase a
    Python int, so the level schedule is resolved at trace time (no loops or conditionals); its
    outputs are checked against the dynamic step's. Measured 2026-11-29: 2x slower at batch 1
    and no faster at batch 16 than the dynamic step, so the sampler does not use it;
  * gemm (B,K)@(K,M): a matmul + tanh chain of the model's sizes, with its FLOP rate, which
    shows how little a batch gains per row from XLA's CPU small-matrix dots;
  * s4d_step H=...: one S4D layer's state update alone (the sheared two-array step on
    (d_state/2, B, H) arrays), for the widths of the model's levels (64, 128, 256), with its
    FLOP rate (~11 real FLOPs per state element).
Prints a table and one JSON line. The machine may be shared: compare rows of one run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import re
import runpy
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))  # run from anywhere
from sashimi_jax import sampling  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax.models.ssm import s4d  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax.models.ssm import sheared  # pylint: disable=g-import-not-at-top,wrong-import-position
from sashimi_jax.state import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16", "32"], "Batch sizes.")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 512, "Steps per timed run (multiple of 16).")
_REPEATS = flags.DEFINE_integer("repeats", 4, "Timed runs (minimum reported).")


def _best_ms(fn, steps: int, repeats: int) -> tuple[float, float]:
  """Minimum wall and process-CPU milliseconds per step over `repeats` runs after a warm-up."""
  jax.block_until_ready(fn())
  wall = cpu = math.inf
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    wall = min(wall, time.perf_counter() - start)
    cpu = min(cpu, time.process_time() - start_cpu)
  return wall / steps * 1e3, cpu / steps * 1e3


def _state_copy_bytes_per_token(model, graphdef, params, settings) -> tuple[float, int]:
  """(bytes, count) of the S4 state-sized `copy` instructions in the compiled sampler.

  A copy of an (N/2, B, H) array (`s4d.s4d_init_state`'s layout) belongs to the level of width
  H, which steps once every rate_frames[level] tokens; copies outside the token loop (initial
  states) are left out.
  """
  rec = sampling.recurrence_constants(model)
  text = sampling._generate_all.lower(  # pylint: disable=protected-access
      params, rec, jax.random.key(0), jnp.int32(0), None, None, graphdef=graphdef,
      settings=settings, new_tokens=64).compile().as_text()
  widths = {}  # level width H -> level index
  for k, level in enumerate(model.levels()):
    stage = level.up if hasattr(level, "up") else level.stage
    width, half_state = stage.layer_stack.s4.layer.kernel.C.shape[-3:-1]
    widths[int(width)] = k
  pattern = re.compile(rf"= f32\[{half_state},{settings.batch_size},(\d+)\]\S* copy\("
                       r"%(?!wrapped_broadcast)")
  total, count = 0.0, 0
  for line in text.splitlines():
    match = pattern.search(line)
    if match and int(match.group(1)) in widths:
      width = int(match.group(1))
      count += 1
      total += 2 * 4 * settings.batch_size * width * half_state / model.rate_frames[widths[width]]
  return total, count


def main(argv):
  del argv
  config = runpy.run_path(str(_ROOT / "configs" / "mono.py"))["get_config"]("tiny")
  model = build_model(config, nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  block = math.prod(config.model.pool)
  steps = _NUM_TOKENS.value // block * block
  repeats = _REPEATS.value
  rows = []
  print(f"load {os.getloadavg()}; model pool {tuple(config.model.pool)}, d_model "
        f"{config.model.d_model}, d_state {config.model.d_state}")
  print(f"{'what':>28} {'B':>3} {'wall ms':>9} {'cpu ms':>9} {'GFLOP/s':>8}")

  def report(what, batch, wall_cpu, gflops=None):
    rows.append({"what": what, "batch_size": batch, "wall_ms_per_step": round(wall_cpu[0], 5),
                 "cpu_ms_per_step": round(wall_cpu[1], 5),
                 **({"gflops": round(gflops, 1)} if gflops else {})})
    print(f"{what:>28} {batch:>3} {wall_cpu[0]:9.4f} {wall_cpu[1]:9.4f} "
          f"{'' if gflops is None else f'{gflops:8.1f}'}", flush=True)

  for batch in [int(b) for b in _BATCH_SIZES.value]:
    settings = sampling._Settings(  # pylint: disable=protected-access
        spec=sampling.head_spec(model), batch_size=batch, temperature=1.0, top_p=1.0, unroll=1)

    @functools.partial(jax.jit, static_argnames="period",
                       compiler_options=sampling.SCAN_COMPILER_OPTIONS)
    def dynamic(params, batch=batch, period=None):
      m = nnx.merge(graphdef, params)
      rec = m.setup_recurrence()

      def body(carry, _):
        state, token = carry
        if period is not None:  # levels deeper than the period allows never reach their turn
          state = {**state, "t": state["t"] % period}
        out, state = m.step(rec, state, token)
        return (state, (token + 1) % 256), out[:, 0]

      init = (m.init_state(batch), jnp.zeros((batch,), jnp.int32))
      return jax.lax.scan(body, init, None, length=steps)[1]

    @jax.jit
    def static(params, batch=batch):
      m = nnx.merge(graphdef, params)
      rec = m.setup_recurrence()

      def body(carry, _):
        state, token = carry
        outs = []
        for phase in range(block):  # t mod prod(pool) is all the level schedule needs.
          out, state = m.step(rec, {"t": phase, "level": state["level"]}, token)
          token = (token + 1) % 256
          outs.append(out[:, 0])
        return (state, token), jnp.stack(outs)

      init = (m.init_state(batch), jnp.zeros((batch,), jnp.int32))
      return jax.lax.scan(body, init, None, length=steps // block)[1]

    @jax.jit
    def sampler(logits, settings=settings):
      def body(shift, uniform):
        token, _, _ = sampling._sample_rows(  # pylint: disable=protected-access
            settings, uniform, logits + shift[:, None])
        return shift + token.astype(jnp.float32) * 1e-6, token
      uniforms = jax.random.uniform(jax.random.key(0), (steps, batch))
      return jax.lax.scan(body, jnp.zeros((batch,)), uniforms)[1]

    report("model.step (dynamic)", batch, _best_ms(lambda: dynamic(params), steps, repeats))
    level_ms = {}
    for label, period in (("level 0 only", 1), ("levels 0-1", config.model.pool[0]),
                          ("all levels", None)):
      level_ms[label] = _best_ms(lambda period=period: dynamic(params, period=period), steps,
                                 repeats)
      report(label, batch, level_ms[label])
    names = list(level_ms)
    for k in (1, 2):
      report(f"  level {k} share", batch, tuple(a - b for a, b in zip(level_ms[names[k]],
                                                                       level_ms[names[k - 1]])))
    copied, copies = _state_copy_bytes_per_token(model, graphdef, params, settings)
    rows.append({"what": "sampler step copies", "batch_size": batch, "copies": copies,
                 "copied_bytes_per_token": copied})
    print(f"{'sampler step copies':>28} {batch:>3} {copies} state-sized copies, "
          f"{copied / 1e6:.3f} MB per token", flush=True)
    static_ms = _best_ms(lambda: static(params), steps, repeats)
    difference = float(np.abs(np.asarray(dynamic(params)) -
                              np.asarray(static(params)).reshape(steps, batch)).max())
    report("model.step (static sched.)", batch, static_ms)
    if difference > 1e-4:
      raise AssertionError(f"static schedule differs from the step by {difference}")
    logits = jax.random.normal(jax.random.key(1), (batch, model.output_dim))
    report("sampler (inverse CDF)", batch, _best_ms(lambda: sampler(logits), steps, repeats))
    for k, m in ((64, 128), (128, 256)):
      w1 = jax.random.normal(jax.random.key(2), (k, m)) * 0.05
      w2 = jax.random.normal(jax.random.key(3), (m, k)) * 0.05

      @jax.jit
      def gemm(x, w1=w1, w2=w2):
        return jax.lax.scan(lambda x, _: (jnp.tanh(x @ w1) @ w2, None), x, None,
                            length=steps)[0]

      x = jnp.full((batch, k), 0.1)
      ms = _best_ms(lambda: gemm(x), steps, repeats)
      report(f"gemm ({batch},{k})@({k},{m})x2", batch, ms, 4.0 * batch * k * m / (ms[0] * 1e6))
    half_state = int(config.model.d_state) // 2
    for width in (64, 128, 256):
      keys = jax.random.split(jax.random.key(4), 6)
      parts = [jax.random.uniform(k, (width, half_state)) for k in keys[:4]]
      rec = {"shear": sheared.coefficients(jax.lax.complex(0.5 * parts[0], 0.5 * parts[1]),
                                           {"u": jax.lax.complex(parts[2], parts[3])})}

      @jax.jit
      def layer(u, rec=rec, width=width):
        def body(carry, _):
          state, u = carry
          y, state = s4d.s4d_step(rec, state, u)
          return (state, jnp.tanh(y)), None
        zero = jnp.zeros((half_state, u.shape[0], width))  # s4d_init_state's layout
        return jax.lax.scan(body, ((zero, zero), u), None, length=steps)[0][1]

      u = jnp.ones((batch, width))
      ms = _best_ms(lambda: layer(u), steps, repeats)
      report(f"s4d_step H={width}", batch, ms, 11.0 * batch * width * half_state / (ms[0] * 1e6))
  print(json.dumps({"benchmark": "sampling_profile", "num_tokens": steps,
                    "load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
  app.run(main)
