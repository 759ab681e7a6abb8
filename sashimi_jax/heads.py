"""Output heads: the per-token distribution over `2**bits` quantised levels.

Two heads read the model's last-layer outputs `(..., D)`:

* `"categorical"`: `D = 2**bits` logits, a softmax over the levels (cross-entropy).
* `"dml"`: a discretized mixture of logistics (Salimans et al. 2017, PixelCNN++) with
  `n_mixtures` components, `D = 3 * n_mixtures` laid out as
  `[mixture logits (M) | means (M) | log-scales (M)]`. Level `k` is the bin of `[-1, 1]`
  centred at `-1 + 2k / (K - 1)` with half-width `1 / (K - 1)` (`K = 2**bits`); the two edge
  bins extend to -inf and +inf, so the `K` bin probabilities sum to exactly one.

All log-probabilities are computed in log space without the `1e-5` switches of PixelCNN++:
`log(sigmoid(a) - sigmoid(b)) = log_sigmoid(a) + log_sigmoid(-b) + log(-expm1(b - a))` for
`a > b` is finite for any finite `a, b` with `a - b` not vanishingly small, which the clamp on
the log-scales guarantees.

Sampling (`sample_tokens`) draws from the distribution after temperature and nucleus (top-p)
truncation, and reports the log-probability and entropy of THAT distribution.
"""

from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

HEADS = ("categorical", "dml")

# PixelCNN++ floor for log-scales; the ceiling keeps bin widths in scale units above ~1e-5,
# where float32 `expm1` is still accurate.
_LOG_SCALE_MIN = -7.0
_LOG_SCALE_MAX = 7.0
# Floor after temperature scaling (temperature < 1 sharpens); exp(30) * 1e4 is far below the
# float32 overflow, so every logistic argument stays finite.
_TEMPERED_LOG_SCALE_MIN = -30.0
# Means far outside [-1, 1] all put their mass on an edge bin; bounding them keeps
# `(x - mean) / scale` finite for arbitrarily large raw outputs.
_MEAN_BOUND = 1e4

Number = Union[float, int]


def _check_head(head: str, bits: int, n_mixtures: int) -> None:
  if head not in HEADS:
    raise ValueError(f"Unknown output head {head!r}; expected one of {HEADS}.")
  # Any positive width works here; the range a run may use is the quantizer's (quantize.MIN_BITS..).
  if not isinstance(bits, int) or bits < 1:
    raise ValueError(f"bits must be a positive int, got {bits!r}.")
  if head == "dml" and (not isinstance(n_mixtures, int) or n_mixtures < 1):
    raise ValueError(f"The 'dml' head needs n_mixtures >= 1, got {n_mixtures!r}.")


def output_dim(head: str, bits: int, n_mixtures: int = 0) -> int:
  """Number of model outputs per token that `head` reads.

  Args:
    head: "categorical" or "dml".
    bits: quantisation bits; `2**bits` levels.
    n_mixtures: mixture components of the "dml" head (ignored for "categorical").

  Returns:
    `2**bits` for "categorical", `3 * n_mixtures` for "dml".
  """
  _check_head(head, bits, n_mixtures)
  return 2**bits if head == "categorical" else 3 * n_mixtures


def _check_outputs(outputs: jax.Array, head: str, bits: int, n_mixtures: int) -> None:
  expected = output_dim(head, bits, n_mixtures)
  if outputs.shape[-1] != expected:
    raise ValueError(
        f"Head {head!r} with bits={bits}, n_mixtures={n_mixtures} expects outputs with last "
        f"dimension {expected}, got shape {outputs.shape}.")


def _split_dml(outputs: jax.Array):
  """(..., 3M) -> log mixture weights, means, log-scales, each (..., M) float32."""
  outputs = outputs.astype(jnp.float32)
  logits, means, log_scales = jnp.split(outputs, 3, axis=-1)
  log_weights = jax.nn.log_softmax(logits, axis=-1)
  means = jnp.clip(means, -_MEAN_BOUND, _MEAN_BOUND)
  log_scales = jnp.clip(log_scales, _LOG_SCALE_MIN, _LOG_SCALE_MAX)
  return log_weights, means, log_scales


