"""evaluate.py and sashimi_jax.evaluate: checkpoint choice, split and folder scores, equal to the
training loop's evaluation and to a direct recomputation."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax import checkpoint as checkpoint_lib
from sashimi_jax import evaluate
from sashimi_jax import heads
from sashimi_jax import metrics as metrics_lib
from sashimi_jax.data import pipeline
from sashimi_jax.data import stereo
import audio_fixtures
import launch_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 3


def _env(cache_dir):
  env = dict(os.environ)
  env.update({"PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
              "JAX_PLATFORMS": "cpu"})
  env.pop("XLA_FLAGS", None)
  return env


def _run(program, *args, cache_dir, timeout=400):
  return subprocess.run([sys.executable, program, *args, f"--compilation_cache_dir={cache_dir}"],
                        cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A 3-step run on 4 short stereo files (one each for validation and test)."""
  root = tmp_path_factory.mktemp("eval_run")
  data = root / "data"
  for i in range(4):
    audio_fixtures.write_audio(data / f"song{i}.wav", 1200 + 300 * i, channels=2,
                               sample_rate=16000, seed=i)
  workdir, cache_dir = root / "run", root / "xla"
  result = _run("launch.py", *launch_fixtures.SMALL_RUN_FLAGS, f"--workdir={workdir}",
                f"--config.dataset.path={data}", f"--config.train.num_steps={NUM_STEPS}",
                "--config.dataset.valid_fraction=0.25", "--config.dataset.test_fraction=0.25",
                cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, cache_dir


def _recompute(workdir, split):
  """Test-split bits per token (total, left, right), written out from the definitions."""
  config, model, _ = checkpoint_lib.load_for_inference(str(workdir))
  clips = pipeline.build_clip_source(config.dataset, split)
  channel = stereo.channel_of_position(int(config.dataset.sample_len), "temporal")
  y = np.stack([pipeline.encode_clip(clips[i], config.dataset) for i in range(len(clips))])
  x = pipeline.shift_right(y, 8)
  outputs = model(jnp.asarray(x))  # every clip in one batch.
  bits = np.asarray(heads.token_nll(outputs, jnp.asarray(y), head="categorical", bits=8,
                                    n_mixtures=0), np.float64) / math.log(2)  # (clips, T)
  sums = np.array([bits[:, channel == c].sum() for c in (0, 1)])
  counts = np.array([(channel == c).sum() * len(clips) for c in (0, 1)])
  return sums.sum() / counts.sum(), sums[0] / counts[0], sums[1] / counts[1], len(clips)


def test_test_split_equals_a_direct_recomputation(trained_run):
  workdir, cache_dir = trained_run
  result = _run("evaluate.py", f"--workdir={workdir}", "--split=test", "--batch_size=16",
                cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  total, left, right, num_clips = _recompute(workdir, "test")
  saved = json.loads((workdir / "evaluation" / f"test_step{NUM_STEPS}.json").read_text())
  assert saved["clips"] == num_clips
  np.testing.assert_allclose([saved["bits_per_token"], saved["bits_per_token_left"],
                              saved["bits_per_token_right"]], [total, left, right], rtol=1e-5)
  assert saved["bits_per_frame"] == pytest.approx(2 * total, rel=1e-5)
  assert f"{total:.4f} bits/token" in result.stdout, result.stdout
  assert f"left {left:.4f}, right {right:.4f}" in result.stdout, result.stdout
  assert [f["file"].rsplit("/", 1)[-1] for f in saved["files"]] == ["song3.wav"]
  # TensorBoard got the totals.
  events = b"".join(p.read_bytes() for p in (workdir / "tensorboard").glob("events.out.*"))
  assert b"evaluate/test/bits_per_token_left" in events


def test_max_batches_equals_the_training_loops_evaluation(trained_run):
  workdir, _ = trained_run
  logged = [e for e in metrics_lib.read_metrics(str(workdir)) if "eval/bits_per_token" in e][-1]
  assert logged["step"] == NUM_STEPS
  result = evaluate.evaluate_checkpoint(str(workdir), step="latest", split="valid",
                                        max_batches=1, show_progress=False)
  assert result["bits_per_token"] == pytest.approx(logged["eval/bits_per_token"], rel=1e-5)
  assert result["bits_per_token_left"] == pytest.approx(logged["eval/bits_per_token_left"],
                                                        rel=1e-5)
  assert result["bits_per_token_right"] == pytest.approx(logged["eval/bits_per_token_right"],
                                                         rel=1e-5)


def test_a_folder_of_new_audio_names_each_file(trained_run, tmp_path):
  workdir, cache_dir = trained_run
  folder = tmp_path / "new_music"
  audio_fixtures.write_audio(folder / "first.wav", 900, channels=2, sample_rate=8000, seed=7)
  audio_fixtures.write_audio(folder / "second.flac", 500, channels=2, sample_rate=44100, seed=8)
  out = tmp_path / "scores.json"
  result = _run("evaluate.py", f"--workdir={workdir}", "--step=best", f"--audio={folder}",
                f"--output_json={out}", cache_dir=cache_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads(out.read_text())
  names = [os.path.basename(f["file"]) for f in saved["files"]]
  assert names == ["first.wav", "second.flac"]
  for f in saved["files"]:
    assert f"{os.path.basename(f['file'])}: {f['bits_per_token']:.4f} bits/token" in result.stdout
    assert 0 < f["bits_per_token"] < 16
  # first.wav: 900 frames at 8 kHz = 1800 at 16 kHz = 56 clips of 32 frames.
  assert saved["files"][0]["clips"] == 1800 // 32


def test_resolve_step_latest_best_and_number(tmp_path):
  for step in (2, 4, 6):
    (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step, bits in ((2, 7.0), (4, 6.5), (5, 6.0), (6, 6.8)):  # step 5 was not saved.
      f.write(json.dumps({"step": step, "eval/bits_per_token": bits}) + "\n")
  assert evaluate.resolve_step(str(tmp_path), "latest") == 6
  assert evaluate.resolve_step(str(tmp_path), "best") == 4
  assert evaluate.resolve_step(str(tmp_path), "2") == 2
  with pytest.raises(FileNotFoundError, match="saved steps"):
    evaluate.resolve_step(str(tmp_path), "3")
  with pytest.raises(ValueError, match="latest"):
    evaluate.resolve_step(str(tmp_path), "newest")


def test_clip_order_matches_the_training_loops_eval_batches():
  assert list(evaluate.clip_order(5, 2, None)) == [0, 1, 2, 3, 4]
  assert list(evaluate.clip_order(5, 2, 1)) == [0, 1]
  assert list(evaluate.clip_order(3, 4, 2)) == [0, 1, 2, 0]  # one batch, wrapped.
