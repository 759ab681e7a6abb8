"""Tests for the compiled sampler (sashimi_jax.sampling) on tiny random models."""

import pathlib
import re
import runpy

import chex
import jax
import numpy as np
import pytest
from scipy import special
from flax import nnx

from sashimi_jax import heads
from sashimi_jax import sampling
from sashimi_jax.data import pipeline
from sashimi_jax.state import build_model

_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def tiny_config(*, head="categorical", stereo=False, strategy="temporal", sample_len=32):
  """The mono/stereo preset shrunk to a model that compiles in seconds (one pooling level, so
  the recurrent step still runs its `lax.cond` between levels)."""
  name = "stereo_temporal.py" if stereo else "mono.py"
  config = runpy.run_path(str(_CONFIGS / name))["get_config"]("tiny")
  config.dataset.sample_len = sample_len
  config.dataset.interleaving_strategy = strategy
  config.model.update(d_model=8, n_layers=1, pool=[2], expand=2, ff=2, d_state=4,
                      layer="s4d", init="diag-lin", output_head=head, n_mixtures=3)
  return config


@pytest.fixture(scope="module")
def mono_model():
  return build_model(tiny_config(), nnx.Rngs(0))


@jax.jit
def _conv(model, tokens):
  """Convolution-mode outputs (B, T, D), compiled once per shape."""
  return model(tokens)


@pytest.fixture(scope="module")
def samples(mono_model):
  """Two 32-token samples from scratch (shared: every distinct call shape costs a compile)."""
  return sampling.generate(mono_model, jax.random.key(7), batch_size=2, new_tokens=32)


def test_fixed_seed_same_samples_across_runs_batches_and_chunking(mono_model, samples):
  key = jax.random.key(7)
  chex.assert_shape(samples["tokens"], (2, 32))
  again = sampling.generate(mono_model, key, batch_size=2, new_tokens=32)
  np.testing.assert_array_equal(samples["tokens"], again["tokens"])
  # Sample i depends on (key, i) only: generate it alone, at its global index.
  alone = sampling.generate(mono_model, key, batch_size=1, new_tokens=32, first_sample_index=1)
  np.testing.assert_array_equal(alone["tokens"][0], samples["tokens"][1])
  np.testing.assert_allclose(alone["log_likelihood"][0], samples["log_likelihood"][1],
                             rtol=1e-5)
  # Different samples differ, and a different key gives different samples.
  assert not np.array_equal(samples["tokens"][0], samples["tokens"][1])
  other = sampling.generate(mono_model, jax.random.key(8), batch_size=2, new_tokens=32)
  assert not np.array_equal(other["tokens"], samples["tokens"])
  # The chunked (progress) path runs the same step on a donated state: identical tokens.
  seen = []
  chunked = sampling.generate(mono_model, key, batch_size=2, new_tokens=32, chunk_tokens=16,
                              progress=seen.append)
  np.testing.assert_array_equal(chunked["tokens"], samples["tokens"])
  np.testing.assert_allclose(chunked["log_likelihood"], samples["log_likelihood"], rtol=1e-5)
  assert seen == [16, 32]


def test_teacher_forced_recurrent_outputs_equal_convolution(mono_model):
  targets = np.random.default_rng(1).integers(0, 256, (2, 32)).astype(np.int32)
  conv = _conv(mono_model, pipeline.shift_right(targets, 8))
  recurrent = sampling.teacher_forced_outputs(mono_model, targets)
  chex.assert_shape(recurrent, (2, 32, 256))
  assert sampling.relative_difference(conv, recurrent) < 1e-5


def test_log_likelihood_and_entropy_match_convolution_mode(mono_model, samples):
  tokens = np.asarray(samples["tokens"])
  logits = np.asarray(_conv(mono_model, pipeline.shift_right(tokens, 8)), np.float64)
  logp = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  expected = np.take_along_axis(logp, tokens[..., None], -1)[..., 0].sum(-1)
  np.testing.assert_allclose(samples["log_likelihood"], expected, rtol=1e-4)
  entropy = -(np.exp(logp) * logp).sum(-1).mean(-1)
  out = samples
  np.testing.assert_allclose(out["mean_entropy"], entropy, rtol=1e-4)


def test_prompt_continuation_and_tiny_top_p_is_the_argmax_path(mono_model):
  prompt = np.random.default_rng(2).integers(0, 256, (2, 11)).astype(np.int32)
  out = sampling.generate(mono_model, jax.random.key(0), batch_size=2, new_tokens=21,
                          prompt=prompt, top_p=1e-6)
  tokens = np.asarray(out["tokens"])
  chex.assert_shape(tokens, (2, 32))
  np.testing.assert_array_equal(tokens[:, :11], prompt)
  # Greedy: every new token is the argmax of the convolution-mode output at its position, the
  # first one computed from the zero token and the whole prompt.
  conv = _conv(mono_model, pipeline.shift_right(tokens, 8))
  np.testing.assert_array_equal(tokens[:, 11:], np.argmax(conv[:, 11:], -1))
  np.testing.assert_allclose(out["log_likelihood"], 0.0, atol=1e-5)
  # Greedy decoding does not depend on the key.
  other = sampling.generate(mono_model, jax.random.key(5), batch_size=2, new_tokens=21,
                            prompt=prompt, top_p=1e-6)
  np.testing.assert_array_equal(other["tokens"], tokens)


