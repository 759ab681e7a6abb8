"""launch.py reports bad config or data as one line, before anything is compiled."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _launch(tmp_path, *overrides):
  return subprocess.run(
      [sys.executable, str(ROOT / "launch.py"), "--config=configs/stereo_temporal.py:tiny",
       f"--workdir={tmp_path / 'run'}", *overrides],
      cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_missing_data_path_is_one_line_error(tmp_path):
  result = _launch(tmp_path, f"--config.dataset.path={tmp_path / 'missing'}")
  assert result.returncode != 0
  assert "launch.py: error: Audio path" in result.stderr, result.stderr
  assert "does not exist" in result.stderr
  assert "Traceback" not in result.stderr, result.stderr


def test_invalid_config_names_the_field(tmp_path):
  result = _launch(tmp_path, "--config.dataset.bits=20")
  assert result.returncode != 0
  assert "launch.py: error: Invalid config" in result.stderr, result.stderr
  assert "dataset.bits" in result.stderr
  assert "Traceback" not in result.stderr


def test_mistyped_override_is_one_line_with_suggestion(tmp_path):
  result = _launch(tmp_path, "--config.model.d_modle=32")
  assert result.returncode == 1
  assert result.stderr.strip() == (
      "launch.py: error: --config.model.d_modle: the config has no field 'd_modle' "
      "(did you mean 'd_model'?)"), result.stderr


def test_override_of_wrong_type_is_one_line(tmp_path):
  result = _launch(tmp_path, "--config.model.d_model=abc")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("launch.py: error: flag --config.model.d_model"), (
      result.stderr)
