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

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "eval/bits_per_token"
# Fields that change the parameters' shapes, the data stream or its meaning: a checkpoint trained
# with other values cannot be continued. Everything else (lr, steps, logging, ...) may change.
_COMPATIBILITY_PREFIXES = ("model.", "dataset.")
_COMPATIBILITY_FIELDS = ("seed", "train.batch_size")
_COMPATIBILITY_EXCEPTIONS = ("dataset.num_workers",)
# Version of the parameter tree's layout, saved with the config (key PARAM_LAYOUT_KEY). 1: one
# module per residual block (no key saved); 2: each stage's blocks stacked on a layer axis.
PARAM_LAYOUT = 2
PARAM_LAYOUT_KEY = "param_layout"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def _to_dict(config) -> dict:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
  """Fields whose values make `saved`'s checkpoint unusable under `current`: {name: (old, new)}."""
  old, new = _flatten(saved), _flatten(current)
  diffs = {}
  for name in sorted(set(old) | set(new)):
    relevant = (name in _COMPATIBILITY_FIELDS or name.startswith(_COMPATIBILITY_PREFIXES))
    if not relevant or name in _COMPATIBILITY_EXCEPTIONS:
      continue
    if old.get(name, "<missing>") != new.get(name, "<missing>"):
      diffs[name] = (old.get(name, "<missing>"), new.get(name, "<missing>"))
  return diffs


def check_compatible(saved: Mapping[str, Any], config, *, workdir: str, step: int) -> None:
  """Raises ValueError naming every field that differs incompatibly from the saved config."""
  diffs = config_differences(saved, _to_dict(config))
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
        config=ocp.args.JsonSave({**_to_dict(config), PARAM_LAYOUT_KEY: PARAM_LAYOUT}))
    self._manager.save(int(step), args=args, metrics=metrics, force=True)
    self._manager.wait_until_finished()

  def saved_config(self, step: int) -> dict:
    """The config JSON saved with `step`.

    Raises:
      ValueError: if its parameters have another layout than this code's (PARAM_LAYOUT).
    """
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    config = dict(restored["config"])
    layout = config.pop(PARAM_LAYOUT_KEY, 1)
    if layout != PARAM_LAYOUT:
      raise ValueError(
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

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def load_for_inference(workdir: str, step: int | None = None):
  """Rebuilds the trained model from a checkpoint, for sampling.

  Args:
    workdir: the training run's --workdir.
    step: which checkpoint (None = the latest).

  Returns:
    (config, model, step): the run's ConfigDict, the SaShiMiLM with restored parameters, the step.

  Raises:
    FileNotFoundError: if `workdir` holds no checkpoint (or not `step`).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sashimi_jax import train  # pylint: disable=g-import-not-at-top  (train imports us)

  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoints in {workdir!r}: {directory} does not exist. Train "
                            "first with launch.py --workdir=... or pass the run's workdir.")
  ckpt = Checkpointer(workdir, create=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoints in {directory}.")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise FileNotFoundError(f"No checkpoint for step {step} in {directory}; saved steps: "
                              f"{sorted(steps)}.")
    config = ml_collections.ConfigDict(ckpt.saved_config(step))
    mesh = train.sharding_lib.create_mesh(jax.local_devices()[:1])
    graphdef, abstract_state, _ = train.abstract_train_state(config, mesh)
    state = ckpt.restore(step, abstract_state)
  finally:
    ckpt.close()
  model = nnx.merge(graphdef, state["params"])
  return config, model, int(step)
