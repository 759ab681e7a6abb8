"""The compiled autoregressive sampler: params -> recurrence (once) -> `lax.scan(step)` -> tokens.

The token stream always starts with the zero token, exactly as in training (`x[0] =
zero_token(bits)`, `x = y` shifted right by one). With a prompt `y[:P]`, the model consumes
`[zero, y0, .., y(P-2)]` in convolution mode (`model.prefill`) and the scan's first step feeds
`y(P-1)`, so the first new token is sampled from the output after the last prompt token; without
a prompt the first step feeds the zero token. Each scan step is one `model.step` plus one
inverse-CDF draw; the carry holds the recurrent state, the token to feed next, one PRNG key per
sample and running log-likelihood/entropy sums.

Sample `i` of a call draws its randomness from `fold_in(key, first_sample_index + i)` (or
`fold_in(key, sample_indices[i])`) only (new token `t` uses `uniform(fold_in(that key, t))`, drawn
in bulk before the scan), so a sample never depends on the batch size it was generated in, nor on
the chunking, nor on how the batch is split over devices (`mesh`: rows sharded over the "data"
axis, parameters replicated, no cross-row communication).

`generate` computes the recurrence constants (`recurrence_constants`: once per job if the
caller passes them) and compiles ONE function (graphdef static, params and constants arguments) for the rest.
`generate(..., chunk_tokens=n, progress=fn)` instead compiles a prologue and a scan over `n`
steps whose carry (the state) is donated between calls, so a progress bar can update; both paths
share the same step and give identical tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sashimi_jax import heads
from sashimi_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """What the model's outputs mean: head name, quantisation bits, DML mixtures."""

  head: str
  bits: int
  n_mixtures: int = 0

  @property
  def zero_token(self) -> int:
    """The token that opens every stream (the quantised 0.0), `2**(bits - 1)`."""
    return 2**(self.bits - 1)


def head_spec(model, *, head: Optional[str] = None, bits: Optional[int] = None,
              n_mixtures: Optional[int] = None) -> HeadSpec:
  """The model's output head, inferred from `model.vocab_size` / `model.output_dim` if not given.

  `2**bits` is never a multiple of 3, so `output_dim == vocab_size` means categorical and
  `output_dim == 3 M` means a DML head with M mixtures.

  Raises:
    ValueError: if the given or inferred head disagrees with the model's sizes.
  """
  vocab_size = int(model.vocab_size)
  model_dim = int(model.output_dim)
  if bits is None:
    bits = vocab_size.bit_length() - 1
  if 2**bits != vocab_size:
    raise ValueError(f"bits={bits} gives {2**bits} tokens but the model embeds {vocab_size}.")
  if head is None:
    head = "categorical" if model_dim == vocab_size else "dml"
  if n_mixtures is None:
    n_mixtures = model_dim // 3 if head == "dml" else 0
  if heads.output_dim(head, bits, n_mixtures) != model_dim:
    raise ValueError(
        f"Head {head!r} (bits={bits}, n_mixtures={n_mixtures}) needs "
        f"{heads.output_dim(head, bits, n_mixtures)} outputs; the model has {model_dim}.")
  return HeadSpec(head=head, bits=int(bits), n_mixtures=int(n_mixtures))


@dataclasses.dataclass(frozen=True)
class _Settings:
  """Static (compile-time) sampler settings."""

  spec: HeadSpec
  batch_size: int
  temperature: float
  top_p: float
  unroll: int
  mesh: Any = None  # a jax.sharding.Mesh: rows split over its "data" axis; None = no constraint.


def state_batch_axes(model, batch_size: int):
  """The batch axis of every leaf of `model.init_state(batch_size)` (-1: it has none).

  Read off the shapes at two batch sizes, so a layer may lay its state out as it likes (the
  S4D state is (modes, batch, channels)).
  """
  one = jax.eval_shape(lambda: model.init_state(batch_size))
  two = jax.eval_shape(lambda: model.init_state(batch_size + 1))

  def axis(a, b):
    changed = [i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n]
    return changed[0] if changed else -1

  return jax.tree_util.tree_map(axis, one, two)


