"""channel_bits scores each channel of stereo audio under stereo and two-mono models."""

import runpy

import jax
import jax.numpy as jnp
import numpy as np
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
