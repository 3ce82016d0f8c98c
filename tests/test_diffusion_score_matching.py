"""ESM - DSM is a model-independent constant; same minimiser; SSM identity; ODE likelihood vs the oracle."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion as D

P = D.ContinuousVP()


def _models(dim, key):
    """Several different score models (affine, nonlinear, zero)."""
    k1, k2, k3 = jax.random.split(key, 3)
    A = jax.random.normal(k1, (dim, dim)) * 0.5
    W = jax.random.normal(k2, (dim, 16))
    V = jax.random.normal(k3, (16, dim)) * 0.3
    return {
        "zero": lambda x, t: jnp.zeros_like(x),
        "affine": lambda x, t: x @ A - 0.2,
        "mlp": lambda x, t: jnp.tanh(x @ W) @ V,
        "scaled_x": lambda x, t: -3.0 * x,
    }


@pytest.mark.parametrize("t", [0.05, 0.3])
def test_esm_minus_dsm_is_the_same_constant_for_every_model(t):
    gm = D.oracle_2d()
    n = 200_000
    x0 = gm.sample(jax.random.key(0), n)
    eps = jax.random.normal(jax.random.key(1), x0.shape)
    tt = jnp.full((n,), t)
    x_t = P.marginal(x0, tt, eps)
    true = gm.score_fn(P)
    diffs, ses = [], []
    for name, s in _models(2, jax.random.key(2)).items():
        per = D.esm_loss(s, true, x_t, tt) - D.dsm_loss(s, P, x0, tt, eps)
        diffs.append(float(per.mean()))
        ses.append(float(per.std() / np.sqrt(n)))
    # the constant E||score||^2 - E||eps||^2 / sigma^2 computed directly
    sigma = float(P.sigma(t))
    const = float(jnp.mean(jnp.sum(true(x_t, tt) ** 2, -1))) - 2.0 / sigma**2
    # with common random numbers only the cross term E[s . (score + eps/sigma)] = 0 fluctuates
    assert np.all(np.abs(np.array(diffs) - const) < 5 * np.array(ses) + 1e-3 * abs(const)), (diffs, const, ses)


def test_gaussian_constant_closed_form_and_same_minimiser():
    """For N(mu, s^2 I): C = D (1/(a^2 s^2 + sigma^2) - 1/sigma^2); ESM and DSM minimisers over affine
    models s(x) = w x + c are both the true score (-1/v, a mu / v)."""
    mu, sd, t, n = 0.3, 0.5, 0.2, 200_000
    gm = D.oracle_gaussian(mu, sd, 1)
    x0 = mu + sd * jax.random.normal(jax.random.key(3), (n, 1))
    eps = jax.random.normal(jax.random.key(4), (n, 1))
    tt = jnp.full((n,), t)
    a, sig = float(P.alpha(t)), float(P.sigma(t))
    v = a**2 * sd**2 + sig**2
    x_t = P.marginal(x0, tt, eps)

    def model(p):
        return lambda x, t: p[0] * x + p[1]

    per = D.esm_loss(model(jnp.array([0.0, 0.0])), gm.score_fn(P), x_t, tt) - D.dsm_loss(
        model(jnp.array([0.0, 0.0])), P, x0, tt, eps)
    np.testing.assert_allclose(float(per.mean()), 1 / v - 1 / sig**2, rtol=0.02)
    for loss in (lambda p: D.esm_loss(model(p), gm.score_fn(P), x_t, tt).mean(),
                 lambda p: D.dsm_loss(model(p), P, x0, tt, eps).mean()):
        p0 = jnp.zeros(2)
        p_star = p0 - jnp.linalg.solve(jax.jit(jax.hessian(loss))(p0), jax.jit(jax.grad(loss))(p0))  # exact Newton
        np.testing.assert_allclose(np.asarray(p_star), [-1 / v, a * mu / v], rtol=0.03, atol=0.02)


def test_sliced_score_matching_identity():
    """SSM(s) = ESM(s)/2 - E||grad log p||^2 / 2 for every model (integration by parts)."""
    gm = D.oracle_2d()
    n, t = 50_000, 0.1
    x0 = gm.sample(jax.random.key(5), n)
    eps = jax.random.normal(jax.random.key(6), x0.shape)
    tt = jnp.full((n,), t)
    x_t = P.marginal(x0, tt, eps)
    true = gm.score_fn(P)
    half_sq = 0.5 * jnp.sum(true(x_t, tt) ** 2, -1)
    for name, s in _models(2, jax.random.key(7)).items():
        # per example: SSM - ESM/2 + ||score||^2/2 has mean zero (common random numbers)
        per = (D.ssm_loss(s, x_t, tt, jax.random.key(8), num_projections=2) - 0.5 * D.esm_loss(s, true, x_t, tt)
               + half_sq)
        se = float(per.std()) / np.sqrt(n)
        assert abs(float(per.mean())) < 5 * se + 1e-3, (name, float(per.mean()), se)


def test_dsm_gradient_variance_exceeds_esm_at_small_noise():
    gm = D.oracle_2d()
    n, t = 4096, 0.02
    x0 = gm.sample(jax.random.key(9), n)
    eps = jax.random.normal(jax.random.key(10), x0.shape)
    tt = jnp.full((n,), t)
    x_t = P.marginal(x0, tt, eps)
    params = {"A": -jnp.eye(2), "b": jnp.zeros(2)}
    model = lambda p: (lambda x, t: x @ p["A"] + p["b"])  # noqa: E731
    g_esm = jax.vmap(jax.grad(lambda p, x, tt: D.esm_loss(model(p), gm.score_fn(P), x[None], tt[None])[0]),
                     in_axes=(None, 0, 0))(params, x_t, tt)
    g_dsm = jax.vmap(jax.grad(lambda p, x0, e, tt: D.dsm_loss(model(p), P, x0[None], tt[None], e[None])[0]),
                     in_axes=(None, 0, 0, 0))(params, x0, eps, tt)
    tr_var = lambda g: sum(float(jnp.sum(jnp.var(v, 0))) for v in jax.tree_util.tree_leaves(g))  # noqa: E731
    # Var(g_dsm) = Var(g_esm) + E|2 J^T (score + eps / sigma)|^2 (the cross covariance vanishes)
    assert tr_var(g_dsm) > 1.5 * tr_var(g_esm)


def test_ode_log_likelihood_matches_the_oracle_exact_log_density():
    gm = D.oracle_2d()
    edm = D.EDM()
    t_min = 0.001  # sig = 0.08
    x = gm.sample(jax.random.key(11), 64) + 0.08 * jax.random.normal(jax.random.key(12), (64, 2))
    exact = np.asarray(gm.log_prob(x, 1.0, edm.sigma(t_min)))
    ll = np.asarray(D.ode_log_likelihood(gm.denoise_fn(edm), edm, x, t_min=t_min, exact_trace=True))
    np.testing.assert_allclose(ll, exact, atol=5e-3)
    hutch = np.asarray(D.ode_log_likelihood(gm.denoise_fn(edm), edm, x, jax.random.key(13), t_min=t_min,
                                            num_probes=4))
    err = hutch - exact
    assert abs(err.mean()) < 4 * err.std() / np.sqrt(len(err)) + 5e-3  # unbiased
    assert err.std() < 1.0
    # a VP process gives the same density of x_{t_min} (its own alpha, sigma)
    sch = D.make_schedule("linear", 1000)
    xv = np.asarray(sch.alpha(0.002)) * x[:16]
    ll_vp = np.asarray(D.ode_log_likelihood(gm.denoise_fn(sch), sch, xv, t_min=0.002, exact_trace=True))
    np.testing.assert_allclose(ll_vp, np.asarray(gm.log_prob(xv, sch.alpha(0.002), sch.sigma(0.002))), atol=5e-3)


def test_bits_per_dim_and_errors():
    np.testing.assert_allclose(float(D.bits_per_dim(-np.log(2.0) * 4, 4)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(D.bits_per_dim(0.0, 3, bin_width=0.5)), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="distribution"):
        D.ssm_loss(lambda x, t: x, jnp.ones((2, 2)), jnp.ones(2), jax.random.key(0), distribution="sphere")
    with pytest.raises(ValueError, match="key"):
        D.ode_log_likelihood(lambda x, t: x, D.EDM(), jnp.ones((2, 2)))
