"""Wall time of one sample.py job on 1 device, on N simulated CPU devices and on 2 processes.

Run (from the repository root):
  python benchmarks/sample_job.py                       # trains a 2-step tiny stereo checkpoint
  python benchmarks/sample_job.py --workdir=runs/demo --num_samples=32 --seconds=0.05

Every layout writes the same clips (checked: the WAVs' audio is compared with the one-device
run's). On this 2-core CPU the simulated devices share the cores, so the figures show the job's
overhead per layout, not a speed-up; on a pod each device is a chip. Prints a table and one
JSON line (wall seconds include start-up, checkpoint loading and compilation).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import soundfile as sf

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "tests"))
import launch_fixtures  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run (default: train a 2-step tiny one).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Clips per job.")
_SECONDS = flags.DEFINE_float("seconds", 0.02, "Clip length in seconds.")
_PER_DEVICE = flags.DEFINE_integer("per_device_batch_size", 2, "Rows per device.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Simulated CPU devices of the second layout.")


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env.update({"PYTHONPATH": str(_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
              "JAX_PLATFORMS": "cpu"})
  # Set for one device too: sample.py otherwise makes one CPU device per core.
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _job_flags(workdir, output_dir) -> list[str]:
  return [f"--workdir={workdir}", f"--output_dir={output_dir}",
          f"--num_samples={_NUM_SAMPLES.value}", f"--seconds={_SECONDS.value}",
          f"--per_device_batch_size={_PER_DEVICE.value}", "--compilation_cache_dir="]


def _run(commands: list[list[str]], env: dict) -> float:
  start = time.perf_counter()
  procs = [subprocess.Popen(c, cwd=_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for c in commands]
  for p in procs:
    _, err = p.communicate()
    if p.returncode:
      raise RuntimeError(err[-3000:])
  return time.perf_counter() - start


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _audio(folder) -> list[np.ndarray]:
  return [sf.read(pathlib.Path(folder) / f"sample_{i:03d}.wav", dtype="float32")[0]
          for i in range(_NUM_SAMPLES.value)]


def main(argv):
  del argv
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="sample_job_bench_"))
  workdir = _WORKDIR.value
  if workdir is None:
    workdir = str(scratch / "run")
    _run([[sys.executable, "launch.py", *launch_fixtures.SMALL_RUN_FLAGS, f"--workdir={workdir}",
           "--config.train.num_steps=2", "--config.train.checkpoint_every_steps=2",
           "--compilation_cache_dir="]], _env())
  sample = [sys.executable, "sample.py"]
  layouts = {
      "1 device": ([sample + _job_flags(workdir, scratch / "one")], _env()),
      f"{_DEVICES.value} devices": ([sample + _job_flags(workdir, scratch / "many")],
                                    _env(_DEVICES.value)),
  }
  address = f"localhost:{_free_port()}"
  layouts["2 processes"] = ([
      sample + _job_flags(workdir, scratch / "hosts") + [
          f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"]
      for i in range(2)], _env())
  folders = {"1 device": "one", f"{_DEVICES.value} devices": "many", "2 processes": "hosts"}
  reference = None
  rows = []
  print(f"{'layout':>14} {'wall s':>8} {'same clips':>10}")
  for name, (commands, env) in layouts.items():
    seconds = _run(commands, env)
    clips = _audio(scratch / folders[name])
    reference = clips if reference is None else reference
    same = all(np.array_equal(a, b) for a, b in zip(clips, reference))
    rows.append({"layout": name, "wall_seconds": round(seconds, 2), "same_clips": same})
    print(f"{name:>14} {seconds:8.2f} {str(same):>10}")
  print(json.dumps({"benchmark": "sample_job", "num_samples": _NUM_SAMPLES.value,
                    "seconds": _SECONDS.value, "per_device_batch_size": _PER_DEVICE.value,
                    "load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
  app.run(main)
