"""Tests for sashimi_jax.heads: likelihoods, normalisation, sampling with temperature/top-p."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from sashimi_jax import heads


# Jitted once per static configuration: eager mode would compile every primitive separately.
_token_nll = jax.jit(heads.token_nll, static_argnames=("head", "bits", "n_mixtures"))
_log_probs = jax.jit(heads.log_probs, static_argnames=("head", "bits", "n_mixtures"))
_sample_tokens = jax.jit(heads.sample_tokens, static_argnames=(
    "head", "bits", "n_mixtures", "temperature", "top_p"))


_dml_nll_and_grad = jax.jit(jax.value_and_grad(
    lambda o, t: heads.token_nll(o, t, head="dml", bits=8, n_mixtures=3).sum()))


def _random_outputs(seed, shape, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def test_output_dim():
  assert heads.output_dim("categorical", 8, 0) == 256
  assert heads.output_dim("dml", 8, 10) == 30
  with pytest.raises(ValueError, match="Unknown output head"):
    heads.output_dim("softmax", 8, 0)
  with pytest.raises(ValueError, match="n_mixtures"):
    heads.output_dim("dml", 8, 0)


def test_categorical_nll_equals_log_softmax():
  outputs = _random_outputs(0, (3, 5, 16), scale=3.0)
  targets = jnp.asarray(np.random.default_rng(1).integers(0, 16, size=(3, 5)), jnp.int32)
  nll = _token_nll(outputs, targets, head="categorical", bits=4)
  logits = np.asarray(outputs, np.float64)
  expected = -(logits - special.logsumexp(logits, axis=-1, keepdims=True))
  expected = np.take_along_axis(expected, np.asarray(targets)[..., None], -1)[..., 0]
  chex.assert_shape(nll, (3, 5))
  np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-5)


def _dml_bin_probs_float64(outputs, bits):
  """Independent float64 reference: mixture of logistic CDF differences over the bins."""
  outputs = np.asarray(outputs, np.float64)
  logits, means, log_scales = np.split(outputs, 3, axis=-1)
  weights = special.softmax(logits, axis=-1)
  log_scales = np.clip(log_scales, -7.0, 7.0)
  k = 2**bits
  edges = -1.0 + (2.0 * np.arange(k + 1) - 1.0) / (k - 1)  # k + 1 bin edges
  edges[0], edges[-1] = -np.inf, np.inf
  cdf = special.expit((edges[:, None] - means[..., None, :]) / np.exp(log_scales[..., None, :]))
  per_component = np.diff(cdf, axis=-2)                     # (..., k, M)
  return np.sum(per_component * weights[..., None, :], axis=-1)


def test_dml_matches_float64_reference_and_sums_to_one():
  bits, mixtures = 5, 4
  outputs = _random_outputs(2, (6, 3 * mixtures))
  logp = _log_probs(outputs, head="dml", bits=bits, n_mixtures=mixtures)
  chex.assert_shape(logp, (6, 32))
  np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.exp(logp), _dml_bin_probs_float64(outputs, bits), atol=2e-6)
  targets = np.arange(6, dtype=np.int32) * 6  # includes bin 0 and bin 30
  nll = _token_nll(outputs, targets, head="dml", bits=bits, n_mixtures=mixtures)
  np.testing.assert_allclose(nll, -np.take_along_axis(np.asarray(logp), targets[:, None], -1)[:, 0],
                             rtol=1e-5)


@pytest.mark.parametrize("scale", [1e2, 1e6, 1e30])
def test_dml_finite_for_extreme_inputs(scale):
  bits, mixtures = 8, 3
  outputs = _random_outputs(3, (8, 3 * mixtures), scale=scale)
  targets = np.asarray([0, 1, 127, 128, 200, 254, 255, 64], np.int32)
  nll, grad = _dml_nll_and_grad(outputs, targets)
  assert np.isfinite(nll)
  assert np.all(np.isfinite(grad))
  logp = _log_probs(outputs, head="dml", bits=bits, n_mixtures=mixtures)
  # Probabilities over all bins still sum to one (up to float32 rounding).
  np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, rtol=1e-4)


def test_dml_sharp_component_puts_mass_on_its_bin():
  bits, k = 4, 16
  centre = -1.0 + 2.0 * 9 / (k - 1)
  outputs = jnp.asarray([[0.0, centre, -7.0]], jnp.float32)  # one component, tiny scale
  logp = _log_probs(outputs, head="dml", bits=bits, n_mixtures=1)
  assert int(np.argmax(logp[0])) == 9
  assert float(np.exp(logp[0, 9])) > 0.99


def _expected_sampling_distribution(logp, temperature, top_p):
  p = special.softmax(np.asarray(logp, np.float64) / temperature, axis=-1)
  order = np.argsort(-p, kind="stable")
  before = np.cumsum(p[order]) - p[order]
  keep = np.zeros_like(p, dtype=bool)
  keep[order[before < top_p]] = True
  keep[order[0]] = True
  q = np.where(keep, p, 0.0)
  return q / q.sum()


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_categorical_sampling_frequencies(temperature, top_p):
  logits = np.asarray([1.0, 0.2, -0.5, 2.0, 0.0, -2.0, 0.7, 1.5], np.float32)
  num_draws = 40000
  outputs = np.broadcast_to(logits, (num_draws, 8))
  tokens, token_logp, entropy = _sample_tokens(
      jax.random.key(0), outputs, head="categorical", bits=3, temperature=temperature,
      top_p=top_p)
  expected = _expected_sampling_distribution(logits, temperature, top_p)
  freq = np.bincount(np.asarray(tokens), minlength=8) / num_draws
  # 5 sigma of a binomial proportion.
  np.testing.assert_allclose(freq, expected, atol=5 * np.sqrt(0.25 / num_draws))
  np.testing.assert_allclose(np.exp(token_logp), expected[np.asarray(tokens)], rtol=1e-5)
  nz = expected[expected > 0]
  np.testing.assert_allclose(entropy, -np.sum(nz * np.log(nz)), rtol=1e-5)


def test_dml_sampling_frequencies_match_bin_probabilities():
  bits, mixtures, num_draws = 3, 2, 40000
  row = np.asarray([0.3, -0.2, -0.4, 0.5, -1.0, -0.5], np.float32)
  outputs = np.broadcast_to(row, (num_draws, 6))
  tokens, token_logp, entropy = _sample_tokens(
      jax.random.key(1), outputs, head="dml", bits=bits, n_mixtures=mixtures)
  expected = _dml_bin_probs_float64(row[None], bits)[0]
  freq = np.bincount(np.asarray(tokens), minlength=8) / num_draws
  np.testing.assert_allclose(freq, expected, atol=5 * np.sqrt(0.25 / num_draws))
  np.testing.assert_allclose(np.exp(token_logp), expected[np.asarray(tokens)], rtol=1e-4)
  np.testing.assert_allclose(entropy, -np.sum(expected * np.log(expected)), rtol=1e-4)


def test_dml_low_temperature_sharpens():
  # Components well inside [-1, 1] (small scales): tempering concentrates the mass. (With scales
  # wider than [-1, 1], shrinking them moves mass from the edge bins inwards instead.)
  bits, mixtures = 6, 2
  rng = np.random.default_rng(5)
  outputs = jnp.asarray(np.concatenate(
      [rng.normal(size=(4, 2)), rng.uniform(-0.5, 0.5, (4, 2)), np.full((4, 2), -3.0)], -1),
                        jnp.float32)
  _, _, ent_1 = _sample_tokens(jax.random.key(0), outputs, head="dml", bits=bits,
                                    n_mixtures=mixtures, temperature=1.0)
  _, _, ent_low = _sample_tokens(jax.random.key(0), outputs, head="dml", bits=bits,
                                      n_mixtures=mixtures, temperature=0.2)
  assert np.all(np.asarray(ent_low) < np.asarray(ent_1))
  assert np.all(np.isfinite(ent_low))


# Categorical temperature keeps the order of the levels; DML temperature does not, so DML is
# compared at temperature 1.
@pytest.mark.parametrize("head,bits,mixtures,temperature",
                         [("categorical", 8, 0, 1.3), ("dml", 8, 5, 1.0)])
def test_tiny_top_p_is_argmax(head, bits, mixtures, temperature):
  dim = heads.output_dim(head, bits, mixtures)
  outputs = _random_outputs(4, (16, dim), scale=2.0)
  for seed in range(3):
    tokens, token_logp, entropy = _sample_tokens(
        jax.random.key(seed), outputs, head=head, bits=bits, n_mixtures=mixtures,
        top_p=1e-6, temperature=temperature)
    argmax = np.argmax(_log_probs(outputs, head=head, bits=bits, n_mixtures=mixtures), -1)
    np.testing.assert_array_equal(tokens, argmax)
    np.testing.assert_allclose(token_logp, 0.0, atol=1e-6)
    np.testing.assert_allclose(entropy, 0.0, atol=1e-6)


def test_bad_arguments_give_clear_errors():
  outputs = jnp.zeros((2, 16))
  with pytest.raises(ValueError, match="last dimension 256"):
    heads.token_nll(outputs, jnp.zeros((2,), jnp.int32), head="categorical", bits=8)
  with pytest.raises(ValueError, match="leading dims"):
    heads.token_nll(outputs, jnp.zeros((3,), jnp.int32), head="categorical", bits=4)
  with pytest.raises(ValueError, match="temperature"):
    heads.sample_tokens(jax.random.key(0), outputs, head="categorical", bits=4, temperature=0.0)
  with pytest.raises(ValueError, match="top_p"):
    heads.sample_tokens(jax.random.key(0), outputs, head="categorical", bits=4, top_p=0.0)


@pytest.mark.parametrize("num_levels", [256, 512])
def test_blocked_cumsum_matches_numpy(num_levels):
  probs = np.random.default_rng(0).uniform(size=(3, 2, num_levels)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(heads._cumsum_levels)(probs), np.cumsum(probs, -1),
                             rtol=1e-5)


def test_inverse_cdf_never_picks_zero_probability_levels():
  probs = jnp.asarray([[0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]] * 2, jnp.float32)
  uniform = jnp.asarray([0.0, 0.0, 0.9999999, 0.9999999], jnp.float32)
  np.testing.assert_array_equal(jax.jit(heads._inverse_cdf)(uniform, probs), [3, 2, 1, 2])


def test_sampling_skips_minus_infinity_logits_and_survives_large_ones():
  # A level with logit -inf is never drawn and adds nothing (not NaN) to the entropy; logits
  # far above exp's range are shifted by their maximum first.
  logits = np.asarray([[0.0, -np.inf, 0.0, np.log(2.0)], [1000.0, 1000.0, -np.inf, 999.0]],
                      np.float32)
  outputs = np.repeat(logits, 2000, axis=0)
  tokens, token_logp, entropy = _sample_tokens(jax.random.key(3), outputs, head="categorical",
                                               bits=2)
  tokens = np.asarray(tokens).reshape(2, -1)
  assert not np.isin(tokens[0], [1]).any() and not np.isin(tokens[1], [2]).any()
  for row, p in enumerate([np.asarray([0.25, 0.0, 0.25, 0.5]),
                           np.asarray([1.0, 1.0, 0.0, np.exp(-1.0)]) / (2.0 + np.exp(-1.0))]):
    nz = p[p > 0]
    np.testing.assert_allclose(np.asarray(entropy).reshape(2, -1)[row], -np.sum(nz * np.log(nz)),
                               rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.asarray(token_logp).reshape(2, -1)[row]),
                               p[tokens[row]], rtol=1e-5)


@pytest.mark.parametrize("num_levels", [256, 512])
def test_inverse_cdf_matches_a_float64_search(num_levels):
  rng = np.random.default_rng(num_levels)
  probs = rng.exponential(size=(512, num_levels)).astype(np.float32)
  probs[rng.uniform(size=probs.shape) < 0.3] = 0.0  # zero-probability levels, whole blocks too
  probs[:8, : num_levels // 2] = 0.0
  uniform = rng.uniform(size=512).astype(np.float32)
  index = np.asarray(jax.jit(heads._inverse_cdf)(uniform, probs))
  cdf = np.cumsum(probs.astype(np.float64), axis=-1)
  threshold = (1.0 - uniform.astype(np.float64)) * cdf[:, -1]
  expected = np.array([np.searchsorted(c, t, side="left") for c, t in zip(cdf, threshold)])
  assert np.all(probs[np.arange(512), index] > 0)
  # Equal except where float32 rounding puts the threshold on a level boundary.
  assert np.mean(index == expected) > 0.99