def _constrain_rows(settings: _Settings, tree, state_axes=None):
  """Pins the batch axis of every leaf to the "data" axis (leaves without one replicated).

  The batch axis is the leading one when its size is the batch size, except in the recurrent
  state (`tree[0]` when `state_axes`, from `state_batch_axes`, is given).
  """
  if settings.mesh is None:
    return tree
  from sashimi_jax import sharding  # pylint: disable=g-import-not-at-top

  def pin(leaf, axis):
    spec = (sharding.replicated(settings.mesh) if axis < 0
            else sharding.axis_sharding(settings.mesh, axis))
    return jax.lax.with_sharding_constraint(leaf, spec)

  def leading(leaf):
    rows = getattr(leaf, "ndim", 0) >= 1 and leaf.shape[0] == settings.batch_size
    return pin(leaf, 0 if rows else -1)

  if state_axes is None:
    return jax.tree_util.tree_map(leading, tree)
  state = jax.tree_util.tree_map(pin, tree[0], state_axes)
  return (state,) + tuple(jax.tree_util.tree_map(leading, part) for part in tree[1:])


def _sample_rows(settings: _Settings, uniform: jax.Array, outputs: jax.Array):
  """One token per row by inverse CDF: uniform (B,), outputs (B, D) -> 3 x (B,)."""
  spec = settings.spec
  return heads.sample_tokens_from_uniform(
      uniform, outputs, head=spec.head, bits=spec.bits, n_mixtures=spec.n_mixtures,
      temperature=settings.temperature, top_p=settings.top_p)


def _uniforms(row_keys: jax.Array, first_token, num_steps: int) -> jax.Array:
  """The random numbers of new tokens [first_token, first_token + num_steps) of every row.

  Token t of row i uses `uniform(fold_in(row_keys[i], t))`, whatever the chunking, so the
  chunked and one-shot paths agree. Drawn in bulk, off the scan's sequential path.

  Returns:
    (num_steps, B) float32 in [0, 1).
  """
  steps = first_token + jnp.arange(num_steps, dtype=jnp.int32)

  def row(key):
    return jax.vmap(lambda t: jax.random.uniform(jax.random.fold_in(key, t), ()))(steps)

  return jax.vmap(row, out_axes=1)(row_keys)


def _prologue(model, settings: _Settings, rec, key, sample_index, prompt):
  """The carry before the first new token (`rec`: the model's recurrence constants).

  The carry's token is the next one to feed: the zero token without a prompt; the last prompt
  token with one, after `model.prefill` has consumed `[zero, y0, .., y(P-2)]`. Every new token
  is then sampled inside the scan, so the step is compiled once.

  Args:
    key: a PRNG key, or its raw uint32 `key_data` (what a multi-host caller can replicate).
    sample_index: int32 () index of row 0 (rows are consecutive), or (B,) each row's index.

  Returns:
    carry = (state, token (B,), row keys (B,), log_likelihood (B,), entropy_sum (B,),
    new tokens so far ()).
  """
  batch = settings.batch_size
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)
  indices = sample_index if sample_index.ndim else (
      sample_index + jnp.arange(batch, dtype=jnp.int32))
  row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
      _constrain_rows(settings, indices.astype(jnp.int32)))
  zero = jnp.full((batch, 1), settings.spec.zero_token, jnp.int32)
  if prompt is None:
    state, token = model.init_state(batch), zero[:, 0]
  else:
    prompt = _constrain_rows(settings, prompt)
    _, state = model.prefill(rec, jnp.concatenate([zero, prompt[:, :-1]], axis=1))
    token = prompt[:, -1]
  zeros = jnp.zeros((batch,), jnp.float32)
  return _constrain_rows(
      settings, (state, token, row_keys, zeros, zeros, jnp.zeros((), jnp.int32)),
      state_batch_axes(model, batch))


def _scan_steps(model, settings: _Settings, rec, carry, num_steps: int, forced=None):
  """Feeds the carried token and samples the next one, `num_steps` times.

  `forced` (B, num_steps) int32 or None: where >= 0, that token is taken instead of a sampled one
  (a prompt sample the stream order places after generated ones); it adds nothing to the
  log-likelihood or entropy sums.

  Returns:
    (carry, tokens (B, num_steps) int32): the tokens of these steps.
  """
  row_keys, done = carry[2], carry[5]
  uniforms = _uniforms(row_keys, done, num_steps)
  if forced is None:
    forced = jnp.full((settings.batch_size, num_steps), -1, jnp.int32)

  def body(carry, inputs):
    uniform, forced_token = inputs
    state, token, row_keys, loglik, entropy_sum, done = carry
    outputs, state = model.step(rec, state, token)
    token, logp, entropy = _sample_rows(settings, uniform, outputs)
    keep = forced_token >= 0
    token = jnp.where(keep, forced_token, token)
    logp = jnp.where(keep, 0.0, logp)
    entropy = jnp.where(keep, 0.0, entropy)
    return (state, token, row_keys, loglik + logp, entropy_sum + entropy, done + 1), token

  carry, tokens = jax.lax.scan(body, carry, (uniforms, forced.T), unroll=settings.unroll)
  carry = _constrain_rows(settings, carry, state_batch_axes(model, settings.batch_size))
  return carry, _constrain_rows(settings, tokens.T)


