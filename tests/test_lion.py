"""Lion against a plain NumPy Lion, optax.lion, signSGD, and its state size."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from jaxgen.optim import lion
from jaxgen.optim.lion import ScaleByLionState


def np_lion(params, grads_seq, lr, b1, b2, wd, mask=None, mu_dtype=None):
    """Plain NumPy Lion: c = b1 m + (1-b1) g; p -= lr_t (sign(c) + wd p); m = b2 m + (1-b2) g."""
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) if mu_dtype is None else np.zeros(v.shape, mu_dtype) for k, v in params.items()}
    for t, g in enumerate(grads_seq):
        lr_t = lr(t) if callable(lr) else lr
        for k in p:
            mk = m[k].astype(p[k].dtype)
            c = b1 * mk + (1 - b1) * g[k]
            decay = wd * p[k] if (mask is None or mask[k]) else 0.0
            p[k] = p[k] - lr_t * (np.sign(c) + decay)
            m[k] = (b2 * mk + (1 - b2) * g[k]).astype(m[k].dtype)
    return p, m


def make_problem(seed, steps, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(5, 3)).astype(dtype), "b": rng.normal(size=(3,)).astype(dtype)}
    grads = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in params.items()} for _ in range(steps)]
    return params, grads


def run(tx, params, grads):
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for g in grads:
        updates, state = step(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_matches_numpy_lion(wd):
    with jax.enable_x64(True):
        params, grads = make_problem(0, 8)
        out, state = run(lion(3e-2, b1=0.9, b2=0.99, weight_decay=wd), params, grads)
        ref, m = np_lion(params, grads, 3e-2, 0.9, 0.99, wd)
        for k in ref:
            np.testing.assert_allclose(np.asarray(out[k]), ref[k], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(np.asarray(state[0].mu[k]), m[k], rtol=1e-12, atol=1e-14)


def test_schedule_and_mask_match_numpy():
    with jax.enable_x64(True):
        params, grads = make_problem(1, 6)
        sched = lambda count: 1e-2 / (1.0 + count)  # noqa: E731 (float64 under x64, unlike optax's schedules)
        mask = {"w": True, "b": False}
        out, _ = run(lion(sched, b1=0.95, b2=0.98, weight_decay=0.5, mask=mask), params, grads)
        ref, _ = np_lion(params, grads, lambda t: 1e-2 / (1.0 + t), 0.95, 0.98, 0.5, mask=mask)
        for k in ref:
            np.testing.assert_allclose(np.asarray(out[k]), ref[k], rtol=1e-12, atol=1e-14)
        # the callable form of the mask gives the same
        out2, _ = run(lion(sched, b1=0.95, b2=0.98, weight_decay=0.5,
                           mask=lambda p: {"w": True, "b": False}), params, grads)
        for k in ref:
            np.testing.assert_array_equal(np.asarray(out2[k]), np.asarray(out[k]))


def test_matches_optax_lion():
    params, grads = make_problem(2, 10, np.float32)
    for lr, wd in ((1e-3, 0.0), (1e-3, 1e-2), (optax.cosine_decay_schedule(1e-2, 10), 0.3)):
        ours, _ = run(lion(lr, b1=0.9, b2=0.99, weight_decay=wd), params, grads)
        theirs, _ = run(optax.lion(lr, b1=0.9, b2=0.99, weight_decay=wd), params, grads)
        for k in ours:
            np.testing.assert_allclose(np.asarray(ours[k]), np.asarray(theirs[k]), rtol=1e-6, atol=1e-7)


def test_b1_zero_is_signsgd_and_updates_are_pm_lr():
    params, grads = make_problem(3, 5, np.float32)
    tx = lion(0.01, b1=0.0, b2=0.99)
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads:
        u, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        for k in g:
            np.testing.assert_array_equal(np.asarray(u[k]), -0.01 * np.sign(g[k]))
    # with momentum and decay: u + lr wd p is in {-lr, 0, +lr}
    lr, wd = 0.01, 0.3
    tx = lion(lr, weight_decay=wd)
    state = tx.init(p)
    for g in grads:
        g = dict(g, b=np.zeros_like(g["b"]))  # zero gradients -> sign 0 on the first step
        u, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        for k in g:
            v = np.asarray(u[k], np.float64) + lr * wd * np.asarray(p[k], np.float64)
            np.testing.assert_allclose(np.min(np.abs(v[..., None] - np.array([-lr, 0.0, lr])), -1), 0, atol=1e-8)
        p = optax.apply_updates(p, u)


def test_bf16_momentum():
    params, grads = make_problem(4, 8, np.float32)
    out, state = run(lion(1e-2, weight_decay=0.1, mu_dtype=jnp.bfloat16), params, grads)
    mu = state[0].mu
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(mu))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(out))
    ref, m = np_lion(params, grads, 1e-2, 0.9, 0.99, 0.1, mu_dtype=ml_dtypes.bfloat16)
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), ref[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(mu[k].astype(jnp.float32)), m[k].astype(np.float32))


def _nbytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_state_is_half_of_adamw():
    params = {"w": jnp.zeros((256, 128)), "b": jnp.zeros((128,)), "h": jnp.zeros((64, 64), jnp.bfloat16)}
    p_bytes = _nbytes(params)
    lion_b = _nbytes(lion(1e-4, weight_decay=0.1).init(params))
    adamw_b = _nbytes(optax.adamw(1e-3, weight_decay=0.01).init(params))
    assert lion_b == p_bytes  # one buffer, no step counter
    assert adamw_b == 2 * p_bytes + 4  # mu, nu and an int32 count
    bf16_b = _nbytes(lion(1e-4, mu_dtype=jnp.bfloat16).init(params))
    assert bf16_b == sum(x.size * 2 for x in jax.tree.leaves(params))
    assert isinstance(lion(1e-4).init(params)[0], ScaleByLionState)


def test_parameter_groups_with_multi_transform():
    params, grads = make_problem(5, 4, np.float32)
    tx = optax.multi_transform({"lion": lion(1e-2, weight_decay=0.1), "frozen": optax.set_to_zero()},
                               {"w": "lion", "b": "frozen"})
    out, _ = run(tx, params, grads)
    ref, _ = np_lion(params, grads, 1e-2, 0.9, 0.99, 0.1)
    np.testing.assert_allclose(np.asarray(out["w"]), ref["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["b"]), params["b"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="b1"):
        lion(1e-3, b1=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        lion(1e-3, weight_decay=-1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        lion(-1e-3)
