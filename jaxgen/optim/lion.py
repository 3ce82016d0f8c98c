"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") as an optax transformation.

    c_t     = b1 m_{t-1} + (1 - b1) g_t
    theta_t = theta_{t-1} - lr_t (sign(c_t) + wd theta_{t-1})       (decoupled decay, scaled by lr as AdamW)
    m_t     = b2 m_{t-1} + (1 - b2) g_t

One moment buffer (half of Adam's state, a quarter in bf16). Every update entry is lr (+-1 + wd theta),
or lr wd theta where c = 0. b1 = 0 gives signSGD (with b2 irrelevant); b1 = b2 gives signum.
Recipe: lr 3-10x smaller and weight decay 3-10x larger than AdamW's.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxgen import _checks

__all__ = ["lion", "scale_by_lion", "ScaleByLionState"]


class ScaleByLionState(NamedTuple):
    """The momentum m, same tree as the params, in mu_dtype (or the params' dtypes). No step count."""

    mu: optax.Updates


def _check_beta(name: str, b) -> None:
    """b in [0, 1) (b2 = 1 would freeze the momentum, b1 = 1 ignore the gradient). Concrete values only:
    a traced b (e.g. under optax.inject_hyperparams inside jit) is not checked."""
    _checks.number(name, b, low=0, high=1, high_open=True)


def scale_by_lion(b1: float = 0.9, b2: float = 0.99, mu_dtype: Any = None) -> optax.GradientTransformation:
    """updates <- sign(b1 m + (1 - b1) g);  m <- b2 m + (1 - b2) g, m stored in mu_dtype (e.g. jnp.bfloat16).

    The interpolation c is computed in the promoted dtype of m and g (float32 for bf16 m and f32 g);
    the returned sign has the gradient's dtype.
    """
    _check_beta("b1", b1)
    _check_beta("b2", b2)
    if mu_dtype is not None:
        bad = ValueError(f"mu_dtype must be None or a floating dtype (e.g. jnp.bfloat16), got {mu_dtype!r}")
        try:
            mu_dtype = jnp.dtype(mu_dtype)
        except TypeError:
            raise bad from None
        if not jnp.issubdtype(mu_dtype, jnp.floating):
            raise bad

    def init_fn(params):
        return ScaleByLionState(mu=jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype or p.dtype), params))

    def update_fn(updates, state, params=None):
        del params

        def up(g, m):  # bf16 momentum is widened before mixing with the gradient
            return m.astype(jnp.promote_types(m.dtype, g.dtype))

        def direction(g, m):
            return jnp.sign(b1 * up(g, m) + (1.0 - b1) * g).astype(g.dtype)

        def momentum(g, m):
            return (b2 * up(g, m) + (1.0 - b2) * g).astype(m.dtype)

        new_updates = jax.tree.map(direction, updates, state.mu)
        new_mu = jax.tree.map(momentum, updates, state.mu)
        return new_updates, ScaleByLionState(mu=new_mu)

    return optax.GradientTransformation(init_fn, update_fn)


def lion(learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 0.0,
         mu_dtype: Any = None, mask: Any | Callable[[optax.Params], Any] | None = None
         ) -> optax.GradientTransformation:
    """Lion with decoupled weight decay: theta <- theta - lr (sign(b1 m + (1 - b1) g) + wd theta).

    Args:
      learning_rate: a finite float > 0 or an optax schedule (step -> lr).
      b1, b2: interpolation and momentum coefficients in [0, 1) (paper: 0.9, 0.99; 0.95, 0.98 for LMs); Python
        numbers or concrete jax arrays are checked, traced ones (optax.inject_hyperparams under jit) are not.
      weight_decay: wd >= 0, multiplied by the learning rate (as optax.adamw). Default 0 (optax.lion: 1e-3).
      mu_dtype: dtype of the momentum buffer (e.g. jnp.bfloat16); None keeps the params' dtypes.
      mask: pytree of bools (or a callable params -> such a tree) selecting the params that get weight decay.

    Returns an optax.GradientTransformation; `update(grads, state, params)` needs params when wd > 0.
    """
    if not callable(learning_rate):
        _checks.number("learning_rate", learning_rate, low=0, low_open=True,
                       accepted="a finite number > 0 or an optax schedule (step -> lr)")
    if not callable(weight_decay):
        _checks.number("weight_decay", weight_decay, low=0, accepted="a finite number >= 0 or a schedule")
    return optax.chain(
        scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
