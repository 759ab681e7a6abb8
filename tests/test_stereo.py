"""Tests for sashimi_jax/data/stereo.py: exact orders, round trips, jit, errors."""

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax.data import stereo

_SETTINGS = hypothesis.settings(max_examples=300, deadline=None, derandomize=True)


def _labels(num_frames):
  """Sample labels: (L, 2) array whose entries name themselves, e.g. 'L7', 'R7'."""
  return np.array([[f"L{t}", f"R{t}"] for t in range(num_frames)], dtype=object)


def test_temporal_order():
  order = list(stereo.interleave(_labels(4), "temporal"))
  assert order == ["L0", "R0", "L1", "R1", "L2", "R2", "L3", "R3"]


def test_blocking_order():
  order = list(stereo.interleave(_labels(5), "blocking"))
  assert order == ["L0", "L1", "L2", "L3", "L4", "R0", "R1", "R2", "R3", "R4"]


def test_blocking_n_order_l1028_n500():
  order = list(stereo.interleave(_labels(1028), "blocking-500"))
  expected = ([f"L{t}" for t in range(0, 500)] + [f"R{t}" for t in range(0, 500)]
              + [f"L{t}" for t in range(500, 1000)] + [f"R{t}" for t in range(500, 1000)]
              + [f"L{t}" for t in range(1000, 1028)] + [f"R{t}" for t in range(1000, 1028)])
  assert order == expected


def test_blocking_n_larger_than_clip_equals_blocking():
  np.testing.assert_array_equal(stereo.permutation(7, "blocking-100"),
                                stereo.permutation(7, "blocking"))
  np.testing.assert_array_equal(stereo.permutation(7, "blocking-1"),
                                stereo.permutation(7, "temporal"))


def test_channel_of_position():
  np.testing.assert_array_equal(stereo.channel_of_position(3, "temporal"), [0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(stereo.channel_of_position(3, "blocking"), [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(stereo.channel_of_position(5, "blocking-2"),
                                [0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
  assert stereo.channel_of_position(5, "blocking-2").dtype == np.int32


@pytest.mark.parametrize("bad", ["blocking-0", "blocking-x", "Temporal", "blocking-01", "blocking-",
                                 "blocking--3", "blocking-2.5", "", " temporal", "mono"])
def test_parse_strategy_rejects(bad):
  with pytest.raises(ValueError, match="valid forms: 'temporal', 'blocking', or 'blocking-N'"):
    stereo.parse_strategy(bad)


def test_parse_strategy_rejects_non_string():
  with pytest.raises(ValueError, match="must be a string"):
    stereo.parse_strategy(3)


def test_parse_strategy_accepts():
  assert stereo.parse_strategy("temporal") == stereo.Strategy("temporal", 1)
  assert stereo.parse_strategy("blocking") == stereo.Strategy("blocking", None)
  assert stereo.parse_strategy("blocking-500").block_frames == 500
  parsed = stereo.parse_strategy("blocking-3")
  assert stereo.parse_strategy(parsed) is parsed


def _strategy_names(max_block):
  return st.one_of(st.just("temporal"), st.just("blocking"),
                   st.integers(1, max_block).map(lambda n: f"blocking-{n}"))


@_SETTINGS
@hypothesis.given(num_frames=st.integers(1, 300), strategy=_strategy_names(400),
                  batch=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_round_trip_numpy(num_frames, strategy, batch, seed):
  rng = np.random.default_rng(seed)
  shape = (num_frames, 2) if batch == 0 else (batch, num_frames, 2)
  x = rng.integers(0, 1 << 16, size=shape).astype(np.int32)
  y = stereo.interleave(x, strategy)
  chex.assert_shape(y, shape[:-2] + (2 * num_frames,))
  np.testing.assert_array_equal(stereo.deinterleave(y, strategy), x)
  # The stream is a permutation of the samples and the channel map matches it.
  np.testing.assert_array_equal(np.sort(y, axis=-1), np.sort(x.reshape(shape[:-2] + (-1,)), axis=-1))
  channel = stereo.channel_of_position(num_frames, strategy)
  labels = np.stack([np.zeros(num_frames), np.ones(num_frames)], axis=-1)
  np.testing.assert_array_equal(stereo.interleave(labels, strategy), channel)
  perm = stereo.permutation(num_frames, strategy)
  inv = stereo.inverse_permutation(num_frames, strategy)
  np.testing.assert_array_equal(perm[inv], np.arange(2 * num_frames))


@_SETTINGS
@hypothesis.given(num_frames=st.integers(1, 64), block=st.integers(1, 80))
def test_blocking_n_structure(num_frames, block):
  """Within each block of N frames: left samples in time order, then right samples."""
  perm = stereo.permutation(num_frames, f"blocking-{block}")
  frames, channels = perm // 2, perm % 2
  pos = 0
  for start in range(0, num_frames, block):
    n = min(block, num_frames - start)
    np.testing.assert_array_equal(frames[pos:pos + n], np.arange(start, start + n))
    np.testing.assert_array_equal(channels[pos:pos + n], 0)
    np.testing.assert_array_equal(frames[pos + n:pos + 2 * n], np.arange(start, start + n))
    np.testing.assert_array_equal(channels[pos + n:pos + 2 * n], 1)
    pos += 2 * n
  assert pos == 2 * num_frames


@pytest.mark.parametrize("strategy", ["temporal", "blocking", "blocking-3", "blocking-64"])
def test_jax_under_jit_matches_numpy(strategy):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 10, 2)).astype(np.float32)
  y_np = stereo.interleave(x, strategy)
  y_jax = jax.jit(lambda a: stereo.interleave(a, strategy))(jnp.asarray(x))
  assert isinstance(y_jax, jax.Array)
  np.testing.assert_array_equal(np.asarray(y_jax), y_np)
  back = jax.jit(lambda a: stereo.deinterleave(a, strategy))(y_jax)
  np.testing.assert_array_equal(np.asarray(back), x)
  logits = rng.standard_normal((3, 20, 4)).astype(np.float32)
  out_np = stereo.reshape_stereo_output(logits, strategy)
  out_jax = jax.jit(lambda a: stereo.reshape_stereo_output(a, strategy))(jnp.asarray(logits))
  chex.assert_shape(out_jax, (3, 10, 2, 4))
  np.testing.assert_array_equal(np.asarray(out_jax), out_np)


def test_reshape_stereo_output_places_each_token():
  strategy = "blocking-2"
  x = np.arange(10).reshape(5, 2)                       # x[t, c] = 2t + c
  stream = stereo.interleave(x[None], strategy)          # (1, 10)
  logits = np.stack([stream, -stream], axis=-1)          # (1, 10, 2): features follow tokens
  out = stereo.reshape_stereo_output(logits, strategy)
  np.testing.assert_array_equal(out[0, :, :, 0], x)
  np.testing.assert_array_equal(out[0, :, :, 1], -x)


def test_shape_errors():
  with pytest.raises(ValueError, match=r"\(\.\.\., L, 2\)"):
    stereo.interleave(np.zeros((4, 3)), "temporal")
  with pytest.raises(ValueError, match="even last axis"):
    stereo.deinterleave(np.zeros((5,)), "temporal")
  with pytest.raises(ValueError, match=r"\(B, 2L, D\)"):
    stereo.reshape_stereo_output(np.zeros((2, 6)), "temporal")
  with pytest.raises(ValueError, match="num_frames must be a positive integer"):
    stereo.permutation(0, "temporal")
