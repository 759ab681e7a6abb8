"""Tests of the bundled stereo demo data (sashimi_jax/demo_data) and its render recipe's helpers."""

import functools
import hashlib
import importlib.util
import json
import pathlib
import re

import chex
import numpy as np
import pytest
import soundfile as sf

import sashimi_jax

DEMO_DIR = pathlib.Path(sashimi_jax.__file__).resolve().parent / "demo_data"
SCRIPT_PATH = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "render_demo_data.py"
SAMPLE_RATE_HZ = 16000
PEAK = 10 ** (-1 / 20)  # -1 dBFS.


@functools.cache
def manifest() -> dict:
  return json.loads((DEMO_DIR / "manifest.json").read_text())


@functools.cache
def decoded(name: str) -> tuple[np.ndarray, int]:
  audio, rate_hz = sf.read(DEMO_DIR / name, dtype="float64", always_2d=True)
  return audio, rate_hz


def file_names() -> list[str]:
  return [f["name"] for f in manifest()["files"]]


def render_script():
  spec = importlib.util.spec_from_file_location("render_demo_data", SCRIPT_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_manifest_lists_exactly_the_flac_files():
  names = file_names()
  assert len(names) == len(set(names))
  assert sorted(names) == sorted(p.name for p in DEMO_DIR.glob("*.flac"))
  # A split by file must leave at least one validation and one test file.
  assert len(names) >= 8
  assert manifest()["sample_rate"] == SAMPLE_RATE_HZ and manifest()["channels"] == 2


@pytest.mark.parametrize("entry", manifest()["files"], ids=file_names())
def test_file_decodes_and_matches_manifest(entry):
  path = DEMO_DIR / entry["name"]
  assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
  info = sf.info(path)
  assert (info.format, info.subtype) == ("FLAC", "PCM_16")
  audio, rate_hz = decoded(entry["name"])
  assert rate_hz == entry["sample_rate"] == SAMPLE_RATE_HZ
  chex.assert_shape(audio, (entry["frames"], 2))
  assert entry["channels"] == 2
  assert entry["seconds"] == pytest.approx(entry["frames"] / SAMPLE_RATE_HZ, abs=1e-4)
  assert 8.0 <= entry["seconds"] <= 35.0


def test_total_duration_and_size():
  total_seconds = sum(f["frames"] for f in manifest()["files"]) / SAMPLE_RATE_HZ
  assert 150.0 <= total_seconds <= 240.0
  assert manifest()["total_seconds"] == pytest.approx(total_seconds, abs=1e-2)
  total_megabytes = sum((DEMO_DIR / n).stat().st_size for n in file_names()) / 1e6
  assert total_megabytes < 8.5


@pytest.mark.parametrize("name", file_names())
def test_left_and_right_genuinely_differ(name):
  audio, _ = decoded(name)
  left, right = audio[:, 0], audio[:, 1]
  rms = np.sqrt(np.mean(audio ** 2))
  assert np.corrcoef(left, right)[0, 1] < 0.99
  assert np.sqrt(np.mean((left - right) ** 2)) > 0.25 * rms


@pytest.mark.parametrize("name", file_names())
def test_not_silent_not_clipped_peak_normalized(name):
  audio, _ = decoded(name)
  assert np.all(np.isfinite(audio))
  for channel in range(2):
    assert np.sqrt(np.mean(audio[:, channel] ** 2)) > 0.02, f"channel {channel} nearly silent"
  # Peak-normalized jointly to -1 dBFS: the louder channel reaches it, nothing clips.
  assert np.max(np.abs(audio)) == pytest.approx(PEAK, abs=2e-3)
  assert np.sum(np.abs(audio) >= 0.999) == 0
  # Trimmed: the first and last 100 ms are not all silence below -60 dB of the peak.
  tenth_frames = SAMPLE_RATE_HZ // 10
  assert np.max(np.abs(audio[:tenth_frames])) > 0.9e-3 * PEAK
  assert np.max(np.abs(audio[-tenth_frames:])) > 0.9e-3 * PEAK


def test_readme_names_every_file_and_the_licences():
  readme = (DEMO_DIR / "README.md").read_text()
  for entry in manifest()["files"]:
    assert f"`{entry['name']}`" in readme
    assert entry["corpus_path"] in readme
  for phrase in ("public domain", "MIT", "Frank Wen", "LGPL", "render_demo_data.py"):
    assert phrase in readme, phrase


def test_spread_pans_go_left_to_right():
  script = render_script()
  assert script.spread_pans(1) == [64]
  for num_parts in (2, 4, 5):
    pans = script.spread_pans(num_parts)
    assert len(pans) == num_parts
    assert pans[0] < 64 < pans[-1]
    assert all(a < b for a, b in zip(pans, pans[1:]))
    assert all(0 <= p <= 127 for p in pans)
  with pytest.raises(ValueError, match="num_parts"):
    script.spread_pans(0)


def test_part_channels_skip_percussion():
  script = render_script()
  channels = script.part_channels(12)
  assert script.PERCUSSION_CHANNEL not in channels
  assert len(set(channels)) == 12
  with pytest.raises(ValueError, match="15 melodic MIDI channels"):
    script.part_channels(16)


def test_trim_and_normalize():
  script = render_script()
  rng = np.random.default_rng(0)
  music = rng.uniform(-0.3, 0.3, (1000, 2)) * np.array([1.0, 0.5])
  padded = np.concatenate([np.zeros((200, 2)), music, np.full((300, 2), 1e-9)])
  pcm = script.trim_and_normalize(padded)
  assert pcm.dtype == np.int16
  level = np.abs(music).max(axis=1)
  first, last = np.nonzero(level > level.max() * 1e-3)[0][[0, -1]]
  chex.assert_shape(pcm, (last - first + 1, 2))
  assert np.abs(pcm).max() == round(PEAK * 32767)
  np.testing.assert_allclose(pcm[:, 1] / 32767, music[first:last + 1, 1] * PEAK
                             / np.abs(music).max(), atol=1 / 32767)
  with pytest.raises(ValueError, match="silent"):
    script.trim_and_normalize(np.zeros((10, 2)))
  with pytest.raises(ValueError, match="stereo"):
    script.trim_and_normalize(np.ones((10, 1)))



def dockerignore_regex(pattern: str) -> re.Pattern:
  """A .dockerignore pattern as a regex over slash-separated relative paths (`**` spans dirs)."""
  out, i = "", 0
  pattern = pattern.strip("/")
  while i < len(pattern):
    if pattern.startswith("**/", i):
      out, i = out + "(?:.*/)?", i + 3
    elif pattern.startswith("**", i):
      out, i = out + ".*", i + 2
    elif pattern[i] == "*":
      out, i = out + "[^/]*", i + 1
    elif pattern[i] == "?":
      out, i = out + "[^/]", i + 1
    else:
      out, i = out + re.escape(pattern[i]), i + 1
  return re.compile(out)


def test_docker_build_context_keeps_demo_data():
  """The image installs the package from the build context, so .dockerignore must keep the FLACs."""
  repo = SCRIPT_PATH.parent.parent
  patterns = [dockerignore_regex(line.strip())
              for line in (repo / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]

  def ignored(relative_path: str) -> bool:
    # A pattern that matches a directory excludes everything under it.
    parts = relative_path.split("/")
    return any(p.fullmatch("/".join(parts[:i]))
               for p in patterns for i in range(1, len(parts) + 1))

  for name in file_names() + ["manifest.json", "README.md"]:
    assert not ignored(f"sashimi_jax/demo_data/{name}"), name
  for path in ("setup.py", "launch.py", "configs/default.py", "sashimi_jax/__init__.py"):
    assert not ignored(path), path
  for path in (".git/HEAD", "runs/demo/ckpt", ".venv/bin/python", "sashimi_jax/__pycache__/x.pyc",
               "__pycache__/y.pyc"):
    assert ignored(path), path
