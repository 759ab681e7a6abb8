"""The train state: the model a config describes, and the state pytree's shapes and shardings.

The state is a plain dict pytree (train.py's docstring lists its keys). This module sits below
both `train.py` (which steps the state) and `checkpoint.py` (which saves and restores it), so
neither imports the other.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sashimi_jax import config as config_lib
from sashimi_jax import heads
from sashimi_jax import models
from sashimi_jax import optim
from sashimi_jax import sharding as sharding_lib
from sashimi_jax.data import quantize


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs):
  """The SaShiMiLM of a whole config: its sequence length, vocabulary and head width derived here.

  Args:
    config: the run's ConfigDict (`model.*`, `dataset.{bits, sample_len, is_stereo}`).
    rngs: initialisation randomness (`params` stream; `dropout` unused at build time).
  """
  head = config_lib.head_args(config)
  return models.build_model(
      config.model, l_max=config_lib.l_max(config), vocab_size=quantize.vocab_size(head["bits"]),
      output_dim=heads.output_dim(**head), rngs=rngs)


def _seeded_model(config):
  seed = int(config.seed)
  return build_model(config, nnx.Rngs(params=seed, dropout=seed + 1))


def initial_counters() -> dict[str, Any]:
  """The train state's scalars at step 0."""
  return {
      "step": jnp.zeros((), jnp.int32),
      "lr_scale": jnp.ones((), jnp.float32),
      "nonfinite_consecutive": jnp.zeros((), jnp.int32),
      "nonfinite_total": jnp.zeros((), jnp.int32),
      "plateau_best_bits": jnp.full((), jnp.inf, jnp.float32),
      "plateau_bad_evals": jnp.zeros((), jnp.int32),
  }


def state_shardings(config, mesh, abstract_state) -> dict:
  """NamedShardings of the train state: replicated, except a sharded optimizer state if asked."""
  rep = sharding_lib.replicated(mesh)
  out = jax.tree_util.tree_map(lambda _: rep, abstract_state)
  out["opt_state"] = sharding_lib.optimizer_state_shardings(
      mesh, abstract_state["opt_state"], shard=bool(config.train.shard_optimizer_state))
  return out


def abstract_params(config):
  """(graphdef, params): the model's GraphDef and a pure dict of jax.ShapeDtypeStruct (no compute)."""
  abstract_model = nnx.eval_shape(lambda: _seeded_model(config))
  graphdef, params = nnx.split(abstract_model)
  return graphdef, nnx.to_pure_dict(params)


def abstract_train_state(config, mesh):
  """Shapes and shardings of the train state, without computing anything.

  Returns:
    (graphdef, abstract_state, tx): abstract_state is a pytree of jax.ShapeDtypeStruct with
    `.sharding` set.
  """
  graphdef, params = abstract_params(config)
  tx = optim.create_optimizer(config.train)
  abstract_state = dict(
      jax.eval_shape(initial_counters),
      params=params,
      opt_state=jax.eval_shape(tx.init, params))
  shardings = state_shardings(config, mesh, abstract_state)
  abstract_state = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
  return graphdef, abstract_state, tx


def init_train_state(config, mesh):
  """Builds the model and a fresh train state placed on `mesh`.

  Returns:
    (graphdef, state, tx).
  """
  model = _seeded_model(config)
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  tx = optim.create_optimizer(config.train)
  rep = sharding_lib.replicated(mesh)
  params = jax.device_put(params, rep)
  abstract_opt = jax.eval_shape(tx.init, params)
  opt_shardings = sharding_lib.optimizer_state_shardings(
      mesh, abstract_opt, shard=bool(config.train.shard_optimizer_state))
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  state = dict(jax.device_put(initial_counters(), rep), params=params, opt_state=opt_state)
  return graphdef, state, tx
