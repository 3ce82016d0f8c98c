"""Device mesh from `config.mesh` and the shardings of batches and train states.

Axes: 'data' (batch) and 'fsdp' (batch too, and large parameters split along one dimension).
Batches are split over both axes; a parameter with at least `min_fsdp_size` elements is split
along its largest dimension divisible by the fsdp size, everything else is replicated.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    data, fsdp = mesh_config.data, mesh_config.fsdp
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"config.mesh: data={mesh_config.data} x fsdp={mesh_config.fsdp} must use all {n} devices "
                         f"(use -1 for one axis to take the rest)")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(x: jax.Array) -> jax.Array:
    """`x` with its leading (batch) dimension split over the batch axes of the mesh the train step is traced
    under (`jaxgen.train.loop.sharded_train_step` sets it); `x` unchanged outside such a mesh.

    For arrays a step creates itself (data-free noise, as in SiD): nothing ties them to the sharded batch, so
    without this XLA replicates them, and all the work on them, on every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, abstract_state, min_fsdp_size: int = 2**16):
    """A NamedSharding per leaf of `abstract_state` (ShapeDtypeStructs)."""
    fsdp = mesh.shape["fsdp"]

    def leaf_sharding(x):
        shape = getattr(x, "shape", ())
        if fsdp == 1 or math.prod(shape) < min_fsdp_size:
            return replicated(mesh)
        dims = [d for d in np.argsort(shape)[::-1] if shape[d] % fsdp == 0]
        if not dims:
            return replicated(mesh)
        spec = [None] * len(shape)
        spec[dims[0]] = "fsdp"
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(leaf_sharding, abstract_state)


def global_batch(local_batch, sharding: NamedSharding):
    """Assemble the global batch from this process's shard (every process calls this)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
