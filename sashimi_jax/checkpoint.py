"""Checkpoints: a thin wrapper over Orbax's CheckpointManager (train state + data iterator + config).

Layout: `WORKDIR/checkpoints/<step>/{state, data, config}` written with `ocp.args.Composite`:
- `state`: the train-state pytree (params, optimizer state, counters; see train.py);
- `data`: the grain iterator's position (one JSON per process), so a resumed run sees exactly the
  batches the uninterrupted run would have seen;
- `config`: the config as JSON, used to refuse resuming with an incompatible config and to rebuild
  the model for sampling (`load_for_inference`).
Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save
leaves the previous checkpoints intact. Kept: the last `keep` steps plus the best by validation
bits per token.

Damage. After each save, `<step>/sashimi_manifest.json` records every file's size and CRC32 and
the step is checked against it (a save that cannot be written or verified raises
`CheckpointError`, one line, earlier steps untouched). On resume (`restore_latest`) a step that
fails its manifest or its restore is reported in one line, renamed to `<step>.damaged` (never
deleted) and the next older step is tried; sampling (`load_for_inference`) falls back the same
way without renaming anything.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers
import grain.checkpoint as grain_checkpoint  # registers the grain iterator Orbax handler.
from absl import logging

from sashimi_jax import checkpoint_integrity as integrity
from sashimi_jax import config as config_lib

CHECKPOINT_DIR = "checkpoints"
DAMAGED_SUFFIX = ".damaged"
BEST_METRIC = "eval/bits_per_token"
# Fields that change the parameters' shapes, the data stream or its meaning: a checkpoint trained
# with other values cannot be continued. Everything else (lr, steps, logging, ...) may change.
_COMPATIBILITY_PREFIXES = ("model.", "dataset.")
_COMPATIBILITY_FIELDS = ("seed", "train.batch_size")
# remat and compute_dtype change how the step computes, not the parameters: a run may switch.
_COMPATIBILITY_EXCEPTIONS = ("dataset.num_workers", "dataset.verify_audio", "model.remat",
                             "model.compute_dtype")
# Version of the parameter tree's layout, saved with the config (key PARAM_LAYOUT_KEY). 1: one
# module per residual block (no key saved); 2: each stage's blocks stacked on a layer axis.
PARAM_LAYOUT = 2
PARAM_LAYOUT_KEY = "param_layout"


class CheckpointError(ValueError):
  """A checkpoint that cannot be written or restored (one line; a ValueError so entry points
  report it without a traceback)."""


class ParamLayoutError(ValueError):
  """A checkpoint written with another parameter layout: intact, but not for this code."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
  """Fields whose values make `saved`'s checkpoint unusable under `current`: {name: (old, new)}."""
  old, new = config_lib.flatten(saved), config_lib.flatten(current)
  defaults = config_lib.base_defaults()
  diffs = {}
  for name in sorted(set(old) | set(new)):
    relevant = (name in _COMPATIBILITY_FIELDS or name.startswith(_COMPATIBILITY_PREFIXES))
    if not relevant or name in _COMPATIBILITY_EXCEPTIONS:
      continue
    # A field newer than the checkpoint: the older code behaved as the base default.
    old_value = old[name] if name in old else defaults.get(name, "<missing>")
    new_value = new.get(name, "<missing>")
    if old_value != new_value:
      if name not in old and name in defaults:
        old_value = f"<not saved; default {old_value!r}>"
      diffs[name] = (old_value, new_value)
  return diffs


def check_compatible(saved: Mapping[str, Any], config, *, workdir: str, step: int) -> None:
  """Raises ValueError naming every field that differs incompatibly from the saved config."""
  diffs = config_differences(saved, config_lib.to_dict(config))
  if diffs:
    lines = "\n".join(f"  - {k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in
                      diffs.items())
    raise ValueError(
        f"Cannot resume from {checkpoint_dir(workdir)} step {step}: the config differs in fields "
        f"that change the model or the data:\n{lines}\nUse a new --workdir, or restore these "
        "values.")