# XLA options of the compiled token loops. Region analysis in copy insertion lets XLA:CPU skip
# copies it would otherwise make: the tiny model's sampler at batch 8 compiles with 116 instead
# of 133 copies (S4D) and 251 instead of 274 (DPLR), all small. (It once halved the state
# copies; the sheared S4D and DPLR steps now make none in the token loop either way.) Only
# buffer assignment changes, never a result. 512-bit vectors for XLA:CPU's elementwise loops
# (the default is 256) made the batch step 3-5% faster on this AVX-512 machine (in-process A/B,
# alternating, batch 8 on one device and batch 16 on two; same tokens); a CPU without AVX-512
# uses its widest. Other backends ignore both options.
SCAN_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True,
                         "xla_cpu_prefer_vector_width": 512}


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _setup_recurrence(params, *, graphdef):
  return nnx.merge(graphdef, params).setup_recurrence()


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "new_tokens"),
                   compiler_options=SCAN_COMPILER_OPTIONS)
def _generate_all(params, rec, key, first_sample_index, prompt, forced, *, graphdef, settings,
                  new_tokens):
  """The whole generation as one compiled function."""
  model = nnx.merge(graphdef, params)
  carry = _prologue(model, settings, rec, key, first_sample_index, prompt)
  carry, tokens = _scan_steps(model, settings, rec, carry, new_tokens, forced)
  return tokens, carry[3], carry[4]


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _start(params, rec, key, first_sample_index, prompt, *, graphdef, settings):
  model = nnx.merge(graphdef, params)
  return _prologue(model, settings, rec, key, first_sample_index, prompt)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings", "num_steps"),
                   donate_argnames=("carry",), compiler_options=SCAN_COMPILER_OPTIONS)
def _advance(params, rec, carry, forced, *, graphdef, settings, num_steps):
  model = nnx.merge(graphdef, params)
  return _scan_steps(model, settings, rec, carry, num_steps, forced)


def _check_prompt(prompt, batch_size: int, vocabulary: int):
  if prompt is None:
    return None
  if prompt.ndim != 2 or prompt.shape[0] != batch_size or prompt.shape[1] < 1:
    raise ValueError(
        f"prompt must be int tokens (batch_size={batch_size}, P >= 1), got shape {prompt.shape}.")
  if not np.issubdtype(np.dtype(prompt.dtype), np.integer):
    raise ValueError(f"prompt must hold integer tokens, got dtype {prompt.dtype}.")
  if not isinstance(prompt, jax.core.Tracer):
    values = np.asarray(prompt)
    if values.min() < 0 or values.max() >= vocabulary:
      raise ValueError(
          f"prompt tokens must lie in [0, {vocabulary}), got [{values.min()}, {values.max()}].")
  return jnp.asarray(prompt, jnp.int32)


def _global(mesh, value: np.ndarray, *, rows: bool) -> jax.Array:
  """The same host value on every process -> a global array (rows split, or replicated)."""
  from sashimi_jax import sharding  # pylint: disable=g-import-not-at-top

  spec = sharding.batch_sharding(mesh) if rows else sharding.replicated(mesh)
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, spec, lambda index: value[index])


def _replicate(mesh, tree):
  """Every leaf replicated on the mesh (kept if it already is: a `recurrence` result)."""
  from sashimi_jax import sharding  # pylint: disable=g-import-not-at-top

  target = sharding.replicated(mesh)

  def place(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
      return x
    return _global(mesh, np.asarray(x), rows=False)

  return jax.tree_util.tree_map(place, tree)


def _place_on_mesh(mesh, params, key, index, prompt, batch_size: int):
  """Parameters and key replicated, row indices and prompt split over the "data" axis."""
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"batch_size={batch_size} must be a multiple of the mesh's {devices} "
                     "devices.")
  if index.ndim == 0:
    index = index + np.arange(batch_size, dtype=np.int32)
  key_data = np.asarray(jax.random.key_data(key))
  return (_replicate(mesh, params), _global(mesh, key_data, rows=False),
          _global(mesh, index, rows=True),
          None if prompt is None else _global(mesh, np.asarray(prompt), rows=True))


def recurrence_constants(model, mesh: Any = None):
  """The model's recurrence constants (`model.setup_recurrence()`), for `generate(recurrence=)`.

  `generate` computes them at every call otherwise: cheap for S4D, but a DPLR model's take a
  matrix power and a solve per channel (0.7 s at the SC09 size on a 2-core CPU), so a job of
  many batches computes them once. With `mesh`, they are replicated on it.
  """
  graphdef, params = nnx.split(model)
  if mesh is not None:
    params = _replicate(mesh, params)
  return _setup_recurrence(params, graphdef=graphdef)


