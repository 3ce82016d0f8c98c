"""Device mesh from `config.mesh` and the shardings of batches and train states.

Axes: 'data' (batch) and 'fsdp' (batch too, and large parameters split along one dimension).
Batches are split over both axes; a parameter with at least `min_fsdp_size` elements is split
along its largest dimension divisible by the fsdp size, everything else is replicated.

Weight-update sharding (`config.mesh.shard_update`; Xu et al. 2020, "Automatic Cross-Replica Sharding of
Weight Update in Data-Parallel Training"): the optimizer state and the EMA of large leaves are split over all
devices (data x fsdp) even where the parameters are replicated. The gradients are reduced as
in plain data parallelism (an all-reduce; left to propagation, XLA:TPU would re-partition the weight-gradient
convolutions with layout copies, measured slower), then each device takes its slice (`shard_like_update`):
it clips, updates the moments, EMA and parameters and computes the logged norms on its slice only, and the new
parameters are all-gathered. The optimizer state's HBM and the update's memory traffic shrink by the device
count; the results are those of the replicated update.
"""

from __future__ import annotations

import contextlib
import contextvars
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


def split_spec(shape, axes, size: int, min_size: int) -> P:
    """PartitionSpec splitting `shape`'s largest dimension divisible by `size` over `axes`; replicated (P()) when
    the leaf has fewer than `min_size` elements, `size` is 1 or no dimension divides."""
    if size == 1 or math.prod(shape) < min_size:
        return P()
    dims = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0]
    if not dims:
        return P()
    spec = [None] * len(shape)
    spec[dims[0]] = axes
    return P(*spec)


def update_spec(mesh, shape, min_size: int) -> P:
    """The weight-update sharding of a leaf of `shape`: split over all the mesh's devices (data x fsdp)."""
    return split_spec(shape, BATCH_AXES, mesh.shape["data"] * mesh.shape["fsdp"], min_size)


def state_shardings(mesh: Mesh, abstract_state, min_fsdp_size: int = 2**16, shard_update: bool = False):
    """A NamedSharding per leaf of `abstract_state` (ShapeDtypeStructs). With `shard_update` and a
    TrainState, its optimizer state and EMA follow `update_spec` (the parameters keep the fsdp rule)."""
    from jaxgen.train.state import TrainState

    def param_rule(x):
        return NamedSharding(mesh, split_spec(getattr(x, "shape", ()), "fsdp", mesh.shape["fsdp"], min_fsdp_size))

    def update_rule(x):
        return NamedSharding(mesh, update_spec(mesh, getattr(x, "shape", ()), min_fsdp_size))

    shardings = jax.tree.map(param_rule, abstract_state)
    if shard_update and isinstance(abstract_state, TrainState):
        shardings = shardings.replace(opt_state=jax.tree.map(update_rule, abstract_state.opt_state),
                                      ema_params=jax.tree.map(update_rule, abstract_state.ema_params))
    return shardings


_UPDATE_MIN_SIZE = contextvars.ContextVar("jaxgen_update_min_size", default=None)


@contextlib.contextmanager
def update_sharding(config):
    """While a train step is traced in this context, `shard_like_update` slices the update's inputs as
    `config.mesh.shard_update` asks (nothing when it is off or `config` is None)."""
    on = config is not None and config.mesh.shard_update
    token = _UPDATE_MIN_SIZE.set(config.mesh.fsdp_min_size if on else None)
    try:
        yield
    finally:
        _UPDATE_MIN_SIZE.reset(token)


def shard_like_update(tree):
    """`tree` (gradients, new parameters) reduced into the parameters' layout, then split like the optimizer state
    (`update_spec`), when traced under a mesh inside `update_sharding` with shard_update on; `tree` unchanged
    otherwise. What is computed from the result (clipping, the optimizer, the EMA, norms) then runs on each
    device's slice."""
    min_size = _UPDATE_MIN_SIZE.get()
    mesh = jax.sharding.get_abstract_mesh()
    if min_size is None or mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return tree

    def one(x):  # the parameters' layout: replicated, or split along fsdp
        x = jax.lax.with_sharding_constraint(x, split_spec(x.shape, "fsdp", mesh.shape["fsdp"], min_size))
        return jax.lax.with_sharding_constraint(x, update_spec(mesh, x.shape, min_size))

    return jax.tree.map(one, tree)


def global_batch(local_batch, sharding: NamedSharding):
    """Assemble the global batch from this process's shard (every process calls this)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
