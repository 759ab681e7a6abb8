"""Multi-host: when launch.py initializes jax.distributed, and two real processes training together.

The detection tests are pure (an environment dict in, a decision out). The two-process test runs
launch.py twice on this machine, connected by `jax.distributed` over localhost (one CPU device
each, gloo collectives): a real 2-host data-parallel run. SIGTERM reaches only process 1, yet
both processes must stop and save at the same step (a checkpoint is collective), and both must
have seen the same losses.
"""

import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from sashimi_jax import checkpoint as checkpoint_lib
from sashimi_jax import metrics as metrics_lib
import launch_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_launch():
  spec = importlib.util.spec_from_file_location("launch", ROOT / "launch.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


launch = _load_launch()


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"JAX_NUM_PROCESSES": "1", "SLURM_NTASKS": "1", "OMPI_COMM_WORLD_SIZE": "1"}, None),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single-host TPU VM.
    ({"SLURM_NTASKS": ""}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS"),
    ({"JAX_NUM_PROCESSES": "4"}, "JAX_NUM_PROCESSES"),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_PROCID": "3"}, "SLURM"),
    ({"SLURM_NPROCS": "2"}, "SLURM"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "t1-w-0,t1-w-1,t1-w-2,t1-w-3"}, "TPU_WORKER_HOSTNAMES"),
    ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, "TPU_PROCESS_ADDRESSES"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1", "MEGASCALE_NUM_SLICES": "2"}, "multislice"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1", "MEGASCALE_NUM_SLICES": "1"}, None),
])
def test_multi_host_detection_from_environment(environ, expected):
  reason = launch.multi_host_reason(environ)
  if expected is None:
    assert reason is None
  else:
    assert reason is not None and expected in reason


def test_explicit_flags_mean_multi_host():
  assert "explicit" in launch.multi_host_reason({}, coordinator_address="h:1")
  assert "explicit" in launch.multi_host_reason({}, num_processes=2)
  assert launch.multi_host_reason({}, num_processes=1) is None


def test_bad_process_count_names_the_variable():
  with pytest.raises(ValueError, match=r"SLURM_NTASKS='two' is not an integer"):
    launch.multi_host_reason({"SLURM_NTASKS": "two"})


def test_initialize_is_called_exactly_when_needed():
  calls = []

  def record(**kwargs):
    calls.append(kwargs)

  def run(mode, environ, **flags):
    calls.clear()
    reason = launch.initialize_distributed(mode, environ, initialize=record, **flags)
    return reason, list(calls)

  assert run("auto", {}) == (None, [])
  assert run("off", {"SLURM_NTASKS": "4"}) == (None, [])
  assert run("on", {}) == ("--distributed=on", [{}])  # e.g. a Cloud TPU VM pod.
  reason, got = run("auto", {"TPU_WORKER_HOSTNAMES": "a,b"})
  assert "TPU" in reason and got == [{}]  # JAX detects the rest itself.
  explicit = dict(coordinator_address="localhost:1234", num_processes=2, process_id=1)
  assert run("auto", {}, **explicit)[1] == [explicit]
  # On a SLURM cluster JAX supplies what is not given.
  assert run("auto", {"SLURM_NTASKS": "2"}, process_id=1)[1] == [{"process_id": 1}]
  with pytest.raises(ValueError, match=r"needs --num_processes and --process_id"):
    run("auto", {}, coordinator_address="localhost:1234")
  with pytest.raises(ValueError, match=r"--distributed=off contradicts --coordinator_address"):
    run("off", {}, coordinator_address="localhost:1234")


def test_preemption_on_one_process_is_the_local_sigterm_flag():
  from sashimi_jax import train  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGTERM)
  with train.PreemptionSync() as preemption:
    assert not preemption.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, does not kill the test.
    time.sleep(0.01)
    assert preemption.should_stop(2) and preemption.should_stop(3)
  assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back.


# ------------------------------------------------------------------------------------------------
# Two processes on localhost.

SMALL_FLAGS = [  # batch_size 2 there: one clip per process.
    *launch_fixtures.SMALL_RUN_FLAGS,
    "--config.train.checkpoint_every_steps=1000",
    "--config.train.num_steps=1000",
]
# Every process prints the scalars it logs (only process 0 writes metrics.jsonl), and each
# training batch waits so that SIGTERM lands mid-run.
DRIVER = """
import json, runpy, sys, time
import sashimi_jax.metrics as metrics
import sashimi_jax.sharding as sharding
original_write, original_batch = metrics.MetricWriter.write_scalars, sharding.global_batch
def write_scalars(self, step, scalars):
  original_write(self, step, scalars)
  print("SCALARS " + json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}),
        flush=True)
def global_batch(mesh, batch):
  time.sleep(0.3)
  return original_batch(mesh, batch)
metrics.MetricWriter.write_scalars = write_scalars
sharding.global_batch = global_batch
sys.argv = ["launch.py"] + sys.argv[1:]
runpy.run_path("launch.py", run_name="__main__")
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _logged(path) -> dict[int, dict]:
  events = {}
  for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
    if line.startswith("SCALARS "):
      event = json.loads(line[len("SCALARS "):])
      events.setdefault(event["step"], {}).update(event)
  return events


def test_two_processes_train_together_and_save_at_the_same_step_on_sigterm(tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ)
  env.update({"PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
              "JAX_PLATFORMS": "cpu"})
  env.pop("XLA_FLAGS", None)
  address = f"localhost:{_free_port()}"
  procs, logs = [], []
  for process_id in range(2):
    logs.append(tmp_path / f"process_{process_id}.txt")
    procs.append(subprocess.Popen(
        [sys.executable, "-c", DRIVER, *SMALL_FLAGS, f"--workdir={workdir}",
         f"--coordinator_address={address}", "--num_processes=2", f"--process_id={process_id}"],
        cwd=ROOT, env=env, stdout=open(logs[-1], "w", encoding="utf-8"),
        stderr=subprocess.STDOUT))
  try:
    deadline = time.monotonic() + 400
    while not any(s >= 3 for s in _logged(logs[1])):
      assert all(p.poll() is None for p in procs), [l.read_text()[-2000:] for l in logs]
      assert time.monotonic() < deadline, "step 3 not reached"
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # only one host gets the preemption notice.
    codes = [p.wait(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [l.read_text(encoding="utf-8") for l in logs]
  assert codes == [0, 0], [t[-3000:] for t in texts]
  by_process = [_logged(l) for l in logs]
  last_steps = [max(events) for events in by_process]
  assert last_steps[0] == last_steps[1] and 3 <= last_steps[0] < 1000
  for text in texts:
    assert f"Preempted (SIGTERM): saved checkpoint at step {last_steps[0]}." in text
  # One checkpoint, at the step both processes agreed on.
  assert checkpoint_lib.Checkpointer(str(workdir), create=False).all_steps() == [last_steps[0]]
  # Data parallel over 2 hosts: one global loss, the same on both processes, every step.
  steps = sorted(by_process[0])
  assert steps == list(range(1, last_steps[0] + 1)) and sorted(by_process[1]) == steps
  assert [by_process[0][s]["train/bits_per_token"] for s in steps] == [
      by_process[1][s]["train/bits_per_token"] for s in steps]
  # Only process 0 writes metrics.jsonl.
  written = metrics_lib.read_metrics(str(workdir))
  assert [e["step"] for e in written] == steps
  assert [e["train/bits_per_token"] for e in written] == [
      by_process[0][s]["train/bits_per_token"] for s in steps]