class Checkpointer:
  """Saves and restores {state, data iterator, config} under `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int = 3, create: bool = True):
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        # BestN keeps the last n after sorting: reverse=True puts the lowest bits last.
        checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, create=create,
        # Synchronous: the data iterator's position must be captured at this exact step.
        enable_async_checkpointing=False)
    self.directory = checkpoint_dir(workdir)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any, config, *,
           eval_bits_per_token: float | None = None) -> None:
    """Saves `state` (a pytree of arrays), the iterator's position and the config at `step`.

    Raises:
      ValueError: if any parameter or optimizer-state value is non-finite (never checkpointed).
    """
    weights = {k: state[k] for k in ("params", "opt_state") if k in state}
    paths_leaves = [(p, leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(weights)
                    if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact)]
    # One small jitted reduction; its replicated result is readable on every host.
    finite = np.ones(0, bool)
    if paths_leaves:
      finite = jax.jit(lambda leaves: jax.numpy.stack(
          [jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]))([l for _, l in paths_leaves])
      finite = np.asarray(finite.addressable_data(0))
    bad = [jax.tree_util.keystr(p) for (p, _), ok in zip(paths_leaves, finite) if not ok]
    if bad:
      raise ValueError(f"Refusing to checkpoint step {step}: non-finite values in "
                       f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}.")
    metrics = None if eval_bits_per_token is None else {BEST_METRIC: float(eval_bits_per_token)}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain_checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave({**config_lib.to_dict(config), PARAM_LAYOUT_KEY: PARAM_LAYOUT}))
    earlier = self.all_steps()
    try:
      with integrity.quiet_orbax_failures():
        self._manager.save(int(step), args=args, metrics=metrics, force=True)
        self._manager.wait_until_finished()
      if jax.process_index() == 0:
        integrity.write_manifest(self.step_dir(step))
        problem = self.damage(step)
        if problem:
          raise CheckpointError(f"verification after saving failed: {problem}")
    except Exception as e:  # pylint: disable=broad-except
      cause = integrity.write_failure_cause(e)
      logging.debug("Checkpoint save failure: %s", integrity.one_line(e, limit=2000))
      raise CheckpointError(
          f"Could not save checkpoint step {step} in {self.directory}: {cause.rstrip('.')}. "
          f"Earlier checkpoints are untouched (steps {earlier or 'none'}); free space or fix the "
          "directory, then rerun the same command to resume.") from e

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def damage(self, step: int) -> str | None:
    """Why `step` cannot be used judging by its files (manifest, metadata), or None."""
    step_dir = self.step_dir(step)
    if not os.path.isdir(step_dir):
      return "its directory is missing"
    return integrity.manifest_problem(step_dir) or integrity.metadata_problem(step_dir)

  def set_aside(self, step: int, cause: str) -> str:
    """Renames a damaged step to `<step>.damaged[.N]` (never deletes it) with a note of `cause`.

    Returns:
      The new path.
    """
    target = self.step_dir(step) + DAMAGED_SUFFIX
    n = 1
    while os.path.exists(target):
      n += 1
      target = f"{self.step_dir(step)}{DAMAGED_SUFFIX}.{n}"
    if jax.process_index() == 0:
      os.rename(self.step_dir(step), target)
      with open(os.path.join(target, "DAMAGE.txt"), "w", encoding="utf-8") as f:
        f.write(f"step {step}: {cause}\n")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"checkpoint_set_aside_{step}")
    self._manager.reload()
    return target

  def newest_readable_config(self) -> tuple[int | None, dict | None]:
    """(step, saved config) of the newest step whose files and config read; (None, None)."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        if self.damage(step) is None:
          return step, self.saved_config(step)
      except ParamLayoutError:
        raise
      except Exception:  # pylint: disable=broad-except  (restore_latest reports it)
        continue
    return None, None

  def restore_latest(self, abstract_state: Any, data_iterator: Any | None = None, *,
                     config=None, workdir: str = "", set_aside: bool = True
                     ) -> tuple[int | None, Any]:
    """Restores the newest step that restores fully, skipping damaged ones.

    Each damaged step is logged in one line (step and cause) and, if `set_aside`, renamed by
    `set_aside` once an older step has restored (so nothing changes if none restores).

    Args:
      abstract_state: as for `restore`.
      data_iterator: as for `restore` (its position is set by the step that restores).
      config: if given, each step's saved config must be compatible (`check_compatible`).
      workdir: named in the compatibility error.
      set_aside: rename damaged steps (training) or leave them (sampling).

    Returns:
      (step, state), or (None, None) if there are no checkpoints.

    Raises:
      CheckpointError: checkpoints exist but none restores (listing each with its cause).
      ValueError: a saved config is incompatible with `config`.
    """
    damaged = []
    for step in sorted(self.all_steps(), reverse=True):
      cause = None
      try:
        cause = self.damage(step)
        saved = None if cause else self.saved_config(step)
      except ParamLayoutError:  # intact, but for other code: never set aside as damage.
        raise
      except Exception as e:  # pylint: disable=broad-except
        cause = integrity.one_line(e)
      if cause is None:
        if config is not None:
          check_compatible(saved, config, workdir=workdir, step=step)
        try:
          with integrity.quiet_orbax_failures():
            state = self.restore(step, abstract_state, data_iterator)
        except Exception as e:  # pylint: disable=broad-except
          cause = integrity.one_line(e)
      if cause is None:
        for bad_step, bad_cause in damaged:
          where = self.set_aside(bad_step, bad_cause) if set_aside else self.step_dir(bad_step)
          logging.warning("Checkpoint step %d left at %s.", bad_step, where)
        return step, state
      logging.warning("Checkpoint step %d is damaged (%s); trying an older one.", step, cause)
      damaged.append((step, cause))
    if damaged:
      tried = "; ".join(f"step {s}: {c}" for s, c in damaged)
      raise CheckpointError(f"No checkpoint in {self.directory} restores (tried {tried}). "
                            "Nothing was changed; use a new --workdir to start afresh.")
    return None, None

  def saved_config(self, step: int) -> dict:
    """The config JSON saved with `step`.

    Raises:
      ParamLayoutError: if its parameters have another layout than this code's (PARAM_LAYOUT).
    """
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    config = dict(restored["config"])
    layout = config.pop(PARAM_LAYOUT_KEY, 1)
    if layout != PARAM_LAYOUT:
      raise ParamLayoutError(
          f"Checkpoint {self.directory} step {step} has parameter layout {layout} and this code "
          f"reads layout {PARAM_LAYOUT} (layout 1: one module per layer; 2: layers stacked per "
          "stage); restore it with the code that wrote it, or train anew in a new --workdir.")
    return config

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores the state at `step` into the structure/shardings of `abstract_state`.

    Args:
      step: the checkpoint step.
      abstract_state: pytree of jax.ShapeDtypeStruct (with `.sharding`) like the saved state.
      data_iterator: if given, its position is restored in place.

    Returns:
      The restored state pytree.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain_checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Restores only the parameters saved at `step` (not the optimizer state) into
    `abstract_params` (a pytree of jax.ShapeDtypeStruct with `.sharding`)."""
    restore_args = jax.tree_util.tree_map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
        abstract_params)
    args = ocp.args.PyTreeRestore(item={"params": abstract_params},
                                  restore_args={"params": restore_args}, partial_restore=True)
    restored = self._manager.restore(step, args=ocp.args.Composite(state=args))
    return restored["state"]["params"]

  def close(self) -> None:
    try:
      with integrity.quiet_orbax_failures():
        self._manager.wait_until_finished()
        self._manager.close()
    except Exception as e:  # pylint: disable=broad-except  (a failed save was reported already)
      logging.debug("Closing the checkpoint manager: %s", integrity.one_line(e))


def load_for_inference(workdir: str, step: int | None = None):
  """Rebuilds the trained model from a checkpoint's parameters (no optimizer state), for sampling.

  Args:
    workdir: the training run's --workdir.
    step: which checkpoint (None = the newest that restores; damaged newer ones are logged).

  Returns:
    (config, model, step): the run's ConfigDict, the SaShiMiLM with restored parameters, the step.

  Raises:
    FileNotFoundError: if `workdir` holds no checkpoint (or not `step`).
    CheckpointError: `step` is damaged (naming the intact steps), or every step is.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sashimi_jax import state as state_lib  # pylint: disable=g-import-not-at-top  (builds models)

  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoints in {workdir!r}: {directory} does not exist. Train "
                            "first with launch.py --workdir=... or pass the run's workdir.")
  ckpt = Checkpointer(workdir, create=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoints in {directory}.")
    if step is not None and step not in steps:
      raise FileNotFoundError(f"No checkpoint for step {step} in {directory}; saved steps: "
                              f"{sorted(steps)}.")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore(s):
      config = ml_collections.ConfigDict(ckpt.saved_config(s))
      graphdef, abstract_params = state_lib.abstract_params(config)
      abstract_params = jax.tree_util.tree_map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params)
      return config, graphdef, ckpt.restore_params(s, abstract_params)

    candidates = sorted(steps, reverse=True) if step is None else [step]
    tried = []
    for s in candidates:
      cause = ckpt.damage(s)
      if cause is None:
        try:
          with integrity.quiet_orbax_failures():
            config, graphdef, params = restore(s)
          break
        except ParamLayoutError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          cause = integrity.one_line(e)
      if step is None:  # falling back; an explicit --step gets one error line below.
        logging.warning("Checkpoint step %d is damaged (%s); trying an older one.", s, cause)
      tried.append((s, cause))
    else:
      if step is not None:
        intact = [s for s in sorted(steps) if s != step and ckpt.damage(s) is None]
        raise CheckpointError(f"Checkpoint step {step} in {directory} is damaged ({tried[0][1]}); "
                              f"intact steps: {intact or 'none'}.")
      what = "; ".join(f"step {s}: {c}" for s, c in tried)
      raise CheckpointError(f"No checkpoint in {directory} restores (tried {what}).")
  finally:
    ckpt.close()
  model = nnx.merge(graphdef, params)
  return config, model, int(s)
