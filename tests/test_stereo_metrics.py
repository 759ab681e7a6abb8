"""Stereo metrics on constructed signals give the values their definitions predict."""

import numpy as np
import pytest

from sashimi_jax import stereo_metrics

_RATE = 16000


def _music_like(frames=16000, seed=0):
  """A sum of a few sinusoids (one per octave band) plus a little noise, never silent."""
  rng = np.random.default_rng(seed)
  t = np.arange(frames) / _RATE
  signal = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
               for f in (90, 180, 350, 700, 1400, 2900, 5800))
  return signal + 0.01 * rng.standard_normal(frames)


def test_identical_channels():
  s = _music_like()
  m = stereo_metrics.clip_metrics(np.stack([s, s], -1), _RATE)
  assert m["correlation"] == pytest.approx(1.0, abs=1e-9)
  assert all(v == pytest.approx(1.0, abs=1e-9) for v in m["band_correlation"].values())
  assert m["level_difference_db_mean"] == pytest.approx(0.0, abs=1e-9)
  assert m["level_difference_db_spread"] == pytest.approx(0.0, abs=1e-9)
  assert m["side_to_mid_db"] == -stereo_metrics.DB_LIMIT
  assert m["mono_collapse"] is True


def test_independent_noise():
  rng = np.random.default_rng(1)
  x = 0.3 * rng.standard_normal((32000, 2))
  m = stereo_metrics.clip_metrics(x, _RATE)
  # Correlation of independent noise: ~N(0, 1/n); |r| < 4 / sqrt(n) almost surely.
  assert abs(m["correlation"]) < 4 / np.sqrt(32000)
  assert all(abs(v) < 0.1 for v in m["band_correlation"].values())
  assert abs(m["level_difference_db_mean"]) < 0.1
  # Per 320-frame window, 10 log10 of a ratio of two chi2(320)/320: sd ~ 4.34 * sqrt(2/320) * sqrt2.
  assert m["level_difference_db_spread"] == pytest.approx(4.343 * np.sqrt(4 / 320), rel=0.15)
  assert abs(m["side_to_mid_db"]) < 0.1
  assert m["mono_collapse"] is False


def test_six_db_pan():
  s = _music_like()
  m = stereo_metrics.clip_metrics(np.stack([s, 0.5 * s], -1), _RATE)
  assert m["correlation"] == pytest.approx(1.0, abs=1e-9)
  assert m["level_difference_db_mean"] == pytest.approx(20 * np.log10(2), abs=1e-9)
  assert m["level_difference_db_spread"] == pytest.approx(0.0, abs=1e-9)
  # S = s / 4, M = 3 s / 4: side/mid = 1/9.
  assert m["side_to_mid_db"] == pytest.approx(10 * np.log10(1 / 9), abs=1e-9)
  assert m["mono_collapse"] is False


def test_polarity_flip():
  s = _music_like()
  m = stereo_metrics.clip_metrics(np.stack([s, -s], -1), _RATE)
  assert m["correlation"] == pytest.approx(-1.0, abs=1e-9)
  assert all(v == pytest.approx(-1.0, abs=1e-9) for v in m["band_correlation"].values())
  assert m["level_difference_db_mean"] == pytest.approx(0.0, abs=1e-9)
  assert m["side_to_mid_db"] == stereo_metrics.DB_LIMIT
  assert m["mono_collapse"] is False


def test_band_correlation_separates_bands():
  # Left and right share only the 700 Hz component: its octave [500, 1000) correlates fully,
  # the 2900 Hz one (independent phases per channel: in quadrature) does not.
  t = np.arange(16000) / _RATE
  common = np.sin(2 * np.pi * 700 * t)
  left = common + np.sin(2 * np.pi * 2900 * t)
  right = common + np.cos(2 * np.pi * 2900 * t)
  bands = stereo_metrics.band_correlation(np.stack([left, right], -1), _RATE)
  assert list(bands) == ["62.5", "125", "250", "500", "1000", "2000", "4000"]
  assert bands["500"] == pytest.approx(1.0, abs=1e-6)
  assert abs(bands["2000"]) < 1e-6


def test_mean_metrics_and_scalars():
  s = _music_like(3200)
  records = [stereo_metrics.clip_metrics(np.stack([s, s], -1), _RATE),
             stereo_metrics.clip_metrics(np.stack([s, -s], -1), _RATE)]
  mean = stereo_metrics.mean_metrics(records)
  assert mean["clips"] == 2 and mean["correlation"] == pytest.approx(0.0, abs=1e-9)
  assert mean["mono_collapse_fraction"] == 0.5
  scalars = stereo_metrics.scalar_summary(mean, "stereo")
  assert scalars["stereo/correlation"] == mean["correlation"]
  assert "stereo/band_correlation_500hz" in scalars and "stereo/clips" not in scalars


def test_bad_shape_is_a_clear_error():
  with pytest.raises(ValueError, match=r"need audio \(frames >= 2, 2\)"):
    stereo_metrics.clip_metrics(np.zeros((100, 1)), _RATE)


def test_linear_headroom_bits():
  rng = np.random.default_rng(3)
  frames = 8000
  # Independent white noise: neither the past nor L[t] predicts R[t].
  noise = rng.standard_normal((frames, 2))
  got = stereo_metrics.linear_headroom_bits(noise, past_frames=4)
  assert abs(got["same_time_bits"]) < 0.01
  assert abs(got["right_vs_left_bits"]) < 0.02
  # R[t] = L[t] / 2 + small noise: L[t] explains R[t] up to the noise (variance ratio 0.25/1e-4).
  left = rng.standard_normal(frames)
  pair = np.stack([left, 0.5 * left + 0.01 * rng.standard_normal(frames)], axis=-1)
  got = stereo_metrics.linear_headroom_bits(pair, past_frames=4)
  expected = 0.5 * np.log2(0.25 / 1e-4)
  assert got["same_time_bits"] == pytest.approx(expected, abs=0.05)
  assert got["right_vs_left_bits"] == pytest.approx(0.5 * np.log2(1.0 / 1e-4), abs=0.05)
  with pytest.raises(ValueError, match="frames"):
    stereo_metrics.linear_headroom_bits(pair[:40], past_frames=4)