def _check_forced(forced, batch_size: int, new_tokens: int, vocabulary: int):
  if forced is None:
    return None
  if forced.shape != (batch_size, new_tokens):
    raise ValueError(f"forced must have shape (batch_size, new_tokens) = ({batch_size}, "
                     f"{new_tokens}), got {forced.shape}.")
  if not isinstance(forced, jax.core.Tracer):
    values = np.asarray(forced)
    if values.min() < -1 or values.max() >= vocabulary:
      raise ValueError(f"forced tokens must lie in [-1, {vocabulary}), got "
                       f"[{values.min()}, {values.max()}].")
  return np.asarray(forced, np.int32)


def generate(model, key: jax.Array, *, batch_size: int, new_tokens: int,
             prompt: Optional[jax.Array] = None, temperature: float = 1.0, top_p: float = 1.0,
             unroll: int = 1, head: Optional[str] = None, bits: Optional[int] = None,
             n_mixtures: Optional[int] = None, first_sample_index: int = 0,
             sample_indices: Optional[np.ndarray] = None, mesh: Any = None,
             chunk_tokens: Optional[int] = None,
             progress: Optional[Callable[[int], Any]] = None,
             forced: Optional[jax.Array] = None, recurrence: Any = None) -> dict[str, jax.Array]:
  """Samples `new_tokens` new tokens per stream after an optional prompt.

  Args:
    model: a `SaShiMiLM` (anything with `setup_recurrence`, `init_state`, `step`, `prefill`,
      `vocab_size`, `output_dim`, holding only `nnx.Param` state).
    key: PRNG key; sample i uses `fold_in(key, first_sample_index + i)`.
    batch_size: B, streams generated together.
    new_tokens: new tokens per stream (>= 1).
    prompt: optional int (B, P) stream tokens the samples continue (the zero token that opens
      every stream is added here, not by the caller).
    temperature: > 0 (see `heads.sample_tokens`).
    top_p: nucleus mass in (0, 1]; tiny values give the argmax path.
    unroll: `lax.scan` unroll factor.
    head, bits, n_mixtures: the output head; inferred from the model when None.
    first_sample_index: global index of row 0 (lets a large run be split into batches whose
      samples do not depend on the batch size).
    sample_indices: optional int (B,) global index of every row (replaces first_sample_index).
    mesh: optional 1-D "data" mesh (`sharding.create_mesh`): rows are split over its devices
      (B must be a multiple of its size), parameters replicated; on several processes every
      process passes the same arguments and gets global arrays back (read the rows it holds
      through `addressable_shards`).
    chunk_tokens: if set, run the scan in segments of this many tokens, with the state donated
      between segments, calling `progress(tokens_done)` after each.
    progress: callback for `chunk_tokens` mode, given the number of new tokens done so far.
    forced: optional int (B, new_tokens): where >= 0, the token at that new position is given
      (e.g. a `blocking` prompt's right channel, which the stream places after the generated
      left channel) instead of sampled; -1 elsewhere. Forced tokens add nothing to the
      log-likelihood, and `mean_entropy` averages over the sampled tokens only.
    recurrence: `recurrence_constants(model, mesh)`, to reuse across calls (computed here if
      None, the same way, so the tokens are the same either way).

  Returns:
    dict(tokens=int32 (B, P + new_tokens) including the prompt, log_likelihood=float32 (B,) sum
    of the log-probabilities of the sampled tokens under the distribution they were drawn from,
    mean_entropy=float32 (B,) that distribution's entropy averaged over the new tokens (nats)).
  """
  if batch_size < 1 or new_tokens < 1:
    raise ValueError(f"need batch_size >= 1 and new_tokens >= 1, got {batch_size}, {new_tokens}.")
  if unroll < 1:
    raise ValueError(f"unroll must be >= 1, got {unroll}.")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
  spec = head_spec(model, head=head, bits=bits, n_mixtures=n_mixtures)
  prompt = _check_prompt(prompt, batch_size, 2**spec.bits)
  forced = _check_forced(forced, batch_size, new_tokens, 2**spec.bits)
  settings = _Settings(spec=spec, batch_size=int(batch_size), temperature=float(temperature),
                       top_p=float(top_p), unroll=int(unroll), mesh=mesh)
  graphdef, params = nnx.split(model)
  if sample_indices is None:
    index = np.asarray(first_sample_index, np.int32)
  else:
    index = np.asarray(sample_indices, np.int32)
    if index.shape != (batch_size,):
      raise ValueError(f"sample_indices must have shape ({batch_size},), got {index.shape}.")
  if mesh is None:
    index = jnp.asarray(index)
  else:
    params, key, index, prompt = _place_on_mesh(mesh, params, key, index, prompt, batch_size)
    if forced is not None:
      forced = _global(mesh, np.asarray(forced), rows=True)
  if recurrence is None:
    rec = _setup_recurrence(params, graphdef=graphdef)
  elif mesh is None:
    rec = recurrence
  else:
    rec = _replicate(mesh, recurrence)

  if chunk_tokens is None:
    tokens, loglik, entropy_sum = _generate_all(
        params, rec, key, index, prompt, forced, graphdef=graphdef, settings=settings,
        new_tokens=new_tokens)
  else:
    if chunk_tokens < 1:
      raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}.")
    carry = _start(params, rec, key, index, prompt, graphdef=graphdef, settings=settings)
    pieces = []
    done = 0
    while done < new_tokens:
      steps = min(chunk_tokens, new_tokens - done)
      carry, new = _advance(
          params, rec, carry, None if forced is None else forced[:, done:done + steps],
          graphdef=graphdef, settings=settings, num_steps=steps)
      pieces.append(new)
      done += steps
      if progress is not None:
        jax.block_until_ready(new)
        progress(done)
    tokens = jnp.concatenate(pieces, axis=1)
    loglik, entropy_sum = carry[3], carry[4]

  if prompt is not None:
    tokens = jnp.concatenate([prompt, tokens], axis=1)
  sampled = (jnp.float32(new_tokens) if forced is None
             else jnp.sum(forced < 0, axis=1).astype(jnp.float32))
  return {"tokens": tokens, "log_likelihood": loglik,
          "mean_entropy": entropy_sum / jnp.maximum(sampled, 1.0)}


