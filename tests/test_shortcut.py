"""Shortcut models: every step size is trained in every batch; an exactly straight field is its own shortcut."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.diffusion import shortcut as S

A = np.array([[0.5, 0.2], [0.2, 0.3]])  # x0 = A eps + b: a deterministic affine coupling, straight paths
B_SHIFT = np.array([0.4, -0.3])


def straight_field(x, t, level):
    """Exact velocity eps - x0 of x_t = (1 - t)(A eps + b) + t eps: eps = M_t^-1 (x - (1 - t) b), M_t = (1-t) A + t I."""
    a, b = jnp.asarray(A, x.dtype), jnp.asarray(B_SHIFT, x.dtype)
    M = (1.0 - t)[:, None, None] * a + t[:, None, None] * jnp.eye(2, dtype=x.dtype)
    eps = jnp.linalg.solve(M, (x - (1.0 - t)[:, None] * b)[..., None])[..., 0]
    return eps - (eps @ a.T + b)


def curved_field(x, t, level, m=1.5, sd=0.3):
    """Exact 1-RF velocity (x - E[x0 | x_t]) / t for x0 ~ N(m, sd^2) independent of eps (curved paths)."""
    e_x0 = m + (1.0 - t)[:, None] * sd**2 * (x - (1.0 - t)[:, None] * m) / ((1.0 - t) ** 2 * sd**2 + t**2)[:, None]
    return (x - e_x0) / t[:, None]


@pytest.mark.parametrize("batch", [8, 16, 256])
def test_every_step_size_is_trained_in_every_batch(batch):
    for seed in range(3):
        rows = S.shortcut_rows(jax.random.key(seed), batch, 128)
        lv, t, n = np.asarray(rows["level"]), np.asarray(rows["t"]), rows["num_sc"]
        # self-consistency rows train 2d = 1 .. 1/64, flow rows the base step 1/128
        assert set(lv[:n].astype(int)) == set(range(7)) and np.all(lv[n:] == 7) and n < batch
        assert np.all(t > 0) and np.all(t <= 1)
        two_d = 2.0 ** -lv[:n]
        np.testing.assert_allclose(t[:n] / two_d, np.round(t[:n] / two_d), atol=1e-5)  # t on the level's grid
        np.testing.assert_allclose(t[n:] * 128, np.round(t[n:] * 128), atol=1e-4)
    counts = np.bincount(S.shortcut_batch_split(256), minlength=7)
    assert counts.min() >= 9 and counts.max() - counts.min() <= 1 and counts.sum() == 64
    with pytest.raises(ValueError, match="batch_size"):
        S.shortcut_batch_split(7)
    with pytest.raises(ValueError, match="num_base_steps"):
        S.shortcut_levels(96)


def test_straight_field_self_consistency_target_equals_flow_matching_target_for_every_d():
    with jax.enable_x64(True):
        rows = S.shortcut_rows(jax.random.key(0), 64, 128, bootstrap_fraction=0.5)
        n = rows["num_sc"]
        assert set(np.asarray(rows["level"][:n]).astype(int)) == set(range(7))
        eps = jax.random.normal(jax.random.key(1), (64, 2), jnp.float64)
        x0 = eps @ A.T + B_SHIFT
        x_t, target = jax.jit(lambda a, e: S.shortcut_targets(straight_field, a, e, rows))(x0, eps)
        np.testing.assert_allclose(np.asarray(target), np.asarray(eps - x0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(target), np.asarray(straight_field(x_t, rows["t"], rows["level"])),
                                   atol=1e-12)
        # a curved field (independent coupling) is not its own shortcut at large d
        _, t_curved = jax.jit(lambda a, e: S.shortcut_targets(curved_field, a, e, rows))(x0[:, :1], eps[:, :1])
        v = curved_field(x_t[:, :1], rows["t"], rows["level"])
        gap = np.abs(np.asarray(t_curved - v))[:n, 0]
        assert gap[np.asarray(rows["level"][:n]) == 0].max() > 1e-2


def test_sampling_a_straight_field_is_exact_for_1_to_128_steps():
    with jax.enable_x64(True):
        eps = jax.random.normal(jax.random.key(2), (32, 2), jnp.float64)
        for n in (1, 2, 128):
            x = S.shortcut_sample(straight_field, eps, n)
            np.testing.assert_allclose(np.asarray(x), np.asarray(eps @ A.T + B_SHIFT), atol=1e-10)
        with pytest.raises(ValueError, match="num_steps"):
            S.shortcut_sample(straight_field, eps, 3)


def test_loss_takes_self_consistency_targets_from_the_ema_weights():
    with jax.enable_x64(True):
        def apply(p, x, t, level, key):
            return p * straight_field(x, t, level)

        eps = jax.random.normal(jax.random.key(3), (64, 2), jnp.float64)
        x0 = eps @ A.T + B_SHIFT
        key = jax.random.key(4)
        loss_fn = jax.jit(lambda p, e: S.shortcut_loss(apply, p, e, x0, key, noise=eps))
        loss, _ = loss_fn(1.0, 1.0)
        assert float(loss) < 1e-20
        # exact online weights, wrong EMA weights: only the self-consistency rows see the EMA
        _, m2 = loss_fn(1.0, 2.0)
        assert float(m2["loss_fm"]) < 1e-20 and float(m2["loss_sc"]) > 1e-3
        _, m3 = loss_fn(2.0, 1.0)
        assert float(m3["loss_sc"]) > 1e-3 and float(m3["loss_fm"]) > 1e-3
