"""sample.py as a batch job on a real (briefly trained) checkpoint: devices, hosts, kill and resume.

One stereo checkpoint (launch.py, 2 steps) and one reference job on one device; the same job on 8
simulated CPU devices, on two processes over localhost (jax.distributed, one device each) and
killed with SIGKILL mid-way then rerun must write the same clips (same audio in every WAV) and
one samples.json.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

import launch_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_SAMPLES = 16
JOB_FLAGS = [f"--num_samples={NUM_SAMPLES}", "--seconds=0.004", "--per_device_batch_size=2",
             "--compilation_cache_dir="]


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env.update({"PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
              "JAX_PLATFORMS": "cpu"})
  # Set even for one device: sample.py otherwise makes one CPU device per core.
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _sample(workdir, output_dir, *flags, devices=1, check=True):
  done = subprocess.run(
      [sys.executable, "sample.py", f"--workdir={workdir}", f"--output_dir={output_dir}",
       *JOB_FLAGS, *flags], cwd=ROOT, env=_env(devices), capture_output=True, text=True,
      timeout=600, check=False)
  if check:
    assert done.returncode == 0, done.stderr[-3000:]
  return done


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  done = subprocess.run(
      [sys.executable, "launch.py", *launch_fixtures.SMALL_RUN_FLAGS, f"--workdir={workdir}",
       "--config.train.num_steps=2", "--config.train.checkpoint_every_steps=2",
       "--compilation_cache_dir="], cwd=ROOT, env=_env(), capture_output=True, text=True,
      timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("reference")
  _sample(checkpoint, output_dir)  # 8 batches of 2
  return output_dir


def _clips(output_dir) -> dict[str, np.ndarray]:
  return {f"sample_{i:03d}.wav": sf.read(pathlib.Path(output_dir) / f"sample_{i:03d}.wav",
                                         dtype="float32")[0] for i in range(NUM_SAMPLES)}


def _assert_same_job(output_dir, reference_dir):
  clips, expected = _clips(output_dir), _clips(reference_dir)
  for name, audio in expected.items():
    assert audio.shape == (64, 2)
    np.testing.assert_array_equal(clips[name], audio, err_msg=name)
  saved = json.loads((pathlib.Path(output_dir) / "samples.json").read_text())
  want = json.loads((pathlib.Path(reference_dir) / "samples.json").read_text())
  assert sorted(r["file"] for r in saved["samples"]) == sorted(expected)
  assert [r["file"] for r in saved["samples"]] == [r["file"] for r in want["samples"]]
  likelihoods = [r["log_likelihood_nats"] for r in saved["samples"]]
  assert likelihoods == sorted(likelihoods, reverse=True)
  np.testing.assert_allclose(likelihoods, [r["log_likelihood_nats"] for r in want["samples"]],
                             rtol=1e-5)
  assert not list(pathlib.Path(output_dir).rglob(".tmp-*"))


def test_eight_devices_write_the_clips_of_one_device(checkpoint, reference, tmp_path):
  done = _sample(checkpoint, tmp_path, devices=8)
  assert "8 devices" in done.stderr
  assert "Process 0 wrote 16 clips" in done.stderr  # 1 batch of 2 rows on each of 8 devices.
  _assert_same_job(tmp_path, reference)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_each_write_their_share_and_one_samples_json(checkpoint, reference,
                                                                   tmp_path):
  address = f"localhost:{_free_port()}"
  procs, logs = [], []
  for process_id in range(2):
    logs.append(tmp_path / f"process_{process_id}.txt")
    procs.append(subprocess.Popen(
        [sys.executable, "sample.py", f"--workdir={checkpoint}", f"--output_dir={tmp_path / 'out'}",
         *JOB_FLAGS, f"--coordinator_address={address}", "--num_processes=2",
         f"--process_id={process_id}"], cwd=ROOT, env=_env(),
        stdout=open(logs[-1], "w", encoding="utf-8"), stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=600) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [l.read_text(encoding="utf-8") for l in logs]
  assert codes == [0, 0], [t[-3000:] for t in texts]
  # 4 batches of 4 rows, 2 on each process's device.
  assert "Process 0 wrote 8 clips" in texts[0] and "Process 1 wrote 8 clips" in texts[1]
  assert "Wrote 16 clips" in texts[0] and "Wrote 16 clips" not in texts[1]
  _assert_same_job(tmp_path / "out", reference)


# Writes each WAV in two halves with a pause between, so SIGKILL lands mid-write.
SLOW_WRITER = """
import runpy, sys, time
import soundfile
original = soundfile.write
def slow_write(path, data, *args, **kwargs):
  original(path, data[: len(data) // 2], *args, **kwargs)
  time.sleep(0.4)
  original(path, data, *args, **kwargs)
soundfile.write = slow_write
sys.argv = ["sample.py"] + sys.argv[1:]
runpy.run_path("sample.py", run_name="__main__")
"""


def test_killed_job_rerun_generates_only_the_rest_and_never_leaves_a_partial_final_file(
    checkpoint, reference, tmp_path):
  out = tmp_path / "out"
  proc = subprocess.Popen(
      [sys.executable, "-c", SLOW_WRITER, f"--workdir={checkpoint}", f"--output_dir={out}",
       *JOB_FLAGS], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 400
    while len(list(out.glob("records/*.json"))) < 3:
      assert proc.poll() is None, proc.stderr.read()[-3000:]
      assert time.monotonic() < deadline, "3 clips not written"
      time.sleep(0.02)
    while not list(out.glob(".tmp-*.wav")):  # kill while a WAV is half written.
      assert proc.poll() is None
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  complete = sorted(p.stem for p in (out / "records").glob("*.json"))
  assert 3 <= len(complete) < NUM_SAMPLES
  assert list(out.glob(".tmp-*.wav")), "the kill should have caught a WAV mid-write"
  expected = _clips(reference)
  for wav in out.glob("sample_*.wav"):  # a final name always holds a whole clip.
    np.testing.assert_array_equal(sf.read(wav, dtype="float32")[0], expected[wav.name])
  assert not (out / "samples.json").exists()
  rerun = _sample(checkpoint, out)
  assert (f"Wrote {NUM_SAMPLES - len(complete)} clips to {out} ({len(complete)} already "
          "complete)") in rerun.stdout
  _assert_same_job(out, reference)
  # Other arguments into the same folder: one line, nothing written.
  other = _sample(checkpoint, out, "--seed=3", check=False)
  assert other.returncode != 0
  assert other.stderr.strip().splitlines()[-1].startswith(
      f"sample.py: error: --output_dir {out} holds a job with other arguments (seed: 0 there, 3 "
      "now)")
