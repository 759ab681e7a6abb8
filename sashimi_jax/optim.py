"""The optimizer: AdamW with an SSM parameter group, warmup + cosine/constant/plateau schedules.

Parameter groups (as in state-spaces/s4, whose S4 layers register `dt, A, B, P` with their own lr
and no weight decay):
- "ssm": every parameter under a child module named `kernel` except `C`: `train.ssm_learning_rate`,
  no weight decay.
- "decay": other matrices (ndim >= 2, not counting the layer axis of a scanned stage's stacked
  parameters), except the token embedding: `train.learning_rate` and `train.weight_decay`
  (decoupled, AdamW).
- "no_decay": biases, norm scales and the embedding: `train.learning_rate`, no weight decay.
The plateau schedule's multiplier lives in the train state (it depends on validation bits, which the
host computes); `plateau_update` is the pure rule that changes it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sashimi_jax.models.stage import STACK

SSM, DECAY, NO_DECAY = "ssm", "decay", "no_decay"
_NAME_KEYS = ("key", "name")


def _path_names(path) -> list[str]:
  """The dict keys / attribute names along a pytree path, without the trailing `value` attribute."""
  names = []
  for entry in path:
    for attr in _NAME_KEYS:
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
    else:
      names.append(str(getattr(entry, "idx", entry)))
  if names and names[-1] == "value":
    names = names[:-1]
  return names


def label_of(path, leaf) -> str:
  """The parameter group ("ssm", "decay" or "no_decay") of one parameter.

  Args:
    path: its pytree path (dict keys or nnx.State keys).
    leaf: the parameter array (only its `ndim` is read).
  """
  names = _path_names(path)
  # `kernel` as a *module* (followed by more names) holds SSM parameters; a Linear's weight is also
  # called `kernel`, but as the last name, and is an ordinary weight.
  if "kernel" in names[:-1] and names[-1] != "C":
    return SSM
  if any("embed" in n.lower() for n in names) or any("norm" in n.lower() for n in names):
    return NO_DECAY
  # A scanned stage stacks its layers' parameters on a leading axis: a stacked bias is a vector.
  ndim = getattr(leaf, "ndim", 0) - names.count(STACK)
  return DECAY if ndim >= 2 else NO_DECAY


def param_labels(params) -> Any:
  """The pytree of group labels matching `params`."""
  return jax.tree_util.tree_map_with_path(label_of, params)


SCHEDULES = ("cosine", "constant", "plateau")


def learning_rate_schedule(train_cfg, peak_learning_rate: float) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then cosine decay to 0, or constant (also plateau).

  Args:
    train_cfg: `config.train`.
    peak_learning_rate: the rate after warmup.

  Returns:
    step (int) -> learning rate (float32 scalar).
  """
  warmup = int(train_cfg.warmup_steps)
  if train_cfg.schedule == "cosine":
    decay_steps = max(int(train_cfg.num_steps) - warmup, 1)
    after = optax.cosine_decay_schedule(peak_learning_rate, decay_steps)
  elif train_cfg.schedule in ("constant", "plateau"):
    after = optax.constant_schedule(peak_learning_rate)
  else:
    raise ValueError(f"train.schedule={train_cfg.schedule!r} is unknown; use cosine, constant or "
                     "plateau.")
  if warmup == 0:
    return after
  warm = optax.linear_schedule(0.0, peak_learning_rate, warmup)
  return optax.join_schedules([warm, after], [warmup])


def scale_by_group_learning_rate(schedules: dict[str, optax.Schedule],
                                 labels_fn: Callable[[Any], Any]) -> optax.GradientTransformation:
  """Multiplies each update by -lr(step) of its parameter group (`labels_fn(params)` names it)."""

  def init_fn(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    labels = labels_fn(updates if params is None else params)
    rates = {name: jnp.asarray(schedule(state.count), jnp.float32)
             for name, schedule in schedules.items()}
    updates = jax.tree_util.tree_map(lambda u, label: -rates[label].astype(u.dtype) * u,
                                     updates, labels)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def create_optimizer(train_cfg) -> optax.GradientTransformation:
  """AdamW with the three parameter groups above, after optional global-norm clipping.

  One Adam moment pass over all parameters (equivalent to one AdamW per group, and much faster to
  compile than `optax.multi_transform`): clip -> Adam moments -> + wd * param on the "decay" group
  -> x(-lr of the group). The updates are later multiplied by the plateau multiplier
  (`lr_scale` in the train state, 1 unless `schedule == "plateau"`).
  """
  lr = learning_rate_schedule(train_cfg, float(train_cfg.learning_rate))
  ssm_lr = learning_rate_schedule(train_cfg, float(train_cfg.ssm_learning_rate))
  parts = []
  if float(train_cfg.grad_clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(train_cfg.grad_clip_norm)))
  parts.append(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))
  if float(train_cfg.weight_decay) > 0:
    parts.append(optax.add_decayed_weights(
        float(train_cfg.weight_decay),
        mask=lambda params: jax.tree_util.tree_map(lambda l: l == DECAY, param_labels(params))))
  parts.append(scale_by_group_learning_rate({SSM: ssm_lr, DECAY: lr, NO_DECAY: lr}, param_labels))
  return optax.chain(*parts)


class PlateauState(NamedTuple):
  """Host-side plateau bookkeeping (stored in the train state as float32/int32 scalars)."""
  best_bits: float  # best validation bits per token so far (inf before the first evaluation).
  bad_evals: int  # evaluations in a row without improvement.
  lr_scale: float  # current multiplier of every learning rate.


def plateau_update(state: PlateauState, eval_bits: float, *, factor: float, patience: int,
                   threshold: float = 1e-4) -> PlateauState:
  """torch ReduceLROnPlateau(mode="min", threshold_mode="rel") rule, one evaluation at a time.

  Args:
    state: the bookkeeping before this evaluation.
    eval_bits: this evaluation's validation bits per token.
    factor: multiplier applied when `patience` evaluations in a row did not improve.
    patience: evaluations without improvement tolerated before reducing.
    threshold: relative improvement that counts as better.

  Returns:
    The updated bookkeeping.
  """
  if not math.isfinite(state.best_bits) or eval_bits < state.best_bits * (1.0 - threshold):
    return PlateauState(float(eval_bits), 0, float(state.lr_scale))
  bad = int(state.bad_evals) + 1
  if bad > patience:
    return PlateauState(float(state.best_bits), 0, float(state.lr_scale) * factor)
  return PlateauState(float(state.best_bits), bad, float(state.lr_scale))


def current_learning_rates(train_cfg, step, lr_scale=1.0) -> dict[str, jax.Array]:
  """The learning rates in effect at `step` (for logging): {"learning_rate", "ssm_learning_rate"}."""
  lr = learning_rate_schedule(train_cfg, float(train_cfg.learning_rate))
  ssm_lr = learning_rate_schedule(train_cfg, float(train_cfg.ssm_learning_rate))
  return {"learning_rate": jnp.asarray(lr(step)) * lr_scale,
          "ssm_learning_rate": jnp.asarray(ssm_lr(step)) * lr_scale}