def _dml_component_log_probs(levels: jax.Array, means: jax.Array, log_scales: jax.Array,
                             bits: int) -> jax.Array:
  """Log-probability of integer `levels` under each logistic component.

  Args:
    levels: int (...,) in [0, 2**bits), broadcastable against the leading dims of `means`.
    means, log_scales: (..., M).
    bits: quantisation bits.

  Returns:
    (..., M) float32 log P(level | component).
  """
  num_levels = 2**bits
  half_width = 1.0 / (num_levels - 1)
  centre = -1.0 + 2.0 * levels.astype(jnp.float32)[..., None] * half_width
  inv_scale = jnp.exp(-log_scales)
  upper = inv_scale * (centre - means + half_width)   # a: standardised upper bin edge
  lower = inv_scale * (centre - means - half_width)   # b: standardised lower bin edge
  log_cdf_upper = jax.nn.log_sigmoid(upper)           # leftmost bin: P(X < upper edge)
  log_sf_lower = jax.nn.log_sigmoid(-lower)           # rightmost bin: P(X > lower edge)
  # a - b computed directly (not as a difference of large numbers), always > 0.
  width = 2.0 * half_width * inv_scale
  log_interior = log_cdf_upper + log_sf_lower + jnp.log(-jnp.expm1(-width))
  levels = levels[..., None]
  return jnp.where(levels == 0, log_cdf_upper,
                   jnp.where(levels == num_levels - 1, log_sf_lower, log_interior))


def log_probs(outputs: jax.Array, *, head: str, bits: int, n_mixtures: int = 0) -> jax.Array:
  """Normalised log-probabilities of every level.

  Args:
    outputs: (..., D) model outputs, `D = output_dim(head, bits, n_mixtures)`.
    head, bits, n_mixtures: see `output_dim`.

  Returns:
    (..., 2**bits) float32 log-probabilities (logsumexp over the last axis is 0).
  """
  _check_outputs(outputs, head, bits, n_mixtures)
  if head == "categorical":
    return jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
  log_weights, means, log_scales = _split_dml(outputs)
  levels = jnp.arange(2**bits, dtype=jnp.int32)
  # (..., K, M): every level against every component.
  comp = _dml_component_log_probs(levels, means[..., None, :], log_scales[..., None, :], bits)
  return jax.nn.logsumexp(comp + log_weights[..., None, :], axis=-1)


def token_nll(outputs: jax.Array, targets: jax.Array, *, head: str, bits: int,
              n_mixtures: int = 0) -> jax.Array:
  """Negative log-likelihood of the target levels.

  Args:
    outputs: (..., D) model outputs (any float dtype; computed in float32).
    targets: (...) int levels in [0, 2**bits).
    head, bits, n_mixtures: see `output_dim`.

  Returns:
    (...) float32 NLL in nats.
  """
  _check_outputs(outputs, head, bits, n_mixtures)
  if outputs.shape[:-1] != targets.shape:
    raise ValueError(
        f"outputs {outputs.shape} and targets {targets.shape} disagree on the leading dims.")
  targets = targets.astype(jnp.int32)
  if head == "categorical":
    logp = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  log_weights, means, log_scales = _split_dml(outputs)
  comp = _dml_component_log_probs(targets, means, log_scales, bits)
  return -jax.nn.logsumexp(comp + log_weights, axis=-1)


def _tempered_log_probs(outputs: jax.Array, head: str, bits: int, n_mixtures: int,
                        temperature) -> jax.Array:
  """(B, D) -> (B, K) log-probabilities of the temperature-adjusted distribution."""
  if head == "categorical":
    return jax.nn.log_softmax(_tempered_logits(outputs, temperature), axis=-1)
  # DML: sharpen (or flatten) both the mixture choice and every component's scale, as in
  # WaveNet/PixelCNN++ style sampling, then take the exact bin distribution of the result.
  log_weights, means, log_scales = _split_dml(outputs)
  if not (isinstance(temperature, (int, float)) and temperature == 1.0):
    log_weights = jax.nn.log_softmax(log_weights / temperature, axis=-1)
    log_scales = jnp.maximum(log_scales + jnp.log(temperature), _TEMPERED_LOG_SCALE_MIN)
  levels = jnp.arange(2**bits, dtype=jnp.int32)
  comp = _dml_component_log_probs(levels, means[..., None, :], log_scales[..., None, :], bits)
  return jax.nn.logsumexp(comp + log_weights[..., None, :], axis=-1)


