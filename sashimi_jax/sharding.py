"""The device mesh and the shardings of parameters, optimizer state and batches (no pmap).

One 1-D mesh axis, "data": batches are split over it; parameters are replicated; the optimizer
state is replicated or (with `train.shard_optimizer_state`) split along one axis of each leaf
(ZeRO-1 style). Host-local numpy batches become global arrays with
`jax.make_array_from_process_local_data`, so the same code runs on one CPU or a multi-host pod.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all devices of all processes)."""
  if devices is None:
    # Auto axis types: the model's ops need no sharding annotations; shardings are set at the
    # jit boundary and with shard_map for the data-parallel loss.
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Same full copy on every device."""
  return NamedSharding(mesh, P())


def axis_sharding(mesh: Mesh, axis: int) -> NamedSharding:
  """Axis `axis` (a batch axis, not always leading: e.g. a recurrent state's) over "data"."""
  return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"."""
  return axis_sharding(mesh, 0)


def split_leaf_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Splits the largest axis of `shape` divisible by the mesh size over "data", else replicates."""
  size = mesh.shape[DATA_AXIS]
  candidates = [(dim, i) for i, dim in enumerate(shape) if dim % size == 0 and dim >= size]
  if size == 1 or not candidates:
    return replicated(mesh)
  _, axis = max(candidates)
  spec = [None] * len(shape)
  spec[axis] = DATA_AXIS
  return NamedSharding(mesh, P(*spec))


def optimizer_state_shardings(mesh: Mesh, abstract_opt_state: Any, *, shard: bool) -> Any:
  """Shardings for every leaf of the optimizer state (replicated unless `shard`)."""
  def one(leaf):
    shape = getattr(leaf, "shape", ())
    return split_leaf_sharding(mesh, shape) if shard and len(shape) else replicated(mesh)
  return jax.tree_util.tree_map(one, abstract_opt_state)


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Host-local numpy batch {name: (B_local, T)} -> global arrays (B_global, T) split on "data"."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in local_batch.items()}
