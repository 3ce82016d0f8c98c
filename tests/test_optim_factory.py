"""The optimizer factory against hand-computed updates and optax's own optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen.config import base_config
from jaxgen.optim import make_optimizer, make_lr_schedule


def _opt(**kw):
    c = base_config().optimizer
    c.update(kw)
    return c


def test_warmup_cosine_schedule_closed_form():
    s = make_lr_schedule(_opt(learning_rate=1.0, schedule="cosine", warmup_steps=10), num_steps=110)
    for step in (0, 5, 10, 60, 110):
        want = step / 10 if step < 10 else 0.5 * (1 + np.cos(np.pi * (step - 10) / 100))
        assert float(s(step)) == pytest.approx(want, abs=1e-6)


def test_constant_schedule_with_warmup():
    s = make_lr_schedule(_opt(learning_rate=0.5, schedule="constant", warmup_steps=4), num_steps=100)
    assert [float(s(i)) for i in (0, 2, 4, 50)] == pytest.approx([0.0, 0.25, 0.5, 0.5])


def test_param_groups_scale_lr_and_weight_decay():
    params = {"dense": {"kernel": jnp.ones((3, 2))}, "ssm": {"log_step": jnp.ones((4,))}}
    grads = {"dense": {"kernel": jnp.full((3, 2), 0.5)}, "ssm": {"log_step": jnp.full((4,), 0.5)}}
    build, _ = make_optimizer(_opt(name="sgd", momentum=0.0, learning_rate=0.1, weight_decay=0.01, grad_clip=None,
                                   param_groups=((r"log_step$", 0.1, 0.0),)), num_steps=10)
    tx = build(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    # sgd with decay: u = -lr * (g + wd * p); the group has lr * 0.1 and no decay.
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * (0.5 + 0.01 * 1.0), rtol=1e-6)
    np.testing.assert_allclose(updates["ssm"]["log_step"], -0.01 * 0.5, rtol=1e-6)


def test_adamw_with_clipping_matches_optax():
    key = jax.random.key(0)
    params = {"w": jax.random.normal(key, (5, 5)), "b": jnp.zeros((5,))}
    build, _ = make_optimizer(_opt(name="adamw", learning_rate=1e-2, weight_decay=0.1, grad_clip=0.5), num_steps=10)
    tx = build(params)
    ref = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1))
    s, r = tx.init(params), ref.init(params)
    p1 = p2 = params
    for i in range(3):
        g = jax.tree.map(lambda x: jnp.sin(x + i) * 3.0, p1)
        u1, s = tx.update(g, s, p1)
        u2, r = ref.update(g, r, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p1, p2)


def test_unknown_optimizer_and_schedule():
    with pytest.raises(ValueError, match="config.optimizer.name must be one of"):
        make_optimizer(_opt(name="adagrad"), 10)
    with pytest.raises(ValueError, match="config.optimizer.schedule must be one of"):
        make_lr_schedule(_opt(schedule="linear"), 10)


def test_lion_gets_its_paper_betas_by_default():
    from jaxgen.optim.lion import lion

    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    build, _ = make_optimizer(_opt(name="lion", learning_rate=1e-2, grad_clip=None), num_steps=10)
    tx, ref = build(params), lion(1e-2, b1=0.9, b2=0.99)
    s, r = tx.init(params), ref.init(params)
    for i in range(3):
        g = {"w": jnp.cos(params["w"] * (i + 1))}
        u1, s = tx.update(g, s, params)
        u2, r = ref.update(g, r, params)
        np.testing.assert_array_equal(u1["w"], u2["w"])
    # b2 decides the momentum buffer: it must equal Lion's with b2 = 0.99 (0.999 would differ).
    momentum = [[x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (6,)] for state in (s, r)]
    assert len(momentum[0]) == len(momentum[1]) == 1
    np.testing.assert_array_equal(momentum[0][0], momentum[1][0])
