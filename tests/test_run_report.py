"""A run that reports itself: start block, config.json, compile time, checkpoints, lr, resume
changes, "nothing to do"; one file trains (split by time); --help lists the config fields."""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
from flax import nnx

from sashimi_jax import run_report
from sashimi_jax import state as state_lib
from sashimi_jax.data import pipeline
import audio_fixtures
import launch_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _launch(workdir, cache_dir, *flags, timeout=500):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, "launch.py", *launch_fixtures.SMALL_RUN_FLAGS, f"--workdir={workdir}",
       f"--compilation_cache_dir={cache_dir}", *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _tree_listing(directory):
  return sorted((str(p.relative_to(directory)), p.stat().st_size)
                for p in pathlib.Path(directory).rglob("*") if p.is_file())


def test_one_file_trains_reports_itself_and_a_finished_rerun_writes_nothing(tmp_path):
  one_file = tmp_path / "ONE_FILE.wav"
  audio_fixtures.write_audio(one_file, 44100, channels=2, sample_rate=44100)  # 1 s at 44.1 kHz.
  workdir, cache_dir = tmp_path / "run", tmp_path / "xla"
  first = _launch(workdir, cache_dir, f"--config.dataset.path={one_file}",
                  "--config.train.num_steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  out = first.stdout
  model = state_lib.build_model(ml_collections.ConfigDict(json.loads(
      (workdir / "config.json").read_text())), nnx.Rngs(0))
  total = sum(int(np.prod(x.shape)) for x in
              __import__("jax").tree_util.tree_leaves(nnx.state(model, nnx.Param)))
  assert f"parameters: {total:,} (" in out, out
  assert "level 0 " in out and "center " in out
  assert "devices: 1 x cpu" in out and "mesh data=1" in out
  assert "too few files, so each file is split by time" in out
  assert "valid: 1 file(s)" in out and "ONE_FILE.wav [0.88-0.94 s]" in out, out
  assert "resampled to 16000 Hz (from 44100 Hz): 1 file(s): ONE_FILE.wav" in out
  assert f"config (saved to {workdir / 'config.json'})" in out
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 2
  compiling = [l for l in out.splitlines() if l.startswith("compiling the train step")]
  assert len(compiling) == 1 and " done in " in compiling[0], out
  assert "| lr 0.001" in out or "| lr 0.0005" in out, out
  assert "Saved checkpoint step 2" in first.stderr
  assert out.index("parameters:") < out.index("compiling") < out.index("step 2/2")

  before = _tree_listing(workdir)
  again = _launch(workdir, cache_dir, f"--config.dataset.path={one_file}",
                  "--config.train.num_steps=2")
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.strip().splitlines() == [
      f"nothing to do: already at step 2 (train.num_steps=2) in {workdir / 'checkpoints'}."]
  assert _tree_listing(workdir) == before  # no new event file, metrics line or checkpoint.

  more = _launch(workdir, cache_dir, f"--config.dataset.path={one_file}",
                 "--config.train.num_steps=3", "--config.train.learning_rate=0.002")
  assert more.returncode == 0, more.stderr[-3000:]
  assert f"Resumed from {workdir / 'checkpoints'} step 2; config changes" in more.stdout
  assert "train.learning_rate: 0.001 -> 0.002" in more.stdout
  assert "train.num_steps: 2 -> 3" in more.stdout

  # No validation split at all (valid_fraction=0 is allowed): trains, never evaluates.
  no_valid = tmp_path / "no_valid"
  result = _launch(no_valid, cache_dir, f"--config.dataset.path={one_file}",
                   "--config.train.num_steps=2", "--config.dataset.valid_fraction=0",
                   "--config.dataset.test_fraction=0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "no validation split" in result.stderr and "train: 1 file(s), 1.0 s" in result.stdout
  assert "eval/" not in result.stdout and (no_valid / "checkpoints" / "2").is_dir()


def test_failed_starts_leave_no_folders(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  for path, message in ((tmp_path / "missing", "does not exist"),
                        (empty, "no file with an audio extension")):
    workdir = tmp_path / "runs" / "new"
    result = _launch(workdir, tmp_path / "xla", f"--config.dataset.path={path}")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "see the warnings above" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_help_lists_config_fields_with_comments_and_exits_0():
  result = subprocess.run([sys.executable, "launch.py", "--help",
                           "--config=configs/stereo_temporal.py:tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  field = next(l for l in lines if l.strip().startswith("--config.dataset.sample_len="))
  assert "=1024" in field and "frames per training clip" in field
  assert any(l.strip().startswith("--config.train.learning_rate=") for l in lines)
  assert "--workdir" in result.stdout


def test_parameter_counts_per_level_sum_to_the_model_total():
  import runpy  # pylint: disable=g-import-not-at-top
  config = runpy.run_path(str(ROOT / "configs" / "stereo_temporal.py"))["get_config"]("tiny")
  config.model.unet = True
  params = nnx.to_pure_dict(nnx.state(state_lib.build_model(config, nnx.Rngs(0)), nnx.Param))
  counts = run_report.parameter_counts(params)
  # The stereo preset's input convolution (width 4, dense over 64 features) is its own entry.
  assert list(counts) == ["embedding", "input_conv", "level 0", "level 1", "center", "norm",
                          "head"]
  assert counts["input_conv"] == 4 * 64 * 64 + 64
  total = sum(int(np.prod(x.shape)) for x in __import__("jax").tree_util.tree_leaves(params))
  assert sum(counts.values()) == total
  assert counts["embedding"] == 256 * 64 and counts["norm"] == 2 * 64
  # The deeper level is wider (x expand): more parameters than the outer one.
  assert counts["center"] > counts["level 1"] > counts["level 0"]


def test_data_lines_name_resampled_and_down_mixed_files(tmp_path):
  audio_fixtures.write_audio(tmp_path / "a.wav", 4000, channels=2, sample_rate=8000)
  audio_fixtures.write_audio(tmp_path / "b.wav", 4000, channels=1, sample_rate=16000)
  audio_fixtures.write_audio(tmp_path / "c.wav", 4000, channels=2, sample_rate=8000, seed=2)
  cfg = audio_fixtures.dataset_config(tmp_path, is_stereo=False, valid_fraction=0.3,
                                      test_fraction=0.0)
  text = "\n".join(run_report.data_lines(pipeline.split_sources(cfg), cfg))
  assert "train: 2 file(s), 0.8 s" in text, text
  assert "valid: 1 file(s), 0.5 s" in text and "c.wav" in text, text
  assert "resampled to 8000 Hz (from 16000 Hz): 1 file(s): b.wav" in text
  assert "down-mixed to mono (channels averaged): 2 file(s): a.wav, c.wav" in text


def test_config_changes_lists_every_difference():
  saved = {"train": {"learning_rate": 0.001, "num_steps": 10}, "seed": 0}
  current = ml_collections.ConfigDict({"train": {"learning_rate": 0.002, "num_steps": 10},
                                       "seed": 0})
  assert run_report.config_changes(saved, current) == ["train.learning_rate: 0.001 -> 0.002"]
