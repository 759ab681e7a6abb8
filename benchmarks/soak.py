"""Soak: a long tiny training run and a long sampling loop must not grow in memory or time.

Run (from the repository root):
  python benchmarks/soak.py                                    # 3,000 steps, 200 sampling batches
  python benchmarks/soak.py --train_steps=600 --sample_batches=40 --every=50   # a shorter check

Training: `launch.py` on the small stereo config of the tests, with evaluation and a checkpoint
every `--every` steps, as a subprocess whose resident memory (VmRSS) and open file descriptors are
read from /proc every `--poll_seconds`; step time is metrics.jsonl's train/seconds_per_step.
Sampling: the run's checkpoint is loaded as sample.py does and `sampling.generate` plus the
decoding to audio run for `--sample_batches` batches, each timed, with this process's RSS and
open files after each.

For each series the median of the first tenth is compared with the median of the last tenth
(the first training log step, which includes compilation, and the shutdown are left out). Pass:
growth <= 5% for memory and time, and no more open files (the minimum of each tenth: the steady
count without a file being read or a checkpoint being written at that instant). Prints a table and
one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 3000, "Training steps.")
_EVERY = flags.DEFINE_integer("every", 100, "Evaluation and checkpoint interval (steps).")
_SAMPLE_BATCHES = flags.DEFINE_integer("sample_batches", 200, "Sampling batches.")
_SAMPLE_BATCH_SIZE = flags.DEFINE_integer("sample_batch_size", 2, "Clips per sampling batch.")
_SAMPLE_SECONDS = flags.DEFINE_float("sample_seconds", 0.05, "Seconds of audio per clip.")
_POLL_SECONDS = flags.DEFINE_float("poll_seconds", 0.5, "Interval of the /proc readings.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the run here (default: a temp folder).")
MAX_GROWTH = 0.05


def _proc_rss_bytes(pid) -> int:
  with open(f"/proc/{pid}/status", encoding="ascii") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  return 0


def _open_files(pid) -> int:
  return len(os.listdir(f"/proc/{pid}/fd"))


def _tenths(values: list[float], statistic=np.median) -> tuple[float, float]:
  """`statistic` of the first and the last tenth of `values`, in time order (>= 1 value each)."""
  k = max(1, len(values) // 10)
  return float(statistic(values[:k])), float(statistic(values[-k:]))


def _row(name: str, values: list[float], *, exact: bool = False) -> dict:
  # Open files: the minimum of each tenth is the steady count (a leak raises it); single readings
  # also catch transient descriptors (an audio file being read, a checkpoint being written).
  first, last = _tenths(values, np.min if exact else np.median)
  growth = (last - first) / first if first else 0.0
  ok = (last <= first) if exact else growth <= MAX_GROWTH
  return {"series": name, "first_tenth": first, "last_tenth": last, "growth": growth,
          "samples": len(values), "ok": bool(ok)}


def soak_training(workdir: str, steps: int, every: int, poll_seconds: float) -> list[dict]:
  """Runs launch.py, polling its memory and files; returns the table rows."""
  import launch_fixtures  # pylint: disable=g-import-not-at-top
  from sashimi_jax import metrics  # pylint: disable=g-import-not-at-top
  args = [sys.executable, "launch.py", *launch_fixtures.SMALL_RUN_FLAGS, f"--workdir={workdir}",
          f"--config.train.num_steps={steps}", f"--config.train.eval_every_steps={every}",
          f"--config.train.checkpoint_every_steps={every}", "--config.train.log_every_steps=10"]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  readings = []  # (step, rss, open files)
  with open(os.path.join(workdir, "log.txt"), "w", encoding="utf-8") as log:
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    while proc.poll() is None:
      time.sleep(poll_seconds)
      try:
        events = metrics.read_metrics(workdir)
        step = max((e["step"] for e in events), default=0)
        readings.append((step, _proc_rss_bytes(proc.pid), _open_files(proc.pid)))
      except (OSError, ValueError):  # the process ended between the poll and the reading.
        pass
  if proc.returncode != 0:
    raise RuntimeError(f"launch.py failed ({proc.returncode}); see {workdir}/log.txt")
  events = [e for e in metrics.read_metrics(workdir) if "train/seconds_per_step" in e]
  step_seconds = [e["train/seconds_per_step"] for e in events[1:]]  # the first includes compiling
  # Readings while training runs: after the first logged step, before the last (shutdown).
  running = [r for r in readings if 10 <= r[0] < steps]
  return [_row("train step seconds", step_seconds),
          _row("train RSS MiB", [r[1] / 2**20 for r in running]),
          _row("train open files", [float(r[2]) for r in running], exact=True)]


def soak_sampling(workdir: str, batches: int, batch_size: int, seconds: float) -> list[dict]:
  """Samples `batches` batches from the run's checkpoint in this process; returns table rows."""
  import jax  # pylint: disable=g-import-not-at-top
  from sashimi_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from sashimi_jax import sampling  # pylint: disable=g-import-not-at-top
  from sashimi_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config, model, _ = checkpoint.load_for_inference(workdir)
  frames = max(2, int(round(seconds * int(config.dataset.sample_rate))))
  tokens = frames * (2 if config.dataset.is_stereo else 1)
  key = jax.random.key(0)
  times, rss, files = [], [], []
  for b in range(batches):  # one batch of sample.py: generate, then decode to audio on the host.
    start = time.perf_counter()
    out = sampling.generate(model, key, batch_size=batch_size, new_tokens=tokens,
                            first_sample_index=b * batch_size)
    pipeline.decode_tokens(jax.device_get(out["tokens"]), config.dataset)
    times.append(time.perf_counter() - start)
    rss.append(_proc_rss_bytes("self") / 2**20)
    files.append(float(_open_files("self")))
  return [_row("sample batch seconds", times[1:]),  # the first batch compiles.
          _row("sample RSS MiB", rss[1:]),
          _row("sample open files", files[1:], exact=True)]


def main(argv):
  del argv
  load = os.getloadavg()
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    workdir = _WORKDIR.value or os.path.join(tmp, "run")
    os.makedirs(workdir, exist_ok=True)
    rows = soak_training(workdir, _TRAIN_STEPS.value, _EVERY.value, _POLL_SECONDS.value)
    rows += soak_sampling(workdir, _SAMPLE_BATCHES.value, _SAMPLE_BATCH_SIZE.value,
                          _SAMPLE_SECONDS.value)
  print(f"{'series':<22} {'first tenth':>12} {'last tenth':>12} {'growth':>8} {'n':>6}  ok")
  for r in rows:
    print(f"{r['series']:<22} {r['first_tenth']:>12.4g} {r['last_tenth']:>12.4g} "
          f"{100 * r['growth']:>7.1f}% {r['samples']:>6}  {'yes' if r['ok'] else 'NO'}")
  print(json.dumps({"benchmark": "soak", "train_steps": _TRAIN_STEPS.value,
                    "every": _EVERY.value, "sample_batches": _SAMPLE_BATCHES.value,
                    "seconds": round(time.perf_counter() - start, 1),
                    "load_average": [round(x, 2) for x in load], "rows": rows,
                    "ok": all(r["ok"] for r in rows)}))


if __name__ == "__main__":
  app.run(main)
