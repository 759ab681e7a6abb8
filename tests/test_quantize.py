"""Tests for sashimi_jax/data/quantize.py: reference definitions, inverses, numpy and jax."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sashimi_jax.data import quantize


def _reference_mu_law_codes(x, bits):
  """The reference's formulas written out (minmax step omitted: inputs are already in [-1, 1])."""
  mu = 2.0**bits - 1
  companded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
  unit = (companded + 1) / 2
  return np.floor(unit * (2**bits - 0.01) + 0.005).astype(np.int64)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_known_codes(bits):
  levels = 2**bits
  for method in quantize.METHODS:
    codes = quantize.encode(np.array([-1.0, 0.0, 1.0]), bits, method)
    np.testing.assert_array_equal(codes, [0, levels // 2, levels - 1])
    assert codes.dtype == np.int32
  assert quantize.zero_token(bits) == levels // 2
  assert quantize.vocab_size(bits) == levels
  np.testing.assert_allclose(quantize.decode(np.array([0, levels // 2]), bits, "linear"), [-1.0, 0.0])
  np.testing.assert_allclose(quantize.decode(np.array([0, levels // 2]), bits, "mu-law"), [-1.0, 0.0])


def test_mu_law_matches_reference_formula():
  x = np.random.default_rng(0).uniform(-1, 1, 10_000)
  for bits in (8, 16):
    np.testing.assert_array_equal(quantize.encode(x, bits, "mu-law"), _reference_mu_law_codes(x, bits))


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("method", ["mu-law", "linear"])
def test_inverse_within_one_step(bits, method):
  rng = np.random.default_rng(bits)
  x = np.concatenate([rng.uniform(-1, 1, 50_000), np.linspace(-1, 1, 4097)])
  codes = quantize.encode(x, bits, method)
  assert codes.min() >= 0 and codes.max() < 2**bits
  x_hat = quantize.decode(codes, bits, method).astype(np.float64)
  assert np.all(np.abs(x_hat) <= 1.0)
  # One step 2/Q, widened by the reference's epsilon: the encoder's last bin reaches 0.01/(Q-0.01)
  # past the decoded lower edge of the next bin.
  step = 2.0 / 2**bits + 0.01 / (2**bits - 0.01)
  if method == "linear":
    err = np.abs(x_hat - x)
  else:  # one step in the companded domain
    mu = 2.0**bits - 1
    compand = lambda v: np.sign(v) * np.log1p(mu * np.abs(v)) / np.log1p(mu)
    err = np.abs(compand(x_hat) - compand(x))
  assert err.max() <= step * (1 + 1e-9), err.max()
  assert err.max() > 0.9 * step  # the bound is tight, not vacuous
  # Codes round trip to themselves or one below (the reference decodes to the lower bin edge).
  all_codes = np.arange(2**bits)
  again = quantize.encode(quantize.decode(all_codes, bits, method), bits, method)
  diff = all_codes - again
  assert set(np.unique(diff)) <= {0, 1}
  assert np.all(diff[: 2**bits // 2 + 1] == 0)
  assert np.all(np.diff(again) >= 0)


@pytest.mark.parametrize("method", ["mu-law", "linear"])
def test_jax_matches_numpy_under_jit(method):
  x = np.random.default_rng(1).uniform(-1, 1, (4, 1000)).astype(np.float32)
  for bits in (8, 16):
    enc = jax.jit(lambda a: quantize.encode(a, bits, method))(jnp.asarray(x))
    assert isinstance(enc, jax.Array) and enc.dtype == jnp.int32
    ref = quantize.encode(x, bits, method)
    # float32 vs float64 may move a value sitting on a bin edge by one code.
    assert np.abs(np.asarray(enc) - ref).max() <= 1
    assert np.mean(np.asarray(enc) == ref) > 0.99
    dec = jax.jit(lambda q: quantize.decode(q, bits, method))(enc)
    np.testing.assert_allclose(np.asarray(dec), quantize.decode(np.asarray(enc), bits, method),
                               atol=1e-5)


def test_clips_out_of_range():
  np.testing.assert_array_equal(quantize.encode(np.array([-3.0, 2.0]), 8, "linear"), [0, 255])


def test_normalize_joint_over_channels():
  x = np.stack([np.linspace(-0.5, 0.5, 11), np.linspace(-0.05, 0.05, 11)], axis=-1)
  y = quantize.normalize(x)
  chex.assert_shape(y, (11, 2))
  assert y.dtype == np.float32
  np.testing.assert_allclose(y[:, 0], np.linspace(-1, 1, 11), atol=1e-6)
  np.testing.assert_allclose(y[:, 1], np.linspace(-0.1, 0.1, 11), atol=1e-6)  # ratio kept
  assert y.min() == -1.0 and y.max() == 1.0
  y_jax = jax.jit(quantize.normalize)(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(y_jax), y, atol=1e-6)


def test_normalize_constant_clip_is_silence():
  np.testing.assert_array_equal(quantize.normalize(np.full((5, 2), 0.3)), np.zeros((5, 2)))
  np.testing.assert_array_equal(np.asarray(quantize.normalize(jnp.full((5,), -0.2))), np.zeros(5))


@pytest.mark.parametrize("bits", [7, 17, 8.5, True])
def test_bad_bits(bits):
  with pytest.raises(ValueError, match=r"bits must be an integer in \[8, 16\]"):
    quantize.encode(np.zeros(3), bits, "linear")


def test_bad_method():
  with pytest.raises(ValueError, match="Unknown quantization method 'mulaw'; valid: mu-law, linear"):
    quantize.decode(np.zeros(3, np.int32), 8, "mulaw")


@pytest.mark.parametrize("method", ["mu-law", "linear"])
@pytest.mark.parametrize("bits", [8, 16])
def test_every_float_input_encodes_in_range(method, bits):
  tiny = np.finfo(np.float32).tiny
  specials = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 3.4e38, 1e300, -1e300, tiny, -tiny,
                       tiny / 8, -tiny / 8, 5e-324, 0.0, -0.0, 1.0, -1.0, 1 + 1e-7, -1 - 1e-7])
  rng = np.random.default_rng(0)
  random = rng.standard_normal(2000) * 10.0 ** rng.integers(-40, 40, 2000)
  for x in (specials, random, specials.astype(np.float32), random.astype(np.float16)):
    for codes in (quantize.encode(x, bits, method),
                  np.asarray(quantize.encode(jnp.asarray(x, jnp.float32), bits, method))):
      assert codes.dtype == np.int32
      assert codes.min() >= 0 and codes.max() < 2**bits, (x.dtype, codes.min(), codes.max())
  codes = quantize.encode(np.array([np.nan, np.inf, -np.inf]), bits, method)
  np.testing.assert_array_equal(codes, quantize.encode(np.array([0.0, 1.0, -1.0]), bits, method))


def test_normalize_ignores_non_finite_samples():
  clip = np.array([[0.5, np.nan], [np.inf, -0.5], [-np.inf, 0.25]])
  out = quantize.normalize(clip)
  assert np.all(np.isfinite(out)) and out.min() >= -1 and out.max() <= 1
  np.testing.assert_allclose(quantize.normalize(jnp.asarray(clip, jnp.float32)), out, atol=1e-6)
