"""Train state and the shared step helper that turns a loss into an optimizer + EMA step."""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a simple task checkpoints. `extra` holds non-trainable model state (e.g. a VQ
    codebook's EMA statistics); `ema_params` is None when `config.ema_decay == 0`."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    extra: Any


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
    """

    def train_step(state: TrainState, batch, key):
        if post_update is not None:
            key, post_key = jax.random.split(key)
        (loss, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.extra, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if post_update is not None:
            params, extra = post_update(params, extra, state.step, post_key)
        ema = ema_update(state.ema_params, params, ema_decay) if ema_decay else None
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                       param_norm=optax.global_norm(params), learning_rate=schedule(state.step))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                          extra=extra), metrics

    return train_step