def test_dml_model_samples_from_its_mixture():
  model = build_model(tiny_config(head="dml"), nnx.Rngs(1))
  assert model.output_dim == 9
  out = sampling.generate(model, jax.random.key(0), batch_size=2, new_tokens=32, top_p=0.9)
  tokens = np.asarray(out["tokens"])
  assert tokens.min() >= 0 and tokens.max() < 256
  # The reported likelihood is that of the (nucleus-truncated) distribution sampled from:
  # at least the untruncated likelihood of the same tokens, and at most 0.
  outputs = _conv(model, pipeline.shift_right(tokens, 8))
  nll = jax.jit(lambda o, t: heads.token_nll(o, t, head="dml", bits=8, n_mixtures=3))(
      outputs, tokens)
  loglik = np.asarray(out["log_likelihood"])
  assert np.all(loglik >= -np.asarray(nll).sum(-1) - 1e-3) and np.all(loglik <= 0)
  assert np.all(np.asarray(out["mean_entropy"]) > 0)


def test_head_spec_inference_and_bad_arguments(mono_model):
  spec = sampling.head_spec(mono_model)
  assert (spec.head, spec.bits, spec.zero_token) == ("categorical", 8, 128)
  with pytest.raises(ValueError, match="needs 30 outputs"):
    sampling.head_spec(mono_model, head="dml", n_mixtures=10)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="prompt must be int tokens"):
    sampling.generate(mono_model, key, batch_size=2, new_tokens=4, prompt=np.zeros((3, 4),
                                                                                   np.int32))
  with pytest.raises(ValueError, match=r"prompt tokens must lie in \[0, 256\)"):
    sampling.generate(mono_model, key, batch_size=1, new_tokens=4,
                      prompt=np.full((1, 4), 300, np.int32))
  with pytest.raises(ValueError, match="temperature"):
    sampling.generate(mono_model, key, batch_size=1, new_tokens=4, temperature=0.0)


def test_given_recurrence_constants_are_used_as_computed(mono_model, monkeypatch):
  key = jax.random.key(2)
  want = sampling.generate(mono_model, key, batch_size=2, new_tokens=6)["tokens"]
  constants = sampling.recurrence_constants(mono_model)

  def refuse(*args, **kwargs):
    raise AssertionError("generate recomputed the recurrence constants it was given")

  monkeypatch.setattr(sampling, "_setup_recurrence", refuse)
  for chunk_tokens in (None, 4):
    got = sampling.generate(mono_model, key, batch_size=2, new_tokens=6, recurrence=constants,
                            chunk_tokens=chunk_tokens)["tokens"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="inspects XLA:CPU's compiled program")
@pytest.mark.parametrize("layer", ["s4d", "s4"])
def test_compiled_sampler_updates_the_ssm_states_in_place(layer):
  """The token loop copies no S4D or DPLR state: both of a layer's arrays are updated in place.

  The sheared step (`models/ssm/sheared.py`) writes each array from the other's current value;
  the former complex product read both old arrays, which cost one state copy per layer and step
  (two with default copy insertion, and a state stacked on the layer axis was copied whole).
  Only the initial states (copies of a broadcast zero into the loop's buffers) may be copied.
  """
  config = tiny_config()
  if layer == "s4":
    config.model.update(layer="s4", init="legs", disc="bilinear")
  model = build_model(config, nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  settings = sampling._Settings(  # pylint: disable=protected-access
      spec=sampling.head_spec(model), batch_size=3, temperature=1.0, top_p=1.0, unroll=1)
  rec = sampling.recurrence_constants(model)
  text = sampling._generate_all.lower(  # pylint: disable=protected-access
      params, rec, jax.random.key(0), jax.numpy.int32(0), None, None, graphdef=graphdef,
      settings=settings, new_tokens=8).compile().as_text()
  # State arrays of the two levels, (N/2, B, H) = (2, 3, 8 or 16), stacked or not (batch 3
  # tells them from DownPool's (B, pool, H) = (3, 2, 8) ring buffer).
  state_copy = re.compile(r"= f32\[(\d+,)?2,3,(8|16)\]\S* copy\(%")
  copies = [line.strip()[:100] for line in text.splitlines() if state_copy.search(line)]
  assert copies, "no state-shaped copy at all: the pattern no longer matches the states"
  in_loop = [c for c in copies if "copy(%wrapped_broadcast" not in c]
  assert not in_loop, in_loop
