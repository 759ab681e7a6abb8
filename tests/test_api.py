"""sashimi_jax.load: the docs/PYTHON_API.md example runs; score and generate agree with the
definitions."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import sashimi_jax
from sashimi_jax import evaluate
import checkpoint_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return checkpoint_fixtures.write_checkpoint(tmp_path_factory.mktemp("api"))


def test_the_documented_example_runs(workdir, tmp_path, monkeypatch, capsys):
  text = (ROOT / "docs" / "PYTHON_API.md").read_text(encoding="utf-8")
  (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert 'sashimi_jax.load("runs/demo"' in code
  monkeypatch.chdir(tmp_path)
  exec(compile(code.replace('"runs/demo"', repr(workdir)), "PYTHON_API.md", "exec"), {})
  out = capsys.readouterr().out
  assert "step 1: 2 channel(s) at 16000 Hz" in out
  assert re.search(r"\d+\.\d{3} bits/token \(left \d+\.\d{3}, right \d+\.\d{3}\)", out), out
  info = sf.info(tmp_path / "generated.flac")
  assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 2, 800, "PCM_16")


def test_score_equals_evaluating_the_same_file(workdir, tmp_path):
  run = sashimi_jax.load(workdir)
  audio = np.random.default_rng(1).uniform(-0.3, 0.3, (400, 2)).astype(np.float32)
  sf.write(tmp_path / "x.wav", audio, 8000, subtype="FLOAT")
  from_file = evaluate.score_source(
      run.model, run.config, evaluate.clip_source(run.config, audio_path=str(tmp_path / "x.wav")),
      batch_size=4, show_progress=False)
  from_array = run.score(audio, sample_rate_hz=8000, batch_size=3)
  assert from_array["clips"] == from_file["clips"] == 800 // 32
  for key in ("bits_per_token", "bits_per_token_left", "bits_per_token_right"):
    assert from_array[key] == pytest.approx(from_file[key], rel=1e-5), key
  assert from_array["bits_per_frame"] == pytest.approx(2 * from_array["bits_per_token"])


def test_generate_is_seeded_and_decoded(workdir):
  run = sashimi_jax.load(workdir, step=1)
  a = run.generate(3, seconds=0.004, seed=5, batch_size=2)
  b = run.generate(3, seconds=0.004, seed=5)
  assert a.shape == (3, 64, 2) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)  # clip i depends on (seed, i), not on the batching.
  assert np.all(np.abs(a) <= 1.0)
  with pytest.raises(ValueError, match="mono"):
    run.score(np.zeros(100, np.float32))


def test_generate_computes_the_recurrence_constants_once(workdir, monkeypatch):
  from sashimi_jax import sampling  # pylint: disable=g-import-not-at-top
  run = sashimi_jax.load(workdir, step=1)
  want = run.generate(3, seconds=0.004, seed=5, batch_size=1)
  calls = []
  setup = sampling._setup_recurrence  # pylint: disable=protected-access
  monkeypatch.setattr(sampling, "_setup_recurrence",
                      lambda *a, **k: calls.append(1) or setup(*a, **k))
  np.testing.assert_array_equal(run.generate(3, seconds=0.004, seed=5, batch_size=1), want)
  assert len(calls) == 1  # three batches


_TWO_DEVICES = r"""
import sys
import jax, numpy as np
import sashimi_jax
assert jax.device_count() == 2, jax.devices()
run = sashimi_jax.load(sys.argv[1], step=1)
one = run.generate(4, seconds=0.004, seed=5, batch_size=2)  # one device, 2 rows at a time
two = run.generate(4, seconds=0.004, seed=5, batch_size=4, devices=jax.devices())  # 2 x 2 rows
odd = run.generate(3, seconds=0.004, seed=5, batch_size=3, devices=jax.devices())  # 3 -> 2 x 2
np.testing.assert_array_equal(two, one)
np.testing.assert_array_equal(odd, one[:3])
try:
  run.generate(2, seconds=0.004, devices=[])
except ValueError as e:
  print("REFUSED", e)
print("OK", two.shape, odd.shape)
"""


def test_generate_splits_batches_over_devices(workdir):
  env = dict(os.environ)
  env.update({"PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
              "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES, str(workdir)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "OK (4, 64, 2) (3, 64, 2)" in proc.stdout
  assert "REFUSED devices must be a non-empty list" in proc.stdout
