"""Train state, the shared step helper that turns a loss into an optimizer + EMA step, and `Trainable`:
the network + optimizer scaffold every task sets up the same way."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgen.train import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
    """Everything a simple task checkpoints. `extra` holds non-trainable model state (e.g. a VQ
    codebook's EMA statistics); `ema_params` is None when `config.ema_decay == 0`."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    extra: Any


def with_grad_accum(tx: optax.GradientTransformation, train_config) -> optax.GradientTransformation:
    """`tx` applied every `train_config.grad_accum_steps` steps to the mean of those steps' gradients
    (optax.MultiSteps; between updates the parameters do not move). Unchanged when the key is 1 or absent."""
    k = train_config.get("grad_accum_steps", 1)
    return GradAccum(tx, k) if k > 1 else tx


class GradAccum(optax.MultiSteps):
    """optax.MultiSteps with a fixed k, which `make_train_step` reads (`.k`)."""

    def __init__(self, tx: optax.GradientTransformation, k: int):
        super().__init__(tx, every_k_schedule=k)
        self.k = k


def optimizer_updates(train_config) -> int:
    """Optimizer updates in a run: ceil(num_steps / grad_accum_steps) (the length of the lr schedule)."""
    return -(-train_config.num_steps // train_config.get("grad_accum_steps", 1))


def create_train_state(params, tx: optax.GradientTransformation, ema_decay: float, extra=None) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema_decay else None,
        extra=extra if extra is not None else {},
    )


def ema_update(ema, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, tuple[dict, Any]]]


PostUpdateFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[Any, Any]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule, ema_decay: float,
                    post_update: PostUpdateFn | None = None):
    """Step for tasks with one network.

    `loss_fn(params, extra, batch, key) -> (loss, (metrics, new_extra))`. The step logs the loss,
    the global gradient norm (before clipping), the parameter norm and the learning rate.
    Optional `post_update(params, new_extra, step, key) -> (params, extra)` runs after the optimizer
    step (before the EMA), for state changed outside the gradient, e.g. VQ EMA codebooks and dead-code
    restarts (which may move a parameter); `new_extra` may then carry what it needs from the forward
    pass, as long as the returned `extra` has the structure of `state.extra`.

    Gradient accumulation (`tx` a `GradAccum`, see `with_grad_accum`): every step still reads one
    batch with its own key (fold_in(train_key, step)) and logs that micro-batch's loss and gradient norm;
    the optimizer applies the mean of k micro-batch gradients every k-th step,
        theta <- theta + tx((1/k) sum_{j<k} grad L(theta; batch_j)),
    which for a mean loss equals one step on the k batches together. The EMA moves only on those steps,
    and the logged learning rate is that of update floor(step / k).
    """
    accum = tx.k if isinstance(tx, GradAccum) else 1

    def train_step(state: TrainState, batch, key):
        if post_update is not None:
            key, post_key = jax.random.split(key)
        (loss, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.extra, batch, key)
        grads = mesh_lib.shard_like_update(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if post_update is not None:
            params, extra = post_update(params, extra, state.step, post_key)
        ema = ema_update(state.ema_params, params, ema_decay) if ema_decay else None
        if ema_decay and accum > 1:
            ema = jax.tree.map(lambda new, old: jnp.where(tx.has_updated(opt_state), new, old), ema, state.ema_params)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                       param_norm=optax.tree.norm(mesh_lib.shard_like_update(params)),
                       learning_rate=schedule(state.step // accum))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                          extra=extra), metrics

    return train_step


def check_supported(config, net: str, *, remat: bool = False, low_precision: bool = False) -> None:
    """ConfigError naming the key when `config` asks network `net` for rematerialisation (`train.remat`) or a
    compute / parameter dtype other than float32 (`model.dtype`, `model.param_dtype`) it does not support."""
    from jaxgen.config import ConfigError

    if config.train.get("remat", False) and not remat:
        raise ConfigError(f"config.train.remat=True is not supported by the {net}; set it to False "
                          f"(rematerialisation is implemented for the UNet)")
    model = config.get("model") or {}
    for key in ("dtype", "param_dtype"):
        value = model.get(key, "float32")
        if value != "float32" and not low_precision:
            raise ConfigError(f"config.model.{key}='{value}' is not supported by the {net}; it computes in "
                              f"float32 (accepted: 'float32')")


def eval_params(state: TrainState):
    """The weights to evaluate: the EMA when config.ema_decay > 0, else the trained parameters."""
    return state.ema_params if state.ema_params is not None else state.params


@dataclasses.dataclass(frozen=True)
class Trainable:
    """One network and its optimizer, as every task sets them up from config.optimizer, config.train and
    config.ema_decay (see `trainable`).

    graphdef / abstract_params: nnx.split of the network (params as ShapeDtypeStructs); tx: the optimizer
    (with gradient accumulation when train.grad_accum_steps > 1); lr_schedule: its learning rate per update.
    """

    new_model: Callable[[jax.Array], nnx.Module]
    graphdef: Any
    abstract_params: Any
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    ema_decay: float

    def init(self, key: jax.Array, extra=None) -> TrainState:
        """A fresh TrainState: the network's parameters initialised with `key`."""
        _, params = nnx.split(self.new_model(key), nnx.Param)
        return create_train_state(params, self.tx, self.ema_decay, extra=extra)

    def initial_params(self, key: jax.Array):
        """The network's parameters initialised with `key`, as `init` draws them (one jitted program, not one
        compile per parameter as eager initialisation takes)."""
        return jax.jit(lambda k: nnx.split(self.new_model(k), nnx.Param)[1])(key)

    def state_of(self, model: nnx.Module) -> TrainState:
        """A fresh TrainState from an initialised network: its nnx.Param as params, any other state (e.g. VQ
        codebook statistics) as `extra`."""
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return create_train_state(params, self.tx, self.ema_decay, extra=rest)

    def train_step(self, loss_fn: LossFn, post_update: PostUpdateFn | None = None):
        """`make_train_step` with this optimizer and EMA."""
        return make_train_step(loss_fn, self.tx, self.lr_schedule, self.ema_decay, post_update)

    def module(self, params, extra=None) -> nnx.Module:
        """The network with `params` (and its other state `extra`, when it has any): nnx.merge."""
        return nnx.merge(self.graphdef, params, *(() if extra is None else (extra,)))


def trainable(config, new_model: Callable[[jax.Array], nnx.Module]) -> Trainable:
    """Set up `new_model(key) -> nnx.Module` for training under `config` (its optimizer, lr schedule over
    ceil(train.num_steps / train.grad_accum_steps) updates, gradient accumulation and EMA decay)."""
    from jaxgen.optim import make_optimizer

    tx_builder, lr_schedule = make_optimizer(config.optimizer, optimizer_updates(config.train))
    graphdef, abstract_params, _ = nnx.split(nnx.eval_shape(lambda: new_model(jax.random.key(0))), nnx.Param, ...)
    tx = with_grad_accum(tx_builder(abstract_params), config.train)
    return Trainable(new_model, graphdef, abstract_params, tx, lr_schedule, config.ema_decay)
