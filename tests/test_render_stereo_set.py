"""The second stereo set's recipe: file order, pans, and a clear error without its tools."""

import pathlib
import runpy

import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "render_stereo_set.py"


def test_pieces_and_pans():
  module = runpy.run_path(str(_SCRIPT))
  names = [p.name for p in module["PIECES"]]
  assert len(set(names)) == len(names) >= 3
  pans = module["spread_pans"](4)
  assert pans[0] == module["PAN_MIN"] and pans[-1] == module["PAN_MAX"]
  assert pans == sorted(pans)


def test_missing_fluidsynth_is_named(tmp_path, monkeypatch):
  module = runpy.run_path(str(_SCRIPT))
  monkeypatch.setattr(module["shutil"], "which", lambda name: None)
  with pytest.raises(FileNotFoundError, match="apt-get install fluidsynth"):
    module["render_set"](tmp_path)
  assert not list(tmp_path.glob("*.flac"))