@functools.partial(jax.jit, static_argnames=("graphdef", "zero_token"),
                   compiler_options=SCAN_COMPILER_OPTIONS)
def _teacher_forced(params, targets, *, graphdef, zero_token):
  model = nnx.merge(graphdef, params)
  rec = model.setup_recurrence()
  batch = targets.shape[0]
  inputs = jnp.concatenate(
      [jnp.full((batch, 1), zero_token, jnp.int32), targets[:, :-1].astype(jnp.int32)], 1)

  def body(state, token):
    outputs, state = model.step(rec, state, token)
    return state, outputs

  _, outputs = jax.lax.scan(body, model.init_state(batch), inputs.T)
  return jnp.swapaxes(outputs, 0, 1)


def teacher_forced_outputs(model, targets: jax.Array) -> jax.Array:
  """Recurrent-mode outputs on a given stream, fed one token at a time by the sampler's step.

  Args:
    model: a `SaShiMiLM`.
    targets: int (B, T) stream tokens `y`; the model is fed `x = [zero, y[:-1]]` as in training.

  Returns:
    (B, T, output_dim) float32, to compare with `model(x)` (convolution mode).
  """
  spec = head_spec(model)
  graphdef, params = nnx.split(model)
  return _teacher_forced(params, jnp.asarray(targets), graphdef=graphdef,
                         zero_token=spec.zero_token)


def relative_difference(reference: jax.Array, other: jax.Array) -> float:
  """||reference - other||_2 / ||reference||_2 (over every element), as a Python float."""
  reference = np.asarray(reference, np.float64)
  other = np.asarray(other, np.float64)
  return float(np.linalg.norm(reference - other) / max(np.linalg.norm(reference), 1e-30))


def verify_recurrence(model, config, *, max_tokens: Optional[int] = None) -> float:
  """Relative L2 difference between convolution-mode and recurrent outputs on one clip.

  The clip is the first validation clip (the training split if the run has no validation
  split), fed as in training (`x = [zero, y[:-1]]`).
  """
  try:
    batches = pipeline.create_eval_batches(config.dataset, split="valid", global_batch_size=1,
                                           max_batches=1)
  except ValueError:
    batches = pipeline.create_eval_batches(config.dataset, split="train", global_batch_size=1,
                                           max_batches=1)
  batch = batches[0]
  x, y = jnp.asarray(batch["x"]), jnp.asarray(batch["y"])
  if max_tokens is not None:
    x, y = x[:, :max_tokens], y[:, :max_tokens]
  conv = jax.jit(lambda m, t: m(t))(model, x)
  recurrent = teacher_forced_outputs(model, y)
  return relative_difference(conv, recurrent)