def _tempered_logits(outputs: jax.Array, temperature) -> jax.Array:
  """Categorical logits / temperature in float32 (a Python 1.0 skips the division)."""
  logits = outputs.astype(jnp.float32)
  if not (isinstance(temperature, (int, float)) and temperature == 1.0):
    logits = logits / temperature
  return logits


def _tempered_scores(outputs: jax.Array, head: str, bits: int, n_mixtures: int,
                     temperature) -> jax.Array:
  """(B, D) -> (B, K) log-probabilities up to a constant per row (categorical: the logits)."""
  if head == "categorical":
    return _tempered_logits(outputs, temperature)
  return _tempered_log_probs(outputs, head, bits, n_mixtures, temperature)


def _sample_full(uniform: jax.Array, scores: jax.Array):
  """Inverse-CDF draw from softmax(scores) (B, K), with the token's log-probability and the
  distribution's entropy; one exp pass (no log_softmax), sums as matmuls (`_row_sums`)."""
  shifted = scores - jnp.max(scores, axis=-1, keepdims=True)
  weights = jnp.exp(shifted)  # the largest is 1: the total is >= 1
  cdf = _cumsum_levels(weights)
  total = cdf[:, -1]
  tokens = _inverse_cdf(uniform, weights, cdf)
  log_total = jnp.log(total)
  token_logp = jnp.take_along_axis(shifted, tokens[:, None], axis=-1)[:, 0] - log_total
  # H = -sum p log p with p = w / total, log p = shifted - log total.
  entropy = log_total - _row_sums(jnp.where(weights > 0, weights * shifted, 0.0)) / total
  return tokens, token_logp, entropy


def _validate_sampling_args(temperature, top_p) -> None:
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}.")
  if isinstance(top_p, (int, float)) and not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p!r}.")


def sample_tokens(key: jax.Array, outputs: jax.Array, *, head: str, bits: int,
                  n_mixtures: int = 0, temperature: Number = 1.0, top_p: Number = 1.0):
  """Samples one level per row, with temperature and nucleus (top-p) truncation.

  The sampled distribution is: levels' probabilities at `temperature` (categorical: logits /
  temperature; DML: mixture logits / temperature and scales * temperature), then restricted to
  the smallest set of most probable levels whose mass reaches `top_p` (the most probable level
  is always kept, so a tiny `top_p` is greedy argmax decoding), renormalised.

  Args:
    key: PRNG key.
    outputs: (B, D) model outputs for one time step.
    head, bits, n_mixtures: see `output_dim`.
    temperature: > 0; Python numbers are checked and 1.0 skips the scaling.
    top_p: in (0, 1]; a Python 1.0 skips the sort entirely.

  Returns:
    tokens (B,) int32, log_prob (B,) float32 and entropy (B,) float32 (nats), both of the
    distribution actually sampled from.
  """
  uniform = jax.random.uniform(key, outputs.shape[:1], jnp.float32)
  return sample_tokens_from_uniform(uniform, outputs, head=head, bits=bits,
                                    n_mixtures=n_mixtures, temperature=temperature, top_p=top_p)


