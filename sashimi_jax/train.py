"""Training: `train_and_evaluate(config, workdir)`, the jitted train/eval steps and the host loop.

The model is driven functionally: `graphdef, params = nnx.split(model)` once, and a pure loss
function `nnx.merge`s them inside the step. The train state is a plain dict pytree:

  {"step": int32, "params": pure dict, "opt_state": optax state, "lr_scale": float32,
   "nonfinite_consecutive": int32, "nonfinite_total": int32,
   "plateau_best_bits": float32, "plateau_bad_evals": int32}

One `jax.jit` train step, state donated, with NamedShardings over a 1-D "data" mesh. The loss and
gradients are computed per device inside `jax.shard_map` (each device computes the SSM kernels
from the replicated parameters itself) and the gradients are averaged with an explicit
`lax.pmean` (one all-reduce), so per-device memory does not grow with the device count. A
non-finite loss, gradient or updated parameter skips the update inside the step and is counted;
`train.max_consecutive_nonfinite` in a row stop the run. Dropout keys are `fold_in(seed, step)`,
so a resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from sashimi_jax import audio_summaries
from sashimi_jax import checkpoint as checkpoint_lib
from sashimi_jax import config as config_lib
from sashimi_jax import heads
from sashimi_jax import metrics as metrics_lib
from sashimi_jax import optim
from sashimi_jax import run_report
from sashimi_jax import sharding as sharding_lib
from sashimi_jax import state as state_lib

LN2 = math.log(2.0)
TrainState = dict  # see the module docstring for its keys.


class NonFiniteError(FloatingPointError):
  """Too many consecutive non-finite losses/gradients."""


def channel_map(dataset_cfg) -> np.ndarray:
  """int32 (T,): 0 for left-channel stream positions, 1 for right (all 0 for mono)."""
  if not dataset_cfg.is_stereo:
    return np.zeros((config_lib.token_stream_length(dataset_cfg),), np.int32)
  from sashimi_jax.data import stereo  # pylint: disable=g-import-not-at-top
  return stereo.channel_of_position(int(dataset_cfg.sample_len),
                                    dataset_cfg.interleaving_strategy).astype(np.int32)


def token_bits(outputs: jax.Array, targets: jax.Array, config) -> jax.Array:
  """Per-token negative log-likelihood in bits: outputs (B, T, D), targets (B, T) -> (B, T)."""
  nll_nats = heads.token_nll(outputs, targets, **config_lib.head_args(config))
  return nll_nats / LN2


def _forward_bits(graphdef, params, batch_x, batch_y, config, dropout_key):
  """Merges the model and returns per-token bits (B, T)."""
  model = nnx.merge(graphdef, params)
  dropout = float(config.model.dropout)
  if dropout > 0:
    outputs = model(batch_x, deterministic=False, rngs=nnx.Rngs(dropout=dropout_key))
  else:
    outputs = model(batch_x, deterministic=True)
  return token_bits(outputs, batch_y, config)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_train_step(config, graphdef, tx: optax.GradientTransformation, mesh) -> Callable:
  """The pure train step (not yet jitted): (state, batch) -> (state, metrics).

  Args:
    config: the run config.
    graphdef: the model's nnx GraphDef.
    tx: the optimizer.
    mesh: the 1-D "data" mesh.

  Returns:
    step_fn(state, {"x": int32 (B, T), "y": int32 (B, T)}) -> (new_state, metrics), metrics a dict
    of float32 scalars: bits_per_token, grad_norm, finite (0/1), learning_rate,
    ssm_learning_rate, nonfinite_consecutive, nonfinite_total.
  """
  base_key = jax.random.PRNGKey(int(config.seed))
  axis = sharding_lib.DATA_AXIS

  def local_loss_and_grads(params, x, y, key):
    # Runs on one device's shard of the batch with the full (replicated) parameters.
    key = jax.random.fold_in(key, jax.lax.axis_index(axis))

    def loss_fn(p):
      return jnp.mean(_forward_bits(graphdef, p, x, y, config, key))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    # Equal shards: the global mean is the mean of the per-device means. One explicit all-reduce.
    return jax.lax.pmean(loss, axis), jax.lax.pmean(grads, axis)

  sharded_loss_and_grads = jax.shard_map(
      local_loss_and_grads, mesh=mesh, in_specs=(P(), P(axis), P(axis), P()),
      out_specs=(P(), P()), check_vma=False)

  def train_step(state, batch):
    step = state["step"]
    key = jax.random.fold_in(base_key, step)
    params = state["params"]
    loss, grads = sharded_loss_and_grads(params, batch["x"], batch["y"], key)
    grad_norm = optax.global_norm(grads)
    updates, new_opt_state = tx.update(grads, state["opt_state"], params)
    updates = jax.tree_util.tree_map(lambda u: u * state["lr_scale"].astype(u.dtype), updates)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)

    def keep_if_finite(new, old):
      return jnp.where(finite, new, old)

    consecutive = jnp.where(finite, 0, state["nonfinite_consecutive"] + 1).astype(jnp.int32)
    new_state = dict(
        state,
        step=step + 1,
        params=jax.tree_util.tree_map(keep_if_finite, new_params, params),
        opt_state=jax.tree_util.tree_map(keep_if_finite, new_opt_state, state["opt_state"]),
        nonfinite_consecutive=consecutive,
        nonfinite_total=(state["nonfinite_total"] + (~finite).astype(jnp.int32)),
    )
    lrs = optim.current_learning_rates(config.train, step, state["lr_scale"])
    metrics = {
        "bits_per_token": loss.astype(jnp.float32),
        "grad_norm": grad_norm.astype(jnp.float32),
        "finite": finite.astype(jnp.float32),
        "learning_rate": lrs["learning_rate"].astype(jnp.float32),
        "ssm_learning_rate": lrs["ssm_learning_rate"].astype(jnp.float32),
        "nonfinite_consecutive": consecutive,
        "nonfinite_total": new_state["nonfinite_total"],
    }
    return new_state, metrics

  return train_step


def make_eval_step(config, graphdef, mesh) -> Callable:
  """The pure eval step: (params, batch) -> {"bits_sum": (2,), "tokens": (2,)} per channel.

  Index 0 sums over left-channel (or mono) stream positions, index 1 over right-channel ones.
  """
  axis = sharding_lib.DATA_AXIS
  channels = jnp.asarray(channel_map(config.dataset))  # (T,)

  def local(params, x, y):
    bits = _forward_bits(graphdef, params, x, y, config, None)  # (B_local, T)
    onehot = jax.nn.one_hot(channels, 2, dtype=jnp.float32)  # (T, 2)
    bits_sum = jnp.einsum("bt,tc->c", bits, onehot)
    tokens = jnp.sum(onehot, axis=0) * x.shape[0]
    return jax.lax.psum(bits_sum, axis), jax.lax.psum(tokens, axis)

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P(axis)),
                          out_specs=(P(), P()), check_vma=False)

  def eval_step(params, batch):
    bits_sum, tokens = sharded(params, batch["x"], batch["y"])
    return {"bits_sum": bits_sum, "tokens": tokens}

  return eval_step


def jit_train_step(config, graphdef, tx, mesh, state_sharding):
  """The compiled train step with in/out shardings and the state donated."""
  step_fn = make_train_step(config, graphdef, tx, mesh)
  return jax.jit(step_fn,
                 in_shardings=(state_sharding, sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))


def evaluate(eval_step: Callable, params, eval_batches: Iterable[dict], mesh,
             is_stereo: bool) -> dict[str, float]:
  """Validation bits per token (and per channel / per stereo frame) over `eval_batches`."""
  bits_sum = np.zeros(2, np.float64)
  tokens = np.zeros(2, np.float64)
  for batch in eval_batches:
    out = jax.device_get(eval_step(params, sharding_lib.global_batch(mesh, batch)))
    bits_sum += out["bits_sum"]
    tokens += out["tokens"]
  if tokens.sum() == 0:
    raise ValueError("The validation split produced no batches; check dataset.valid_fraction and "
                     "train.batch_size against the amount of audio.")
  result = {"eval/bits_per_token": float(bits_sum.sum() / tokens.sum())}
  if is_stereo:
    result["eval/bits_per_token_left"] = float(bits_sum[0] / tokens[0])
    result["eval/bits_per_token_right"] = float(bits_sum[1] / tokens[1])
    # One stereo frame = one left + one right token.
    result["eval/bits_per_frame"] = float(2 * bits_sum.sum() / tokens.sum())
  return result


class PreemptionSync:
  """Decides, identically on every process, whether to save and stop after a step (SIGTERM, ^C).

  A preemption notice (SIGTERM) may reach only some hosts, and at different steps; a checkpoint
  is a collective operation, so all processes must pick the same step or they deadlock.
  - With `jax.distributed` initialized, its preemption sync manager catches SIGTERM, tells every
    process, and `multihost_utils.reached_preemption_sync_point(step)` turns True at the same step
    everywhere (no per-step communication until a notice arrives).
  - Otherwise a Python SIGTERM handler sets a local flag; on several processes (a pod run without
    `jax.distributed`), the flags are OR-ed with `process_allgather` every step. On one process
    that reduction is skipped: the flag is the answer.
  SIGINT (Ctrl-C) sets the same flag (except on a multi-process run with the sync manager, which
  cannot share it): the run saves after the current step and stops. A second SIGINT raises
  KeyboardInterrupt at once; a save it interrupts leaves only a temporary directory, never a
  damaged step (Orbax renames a step into place when complete).
  Use as a context manager (installs/restores the handlers) and call `should_stop(step)` after
  every train step, on every process.
  """

  def __init__(self):
    self.requested = False  # this process received SIGTERM or SIGINT (Python-handler mode).
    self.signal_name = None  # "SIGTERM" or "SIGINT", the first one received.
    self.interrupted_twice = False  # a second SIGINT arrived: stop at once.
    self._previous = {}
    self._use_sync_manager = jax.distributed.is_initialized()

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    # The sync manager installed its own SIGTERM handler; a Python one would replace it.
    if not self._use_sync_manager:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
    if not self._use_sync_manager or jax.process_count() == 1:
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    self.signal_name = self.signal_name or signal.Signals(signum).name
    if signum == signal.SIGINT:
      # Our own second-stage handler, not `default_int_handler`: asyncio.Runner (used by some
      # checkpoint I/O) swaps `default_int_handler` for one that only cancels its task, and a
      # KeyboardInterrupt raised inside a finalizer or callback is printed and dropped. Both lost
      # the second Ctrl-C; the flag survives them (see `raise_if_interrupted_twice`).
      signal.signal(signal.SIGINT, self._handle_second_sigint)
      print("SIGINT: saving a checkpoint after this step, then stopping (Ctrl-C again stops at "
            "once).", file=sys.stderr, flush=True)

  def _handle_second_sigint(self, signum, frame):
    del signum, frame
    self.interrupted_twice = True
    raise KeyboardInterrupt

  def raise_if_interrupted_twice(self) -> None:
    """Re-raises a second Ctrl-C that some library swallowed (checked between steps)."""
    if self.interrupted_twice:
      raise KeyboardInterrupt

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def should_stop(self, step: int) -> bool:
    """True on every process at the same `step` once any process got SIGTERM (or SIGINT)."""
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if self._use_sync_manager:
      return (bool(multihost_utils.reached_preemption_sync_point(int(step)))
              or (self.requested and jax.process_count() == 1))
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray([self.requested], np.int32))
    return bool(np.any(flags))


def _write_samples(writer, config, graphdef, params, step: int) -> None:
  """Audio/spectrogram summaries of a few fresh samples (audio_summaries.summary_samples)."""
  if jax.process_index() != 0:  # only process 0 writes summaries; sampling is not collective.
    return
  # The params are replicated: sample from this host's copy, on one local device, so the
  # sampler never waits for other hosts.
  params = jax.tree_util.tree_map(lambda a: a.addressable_data(0), params)
  model = nnx.merge(graphdef, params)
  key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 7), step)
  for name, value in audio_summaries.summary_samples(model, config, key).items():
    if isinstance(value, tuple):
      audio, sample_rate = value
      writer.write_audio(step, f"samples/{name}", np.asarray(audio), sample_rate)
    elif isinstance(value, float):  # stereo metrics of the samples and of held-out data
      writer.write_scalars(step, {f"samples/{name}": value})
    else:
      writer.write_image(step, f"samples/{name}", np.asarray(value))


def _check_nonfinite(config, step_metrics: dict, step: int) -> None:
  consecutive = int(step_metrics["nonfinite_consecutive"])
  limit = int(config.train.max_consecutive_nonfinite)
  if consecutive >= limit:
    raise NonFiniteError(
        f"{consecutive} consecutive train steps (up to step {step}) had a non-finite loss, gradient "
        f"or update (train.max_consecutive_nonfinite={limit}); stopping. The last finite "
        "parameters are in the latest checkpoint; try a lower learning rate or "
        "train.grad_clip_norm.")


@contextlib.contextmanager
def _no_empty_folders_on_failure(workdir: str):
  """On an exception, removes the workdir and checkpoints/ folders if this run made them empty."""
  made = []  # the folders up to checkpoints/ that do not exist yet, outermost first.
  folder = checkpoint_lib.checkpoint_dir(workdir)
  while not os.path.exists(folder) and os.path.dirname(folder) != folder:
    made.insert(0, folder)
    folder = os.path.dirname(folder)
  try:
    yield
  except BaseException:
    for folder in reversed(made):
      with contextlib.suppress(OSError):  # not empty (or not ours to remove): keep it.
        os.rmdir(folder)
    raise


def _compile_train_step(train_step, state, mesh, batch_shape, *, verbose: bool):
  """Compiles the train step ahead of time, printing "compiling ... done in N s"."""
  start = time.monotonic()
  if verbose:
    print(f"compiling the train step (batch {batch_shape[0]} x {batch_shape[1]} tokens) ...",
          end="", flush=True)
  batch = jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=sharding_lib.batch_sharding(mesh))
  abstract = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
  compiled = train_step.lower(abstract, {"x": batch, "y": batch}).compile()
  if verbose:
    print(f" done in {time.monotonic() - start:.1f} s", flush=True)
  return compiled


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (resuming from the latest checkpoint in `workdir`), evaluates, checkpoints.

  Prints (process 0) a start block (parameters per U-Net level, devices and mesh, the data per
  split, the resolved config, also written to WORKDIR/config.json), the compile time, each
  checkpoint and, on resume, the config fields that changed. A run already at train.num_steps
  prints one line and writes nothing. A start that fails leaves no empty folders behind.

  Args:
    config: a validated-or-not ConfigDict (validated here before anything is built).
    workdir: output directory: checkpoints/, tensorboard/, metrics.jsonl, config.json.

  Returns:
    The last logged train and eval metrics {name: value} ({} when there was nothing to do).
  """
  config_lib.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
  with _no_empty_folders_on_failure(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  from sashimi_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from sashimi_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  is_main = jax.process_index() == 0
  mesh = sharding_lib.create_mesh()
  tokens_per_step = int(config.train.batch_size) * config_lib.token_stream_length(config.dataset)
  num_steps = int(config.train.num_steps)

  ckpt = checkpoint_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints))
  newest, saved_config = ckpt.newest_readable_config()
  changes = []
  if newest is not None:  # fail fast, before building anything.
    checkpoint_lib.check_compatible(saved_config, config, workdir=workdir, step=newest)
    changes = run_report.config_changes(saved_config, config)

  # Data first: a missing folder or an empty split is reported before anything compiles.
  sources = pipeline.split_sources(config.dataset)
  train_iter = pipeline.create_train_iterator(
      config.dataset, global_batch_size=int(config.train.batch_size), seed=int(config.seed),
      clips=sources["train"])
  eval_source = None
  if len(sources["valid"]):
    eval_source = pipeline.create_eval_batches(
        config.dataset, split="valid", global_batch_size=int(config.train.batch_size),
        max_batches=int(config.train.eval_batches), clips=sources["valid"])
  elif is_main:
    logging.warning("dataset.valid_fraction=0: no validation split, so no evaluation and no "
                    "'best' checkpoint.")
  graphdef, state, tx = state_lib.init_train_state(config, mesh)
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, state)
  latest = None
  if ckpt.all_steps():
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    del state  # free the fresh initialisation before restoring.
    # The newest step that restores fully; damaged newer ones are logged and set aside.
    latest, state = ckpt.restore_latest(abstract, train_iter, config=config, workdir=workdir)
  if latest is not None and latest >= num_steps:
    # Touches nothing: no TensorBoard file, no metrics line, no checkpoint, no config.json.
    ckpt.close()
    if is_main:
      print(f"nothing to do: already at step {latest} (train.num_steps={num_steps}) in "
            f"{ckpt.directory}.", flush=True)
    return {}
  config_path = run_report.write_config_json(config, workdir) if is_main else None
  resumed = None
  if latest is not None:
    resumed = f"Resumed from {ckpt.directory} step {latest}; " + (
        "config changes since that checkpoint:\n  " + "\n  ".join(changes) if changes
        else "config unchanged.")
  if is_main:
    print(run_report.start_block(config, params=state["params"], mesh=mesh, sources=sources,
                                 workdir=workdir, config_path=config_path, resumed=resumed),
          flush=True)
  start_step = int(jax.device_get(state["step"]))

  train_step = jit_train_step(config, graphdef, tx, mesh, shardings)
  train_step = _compile_train_step(
      train_step, state, mesh,
      (int(config.train.batch_size), config_lib.token_stream_length(config.dataset)),
      verbose=is_main)
  eval_step = jax.jit(make_eval_step(config, graphdef, mesh),
                      in_shardings=(shardings["params"], sharding_lib.batch_sharding(mesh)),
                      out_shardings=sharding_lib.replicated(mesh))
  eval_batches = None  # built on first use, then reused (deterministic).

  # Continues the metrics from the restored step: a rerun never logs a step twice.
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  progress = metrics_lib.Progress(num_steps, enabled=is_main)
  last_metrics: dict[str, float] = {}
  pending: list[dict] = []
  interval_start = time.monotonic()
  interval_steps = 0
  step = start_step
  last_saved = latest
  previous_metrics = None
  try:
    with PreemptionSync() as preemption:
      while step < num_steps:
        preemption.raise_if_interrupted_twice()
        local_batch = next(train_iter)
        state, step_metrics = train_step(state, sharding_lib.global_batch(mesh, local_batch))
        step += 1
        interval_steps += 1
        is_last = step == num_steps
        log_now = step % int(config.train.log_every_steps) == 0 or is_last
        if step == start_step + 1 and not log_now:  # compilation is not training throughput.
          jax.block_until_ready(state["step"])
          interval_start, interval_steps = time.monotonic(), 0
        pending.append(step_metrics)
        # Checked one step late, so the host never waits for the step it just dispatched.
        if previous_metrics is not None:
          _check_nonfinite(config, jax.device_get(previous_metrics), step - 1)
        previous_metrics = step_metrics

        if log_now:
          host = jax.device_get(pending)
          elapsed = time.monotonic() - interval_start
          finite = [m for m in host if m["finite"] > 0]
          timed_steps = max(interval_steps, 1)
          scalars = {
              "train/tokens_per_second": tokens_per_step * timed_steps / max(elapsed, 1e-9),
              "train/seconds_per_step": elapsed / timed_steps,
              "train/learning_rate": float(host[-1]["learning_rate"]),
              "train/ssm_learning_rate": float(host[-1]["ssm_learning_rate"]),
              "train/nonfinite_skips": float(host[-1]["nonfinite_total"]),
          }
          if finite:  # skipped steps have no meaningful loss; they are counted instead.
            scalars["train/bits_per_token"] = float(np.mean([m["bits_per_token"] for m in finite]))
            scalars["train/grad_norm"] = float(np.mean([m["grad_norm"] for m in finite]))
          writer.write_scalars(step, scalars)
          progress.update(step, scalars)
          last_metrics.update(scalars)
          pending, interval_steps, interval_start = [], 0, time.monotonic()

        eval_bits = None
        if eval_source is not None and (step % int(config.train.eval_every_steps) == 0
                                        or is_last):
          if eval_batches is None:
            eval_batches = list(eval_source)
          audio_lib.report_substitutions()  # one line per evaluation, counts per file.
          eval_scalars = evaluate(eval_step, state["params"], eval_batches, mesh,
                                  bool(config.dataset.is_stereo))
          eval_bits = eval_scalars["eval/bits_per_token"]
          if config.train.schedule == "plateau":
            state = _apply_plateau(config, state, eval_bits, mesh)
          writer.write_scalars(step, eval_scalars)
          progress.update(step, eval_scalars)
          last_metrics.update(eval_scalars)
          if int(config.train.num_eval_samples) > 0:
            _write_samples(writer, config, graphdef, state["params"], step)
          writer.flush()
          interval_start = time.monotonic()  # evaluation time is not training throughput.

        preempted = preemption.should_stop(step)  # the same answer on every process.
        if (step % int(config.train.checkpoint_every_steps) == 0 or is_last
            or preempted):
          _check_nonfinite(config, jax.device_get(step_metrics), step)
          ckpt.save(step, state, train_iter, config, eval_bits_per_token=eval_bits)
          logging.info("Saved checkpoint step %d to %s.", step, ckpt.directory)
          last_saved = step
          interval_start = time.monotonic()
        if preempted:
          name = preemption.signal_name or "SIGTERM"
          what = "Interrupted" if name == "SIGINT" else "Preempted"
          logging.warning("%s: saved step %d, exiting.", name, step)
          print(f"{what} ({name}): saved checkpoint at step {step}.", flush=True)
          break
      preemption.raise_if_interrupted_twice()
    if previous_metrics is not None:
      _check_nonfinite(config, jax.device_get(previous_metrics), step)
    if step >= num_steps and last_saved != step:
      ckpt.save(step, state, train_iter, config)
      logging.info("Saved checkpoint step %d to %s.", step, ckpt.directory)
  except KeyboardInterrupt:  # a second Ctrl-C: stop now, in one line.
    saved = f"step {last_saved}" if last_saved is not None else "none"
    raise SystemExit(f"Stopped at once by a second Ctrl-C at step {step}; last complete "
                     f"checkpoint: {saved}.") from None
  finally:
    ckpt.close()
    writer.close()
  return last_metrics


def _apply_plateau(config, state, eval_bits: float, mesh):
  """Host-side ReduceLROnPlateau on validation bits; updates the state's lr_scale & counters."""
  before = optim.PlateauState(float(state["plateau_best_bits"]), int(state["plateau_bad_evals"]),
                              float(state["lr_scale"]))
  after = optim.plateau_update(before, eval_bits, factor=float(config.train.plateau_factor),
                               patience=int(config.train.plateau_patience))
  if after.lr_scale != before.lr_scale:
    logging.info("Plateau: learning rates x%.3g (now x%.3g).", after.lr_scale / before.lr_scale,
                 after.lr_scale)
  rep = sharding_lib.replicated(mesh)
  return dict(state,
              plateau_best_bits=jax.device_put(np.float32(after.best_bits), rep),
              plateau_bad_evals=jax.device_put(np.int32(after.bad_evals), rep),
              lr_scale=jax.device_put(np.float32(after.lr_scale), rep))
