"""channel_bits scores each channel of stereo audio under stereo and two-mono models."""

import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sashimi_jax import channel_bits
from sashimi_jax import heads
from sashimi_jax.data import pipeline
from sashimi_jax.data import stereo
from sashimi_jax.state import build_model


def _config(is_stereo, strategy="blocking-4"):
  config = runpy.run_path("configs/stereo_temporal.py")["get_config"]("tiny")
  config.dataset.update(is_stereo=is_stereo, interleaving_strategy=strategy, sample_len=16)
  config.model.update(d_model=8, n_layers=1, pool=(2,), d_state=4)
  return config


def _bits(model, y):
  x = pipeline.shift_right(y, 8)
  return np.asarray(heads.token_nll(model(jnp.asarray(x)), jnp.asarray(y), head="categorical",
                                    bits=8)) / np.log(2.0)


def test_stereo_and_two_mono_channel_bits():
  clips = np.asarray(jax.random.uniform(jax.random.key(0), (3, 16, 2), minval=-1, maxval=1))
  config = _config(True)
  model = build_model(config, nnx.Rngs(0))
  got = channel_bits.channel_bits(model, config, clips, batch_size=2)
  y = np.stack([pipeline.encode_clip(c, config.dataset) for c in clips])
  bits = _bits(model, y)
  right = stereo.channel_of_position(16, "blocking-4") == 1
  np.testing.assert_allclose([got["left"], got["right"]],
                             [bits[:, ~right].mean(), bits[:, right].mean()], rtol=1e-5)
  mono = _config(False)
  model = build_model(mono, nnx.Rngs(0))
  got = channel_bits.channel_bits(model, mono, clips, batch_size=4)
  for k, name in enumerate(("left", "right")):
    y = np.stack([pipeline.encode_clip(c[:, k:k + 1], mono.dataset) for c in clips])
    np.testing.assert_allclose(got[name], _bits(model, y).mean(), rtol=1e-5)


def test_teacher_forced_coupling_data_and_ranges():
  rng = np.random.default_rng(0)
  left = rng.uniform(-0.8, 0.8, (3, 16))
  clips = np.stack([left, left], axis=-1).astype(np.float32)  # identical channels
  config = _config(True, "temporal")
  model = build_model(config, nnx.Rngs(0))
  got = channel_bits.teacher_forced_coupling(model, config, clips, batch_size=2)
  assert got["data"] == pytest.approx(1.0, abs=1e-6)
  for name in ("mean_prediction", "one_step_samples", "true_left_sampled_right"):
    assert -1.0 <= got[name] <= 1.0
  # An untrained model predicts a broad distribution: its variance is of the signal's order.
  assert got["right_noise_fraction"] > 0.1
  with pytest.raises(ValueError, match="stereo clips"):
    channel_bits.teacher_forced_coupling(model, config, clips[..., :1])


def test_teacher_forced_coupling_of_a_mono_model_pairs_each_clips_channels():
  rng = np.random.default_rng(2)
  clips = rng.uniform(-0.8, 0.8, (3, 16, 2)).astype(np.float32)
  clips[1] = clips[1, :, ::-1]
  mono = _config(False)
  model = build_model(mono, nnx.Rngs(0))
  got = channel_bits.teacher_forced_coupling(model, mono, clips, batch_size=4)
  from sashimi_jax import stereo_metrics  # pylint: disable=g-import-not-at-top
  # Each channel encoded as its own mono stream, paired with the other channel of its clip.
  decoded = [np.concatenate([pipeline.decode_tokens(pipeline.encode_clip(c[:, k:k + 1],
                                                                         mono.dataset),
                                                    mono.dataset) for k in (0, 1)], axis=-1)
             for c in clips]
  assert got["data"] == pytest.approx(np.mean([stereo_metrics.correlation(d) for d in decoded]),
                                      abs=1e-6)


def test_coupling_figures_of_a_certain_and_of_a_blind_model():
  rng = np.random.default_rng(1)
  left = rng.standard_normal((2, 4000))
  true = np.stack([left, 0.5 * left + 0.1 * rng.standard_normal((2, 4000))], axis=-1)
  # Certain and right: every prediction is the true value with zero variance.
  got = channel_bits.coupling_figures(true, true, np.zeros_like(true), true)
  for name in ("mean_prediction", "one_step_samples", "true_left_sampled_right"):
    assert got[name] == pytest.approx(got["data"], abs=1e-12)
  assert got["data"] > 0.9
  assert got["right_noise_fraction"] == 0.0
  assert got["residual_correlation"] == 0.0  # nothing left unexplained
  # Blind to the other channel: draws independent of the true left channel.
  draw = rng.standard_normal(true.shape)
  got = channel_bits.coupling_figures(true, np.zeros_like(true), np.ones_like(true), draw)
  assert abs(got["one_step_samples"]) < 0.1
  assert abs(got["true_left_sampled_right"]) < 0.1
  # Predicting 0 leaves the whole same-time coupling in the errors.
  assert got["residual_correlation"] == pytest.approx(got["data"], abs=1e-12)
  assert got["right_noise_fraction"] == pytest.approx(1 / np.var(true[..., 1], axis=1).mean(),
                                                      rel=0.05)
