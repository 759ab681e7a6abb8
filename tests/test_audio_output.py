"""Samples as people use them: output rate, FLAC/PCM subtypes, loudness, dB spectrograms, units in
samples.json, speed with and without compilation; and sample.py writing 44.1 kHz FLAC."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from sashimi_jax import audio_output
from sashimi_jax import audio_summaries
import checkpoint_fixtures

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _sine(frames, rate=16000, freq=440.0, amplitude=0.5, channels=2):
  t = np.arange(frames) / rate
  return np.stack([amplitude * np.sin(2 * np.pi * freq * t)] * channels, -1).astype(np.float32)


def test_flac_at_44100_hz_has_the_right_rate_subtype_and_shape(tmp_path):
  options = audio_output.OutputOptions(output_rate_hz=44100, file_format="flac").validate()
  written = audio_output.write_clip(str(tmp_path / "clip"), _sine(16000), 16000, options)
  info = sf.info(tmp_path / "clip.flac")
  assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 44100, 2)
  assert info.frames == 44100 == written["frames"]
  audio, _ = sf.read(tmp_path / "clip.flac")
  # Polyphase resampling keeps the tone: 440 Hz at the same level.
  spectrum = np.abs(np.fft.rfft(audio[:, 0]))
  assert np.argmax(spectrum) == 440  # 1 s of audio: bin k is k Hz.
  assert np.max(np.abs(audio)) == pytest.approx(0.5, abs=0.01)


def test_subtypes_and_bad_options(tmp_path):
  options = audio_output.OutputOptions(file_format="wav", subtype="pcm_24").validate()
  audio_output.write_clip(str(tmp_path / "a"), _sine(100), 16000, options)
  assert sf.info(tmp_path / "a.wav").subtype == "PCM_24"
  assert audio_output.OutputOptions().resolved_subtype == "FLOAT"
  with pytest.raises(ValueError, match="FLOAT cannot be written as FLAC"):
    audio_output.OutputOptions(file_format="flac", subtype="FLOAT").validate()
  with pytest.raises(ValueError, match="--format='mp3' is unknown"):
    audio_output.OutputOptions(file_format="mp3").validate()
  with pytest.raises(ValueError, match="must lie in"):
    audio_output.OutputOptions(loudness_dbfs=3.0).validate()


def test_loudness_reaches_its_rms_target_unless_a_peak_would_clip():
  quiet = _sine(16000, amplitude=0.01)
  louder, gain_db = audio_output.normalize_loudness(quiet, -20.0)
  assert audio_output.rms_dbfs(louder) == pytest.approx(-20.0, abs=1e-3)
  assert gain_db == pytest.approx(-20.0 - audio_output.rms_dbfs(quiet), abs=1e-3)
  spiky = np.zeros((16000, 2), np.float32)
  spiky[::1000] = 0.5
  limited, _ = audio_output.normalize_loudness(spiky, -3.0)
  assert np.max(np.abs(limited)) == pytest.approx(1.0, abs=1e-6)
  assert audio_output.rms_dbfs(limited) < -3.0
  silent, gain_db = audio_output.normalize_loudness(np.zeros((10, 2)), -20.0)
  assert gain_db == 0.0 and not silent.any()


def test_spectrogram_is_in_dbfs_with_a_colour_bar():
  full_scale = _sine(4096, amplitude=1.0, channels=1)[:, 0]
  db = audio_summaries.log_spectrogram(full_scale)
  assert db.max() == pytest.approx(0.0, abs=1.5)  # a full-scale sine peaks at ~0 dBFS.
  fig = audio_summaries.spectrogram_figure(_sine(4096), 16000)
  colour_bars = [ax for ax in fig.axes if ax.get_ylabel() == "dBFS"]
  assert len(colour_bars) == 2 and len(fig.axes) == 4


def test_records_carry_units_and_loudness_gain(tmp_path):
  record = audio_output.record_units(-50.0, 1.0, new_tokens=320)
  assert set(record) == {"log_likelihood_nats", "bits_per_token", "mean_entropy_bits"}
  assert record["bits_per_token"] == pytest.approx(50.0 / (320 * math.log(2)))
  assert record["mean_entropy_bits"] == pytest.approx(1.0 / math.log(2))
  options = audio_output.OutputOptions(output_rate_hz=8000, loudness_dbfs=-30.0)
  written = audio_output.write_clip(str(tmp_path / "quiet"), _sine(160, amplitude=0.1), 16000,
                                    options)
  assert written["file"] == "quiet.wav" and written["frames"] == 80
  audio, rate = sf.read(tmp_path / "quiet.wav")
  assert rate == 8000 and audio_output.rms_dbfs(audio) == pytest.approx(-30.0, abs=0.05)
  assert written["gain_db"] < 0
  header = audio_output.options_record(options, 16000)
  assert header == {"model_sample_rate_hz": 16000, "output_sample_rate_hz": 8000,
                    "format": "wav", "subtype": "FLOAT", "loudness_target_dbfs_rms": -30.0}


def test_compile_timer_counts_compilation_only():
  with audio_output.CompileTimer() as timer:
    jax.jit(lambda x: jnp.cos(x) * 3.0 + 0.125)(jnp.ones(7)).block_until_ready()
  assert timer.seconds > 0
  compiled = timer.seconds
  f = jax.jit(lambda x: x * 5.0 - 0.25)
  f(jnp.ones(3))
  with audio_output.CompileTimer() as again:
    f(jnp.ones(3)).block_until_ready()  # already compiled.
  assert again.seconds == 0.0 and timer.seconds == compiled
  speed = audio_output.speed_report(generated_tokens=32000, generated_frames=16000,
                                    model_rate_hz=16000, wall_seconds=4.0, compile_seconds=3.0)
  assert speed["tokens_per_second_incl_compile"] == 8000
  assert speed["tokens_per_second_excl_compile"] == 32000
  assert speed["real_time_factor_incl_compile"] == 0.25
  assert speed["real_time_factor_excl_compile"] == 1.0


def test_sample_py_writes_44100_hz_flac(tmp_path):
  workdir = checkpoint_fixtures.write_checkpoint(tmp_path)
  out = tmp_path / "samples"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "sample.py", f"--workdir={workdir}", f"--output_dir={out}",
       "--num_samples=2", "--per_device_batch_size=2", "--seconds=0.02", "--output_rate=44100",
       "--format=flac", "--spectrograms", "--compilation_cache_dir="],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((out / "samples.json").read_text())
  assert sorted(r["file"] for r in saved["samples"]) == ["sample_000.flac", "sample_001.flac"]
  for record in saved["samples"]:
    info = sf.info(out / record["file"])
    assert (info.samplerate, info.subtype, info.channels, info.frames) == (44100, "PCM_16", 2, 882)
    assert "mean_entropy_bits" in record and "log_likelihood_nats" in record
  for key in ("tokens_per_second_incl_compile", "tokens_per_second_excl_compile",
              "real_time_factor_incl_compile", "real_time_factor_excl_compile"):
    assert saved[key] > 0, key
  assert saved["tokens_per_second_excl_compile"] > saved["tokens_per_second_incl_compile"]
  assert saved["compile_seconds"] > 0
  assert "x real time without compilation" in result.stdout