def _cumsum_levels(probs: jax.Array) -> jax.Array:
  """Inclusive cumulative sum over the last axis (a power of two), as two small matmuls.

  XLA:CPU lowers `jnp.cumsum` to a reduce-window costing O(K^2) scalar adds per row (~0.1 ms
  per step at batch 16, K = 256); blocks of sqrt(K) summed by triangular matmuls cost
  ~2 K sqrt(K) vectorised flops. The triangles are NumPy constants: built with jnp inside the
  sampler's token loop, XLA:CPU rebuilt them at every token.
  """
  num_levels = probs.shape[-1]
  block = 2**((num_levels.bit_length() - 1) // 2)
  num_blocks = num_levels // block
  lead = probs.shape[:-1]
  within = jnp.matmul(probs.reshape(*lead, num_blocks, block),
                      np.triu(np.ones((block, block), np.float32)).astype(probs.dtype),
                      precision=jax.lax.Precision.HIGHEST)
  offsets = jnp.matmul(within[..., -1],
                       np.triu(np.ones((num_blocks, num_blocks), np.float32), 1).astype(probs.dtype),
                       precision=jax.lax.Precision.HIGHEST)
  return (within + offsets[..., None]).reshape(*lead, num_levels)


def _row_sums(x: jax.Array) -> jax.Array:
  """(B, K) -> (B,) sums over the last axis, as a matmul with a ones vector.

  XLA:CPU turns a row reduction of this size into a reduce-window and a reduce (two ops per
  sum); the matmul is one op and ~2x faster at the sampler's shapes (docs/PERFORMANCE.md).
  """
  ones = np.ones((x.shape[-1], 1), np.float32)
  return jnp.matmul(x.astype(jnp.float32), ones, precision=jax.lax.Precision.HIGHEST)[..., 0]


def _inverse_cdf(uniform: jax.Array, probs: jax.Array, cdf: jax.Array | None = None) -> jax.Array:
  """Index i with cdf[i-1] < u * total <= cdf[i]: uniform (B,) in [0, 1), probs (B, K) >= 0.

  Levels of probability zero are never chosen (u is flipped into (0, 1]), and a single level
  with all the mass is chosen for every u. `cdf`: `_cumsum_levels(probs)` if already computed.
  """
  if cdf is None:
    cdf = _cumsum_levels(probs)
  threshold = (1.0 - uniform)[:, None] * cdf[:, -1:]
  index = _row_sums(cdf < threshold).astype(jnp.int32)  # counts <= K: exact in float32
  return jnp.minimum(index, probs.shape[-1] - 1)


def sample_tokens_from_uniform(uniform: jax.Array, outputs: jax.Array, *, head: str, bits: int,
                               n_mixtures: int = 0, temperature: Number = 1.0,
                               top_p: Number = 1.0):
  """`sample_tokens` driven by one uniform number per row (inverse-CDF sampling).

  One random number per token instead of one per level (as Gumbel-max needs) keeps random-bit
  generation off the sampler's sequential path: the sampler draws all of them up front.

  Args:
    uniform: (B,) float32 in [0, 1).
    outputs, head, bits, n_mixtures, temperature, top_p: as in `sample_tokens`.

  Returns:
    tokens (B,) int32, log_prob (B,) float32, entropy (B,) float32, as in `sample_tokens`.
  """
  _check_outputs(outputs, head, bits, n_mixtures)
  _validate_sampling_args(temperature, top_p)
  if isinstance(top_p, (int, float)) and top_p >= 1.0:
    return _sample_full(uniform, _tempered_scores(outputs, head, bits, n_mixtures, temperature))

  logp = _tempered_log_probs(outputs, head, bits, n_mixtures, temperature)
  # Nucleus: work in descending-probability order (stable, so ties break like argmax).
  order = jnp.argsort(-logp, axis=-1, stable=True)
  sorted_logp = jnp.take_along_axis(logp, order, axis=-1)
  sorted_p = jnp.exp(sorted_logp)
  mass_before = _cumsum_levels(sorted_p) - sorted_p
  keep = (mass_before < top_p).at[:, 0].set(True)
  kept_logp = jnp.where(keep, sorted_logp, -jnp.inf)
  kept_logp = kept_logp - jax.nn.logsumexp(kept_logp, axis=-1, keepdims=True)
  kept_p = jnp.where(keep, jnp.exp(kept_logp), 0.0)
  index = _inverse_cdf(uniform, kept_p)
  tokens = jnp.take_along_axis(order, index[:, None], axis=-1)[:, 0].astype(jnp.int32)
  token_logp = jnp.take_along_axis(kept_logp, index[:, None], axis=-1)[:, 0]
  entropy = -jnp.sum(jnp.where(keep, kept_p * kept_logp, 0.0), axis=-1)
  return tokens, token_logp, entropy
