"""Score matching vs conditional (denoising) score matching on the oracle (seed 000), and ODE likelihoods.

    python -m experiments.score_matching [--quick] [--out DIR]

On `oracle-2d` (the 9-component mixture, continuous VP SDE, x_t = alpha x0 + sigma eps):
1. identity: for several different score models (zero, random affine, random MLP, the exact score, and
   networks trained by ESM and by DSM) ESM - DSM is the same constant E||grad log p_t||^2 - d / sigma^2;
   rows `esm_minus_dsm` with its Monte Carlo standard error `se` (common random numbers) and the constant.
2. minimisers: two time-conditioned MLP score networks trained with ESM and with DSM (same seed, data stream,
   steps, t log-uniform in [0.005, 1], sigma^2 weighting): at each t their held-out ESM (`esm`, and `rel_esm`
   relative to E||grad log p_t||^2) and the relative distance of their predictions `rel_dist` =
   E||s_esm - s_dsm||^2 / E||grad log p_t||^2.
3. gradient variance: trace of the covariance of per-example parameter gradients of the DSM-trained network
   under ESM and DSM at a single t (`gvar_esm`, `gvar_dsm`, `ratio`) against t. DSM's is always larger (its gradient is
   ESM's plus a conditionally-centred term) and explodes as t -> 0.
4. likelihood: log p_{t_min}(x) of test points (data + N(0, 0.02^2), the EDM process at sigma = 0.02) by the
   probability-flow ODE (exact trace, and Hutchinson with 1 or 8 Rademacher probes) against the oracle's exact
   log-density; `bpd` and `bpd_exact` in bits/dim and the
   mean absolute error in nats (`abs_err_nats`).
Figure: score_matching.png (gradient-variance ratio vs t; ESM - DSM per model).
"""
from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from jaxgen import diffusion as D  # noqa: E402
from jaxgen.nets import MLPDenoiser  # noqa: E402
from experiments._report import prepare_out, save_figure, write_json, markdown_table as _table  # noqa: E402

P = D.ContinuousVP()


T_MIN = 0.005


def _score_of(graphdef, state):
    """s(x, t) = net(x, t) / sigma(t): the sigma-scaled output keeps the regression target O(1)."""
    m = nnx.merge(graphdef, state)
    return lambda x, tt: m(x, tt) / P.sigma(tt)[:, None]


def _train_score(kind, gm, steps, key, batch=512):
    """A time-conditioned MLP score model trained by 'esm' (oracle target) or 'dsm', with t log-uniform in
    [T_MIN, 1] and the loss weighted by sigma(t)^2 (the usual weighting; same for both)."""
    k_init, k_loop = jax.random.split(key)
    model = MLPDenoiser(gm.dim, hidden=128, depth=3, rngs=nnx.Rngs(k_init))
    graphdef, state = nnx.split(model)
    opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt_state = opt.init(state)
    true = gm.score_fn(P)

    def loss_fn(state, k):
        k1, k2, k3 = jax.random.split(k, 3)
        x0 = gm.sample(k1, batch)
        eps = jax.random.normal(k2, x0.shape)
        tt = jnp.exp(jax.random.uniform(k3, (batch,), minval=jnp.log(T_MIN), maxval=0.0))
        w = P.sigma(tt) ** 2
        s = _score_of(graphdef, state)
        if kind == "esm":
            return jnp.mean(w * D.esm_loss(s, true, P.marginal(x0, tt, eps), tt))
        return jnp.mean(w * D.dsm_loss(s, P, x0, tt, eps))

    @jax.jit
    def step(state, opt_state, k):
        loss, g = jax.value_and_grad(loss_fn)(state, k)
        upd, opt_state = opt.update(g, opt_state, state)
        return optax.apply_updates(state, upd), opt_state, loss

    for i in range(steps):
        state, opt_state, _ = step(state, opt_state, jax.random.fold_in(k_loop, i))
    return _score_of(graphdef, state), (graphdef, state)


def _random_models(dim, key):
    k1, k2, k3 = jax.random.split(key, 3)
    A = jax.random.normal(k1, (dim, dim)) * 0.5
    W = jax.random.normal(k2, (dim, 16))
    V = jax.random.normal(k3, (16, dim)) * 0.3
    return {"zero": lambda x, t: jnp.zeros_like(x), "random-affine": lambda x, t: x @ A - 0.2,
            "random-mlp": lambda x, t: jnp.tanh(x @ W) @ V}


def identity_rows(gm, ts, n, trained, key):
    rows = []
    true = gm.score_fn(P)
    for t in ts:
        # separate keys for data and noise (fold_in(k, 1) would equal the sampler's own split(k)[1])
        k_data, k_eps = jax.random.split(jax.random.fold_in(key, int(1e4 * t)))
        x0 = gm.sample(k_data, n)
        eps = jax.random.normal(k_eps, x0.shape)
        tt = jnp.full((n,), t)
        x_t = P.marginal(x0, tt, eps)
        s2 = jnp.sum(true(x_t, tt) ** 2, -1)
        sig = float(P.sigma(t))
        const = float(jnp.mean(s2)) - gm.dim / sig**2
        models = dict(_random_models(gm.dim, key), exact=true)
        models.update({f"trained-{kind}": f for kind, f in trained.items()})
        for name, s in models.items():
            esm, dsm = D.esm_loss(s, true, x_t, tt), D.dsm_loss(s, P, x0, tt, eps)
            diff = esm - dsm
            rows.append(dict(method="esm_minus_dsm", model=name, setting=f"oracle-2d t={t}", t=t,
                             esm=float(esm.mean()), dsm=float(dsm.mean()), esm_minus_dsm=float(diff.mean()),
                             se=float(diff.std() / np.sqrt(n)), constant=const))
    return rows


def minimiser_rows(gm, ts, steps, n, key):
    """Train ESM and DSM networks (same seed, data stream and steps); compare them at each t."""
    true = gm.score_fn(P)
    s_esm, _ = _train_score("esm", gm, steps, jax.random.fold_in(key, 1))
    s_dsm, dsm_params = _train_score("dsm", gm, steps, jax.random.fold_in(key, 1))
    rows = []
    for t in ts:
        k_data, k_eps = jax.random.split(jax.random.fold_in(key, int(1e4 * t)))
        x0 = gm.sample(k_data, n)
        tt = jnp.full((n,), t)
        x_t = P.marginal(x0, tt, jax.random.normal(k_eps, x0.shape))
        norm = float(jnp.mean(jnp.sum(true(x_t, tt) ** 2, -1)))
        rel = float(jnp.mean(jnp.sum((s_esm(x_t, tt) - s_dsm(x_t, tt)) ** 2, -1))) / norm
        for k, f in (("esm", s_esm), ("dsm", s_dsm)):
            esm = float(jnp.mean(D.esm_loss(f, true, x_t, tt)))
            rows.append(dict(method="minimiser", model=f"trained-{k}", setting=f"oracle-2d t={t}", t=t, steps=steps,
                             esm=esm, rel_esm=esm / norm, rel_dist=rel))
    return rows, {"esm": s_esm, "dsm": s_dsm}, dsm_params


def gradient_variance_rows(gm, params, ts, n, key):
    """tr Cov of per-example parameter gradients of the DSM-trained network, under ESM and DSM, at each t."""
    graphdef, state = params
    true = gm.score_fn(P)
    rows = []
    for t in ts:
        k_data, k_eps = jax.random.split(jax.random.fold_in(key, int(1e4 * t)))
        x0 = gm.sample(k_data, n)
        eps = jax.random.normal(k_eps, x0.shape)
        tt = jnp.full((n,), t)
        x_t = P.marginal(x0, tt, eps)
        g_esm = jax.vmap(jax.grad(lambda st, x, t1: D.esm_loss(_score_of(graphdef, st), true, x[None], t1[None])[0]),
                         in_axes=(None, 0, 0))(state, x_t, tt)
        g_dsm = jax.vmap(jax.grad(lambda st, a, e, t1: D.dsm_loss(_score_of(graphdef, st), P, a[None], t1[None],
                                                                    e[None])[0]),
                         in_axes=(None, 0, 0, 0))(state, x0, eps, tt)
        tv = lambda g: float(sum(jnp.sum(jnp.var(v, 0)) for v in jax.tree_util.tree_leaves(g)))  # noqa: E731
        ve, vd = tv(g_esm), tv(g_dsm)
        rows.append(dict(method="grad_variance", model="trained-dsm", setting=f"oracle-2d t={t}", t=t,
                         gvar_esm=ve, gvar_dsm=vd, ratio=vd / ve))
    return rows


def likelihood_rows(gm, n, key, sig=0.02):
    edm = D.EDM()
    t_min = float(edm.time_of_sigma(sig))
    k_data, k_noise, key = jax.random.split(key, 3)
    x = gm.sample(k_data, n) + sig * jax.random.normal(k_noise, (n, gm.dim))
    exact = gm.log_prob(x, 1.0, sig)
    bpd_exact = float(jnp.mean(D.bits_per_dim(exact, gm.dim)))
    rows = []
    for name, kw in (("exact-trace", dict(exact_trace=True)), ("hutchinson-1", dict(num_probes=1)),
                     ("hutchinson-8", dict(num_probes=8))):
        t0 = time.time()
        ll = D.ode_log_likelihood(gm.denoise_fn(edm), edm, x, jax.random.fold_in(key, 2), t_min=t_min, **kw)
        rows.append(dict(method="likelihood", model=name, setting=f"oracle-2d sigma={sig:.2f}", n=n,
                         bpd=float(jnp.mean(D.bits_per_dim(ll, gm.dim))), bpd_exact=bpd_exact,
                         abs_err_nats=float(jnp.mean(jnp.abs(ll - exact))),
                         mean_err_nats=float(jnp.mean(ll - exact)), time_ms=1000 * (time.time() - t0)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="experiments/results")
    args = ap.parse_args(argv)
    prepare_out(args.out)
    t0 = time.time()
    gm = D.oracle_2d()
    key = jax.random.key(0)
    steps = 300 if args.quick else 6000
    ts = [0.01, 0.05, 0.2, 0.5]
    rows_min, trained, dsm_params = minimiser_rows(gm, ts, steps, 20000, jax.random.fold_in(key, 1))
    rows_id = identity_rows(gm, ts, 50_000 if args.quick else 200_000, trained, jax.random.fold_in(key, 2))
    rows_gv = gradient_variance_rows(gm, dsm_params, [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
                                     1024 if args.quick else 4096, jax.random.fold_in(key, 3))
    rows_ll = likelihood_rows(gm, 64 if args.quick else 256, jax.random.fold_in(key, 4))
    rows = rows_id + rows_min + rows_gv + rows_ll
    write_json(os.path.join(args.out, "score_matching.json"), rows)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot([r["t"] for r in rows_gv], [r["ratio"] for r in rows_gv], marker="o")
    axes[0].set(xscale="log", yscale="log", xlabel="t", ylabel="tr Var(grad DSM) / tr Var(grad ESM)",
                title="per-example gradient variance (DSM-trained MLP)")
    for t in ts:
        rs = [r for r in rows_id if r["t"] == t]
        axes[1].errorbar(range(len(rs)), [r["esm_minus_dsm"] - r["constant"] for r in rs],
                         yerr=[2 * r["se"] for r in rs], marker="o", ls="", label=f"t={t}")
    names = [r["model"] for r in rows_id if r["t"] == ts[0]]
    axes[1].set_xticks(range(len(names)), names, rotation=30, fontsize=7, ha="right")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set(ylabel="(ESM - DSM) - constant  (±2 se)", title="ESM - DSM is model independent")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, os.path.join(args.out, "score_matching.png"), dpi=120)
    plt.close(fig)

    print(_table(rows_id, ["method", "model", "setting", "esm", "dsm", "esm_minus_dsm", "se", "constant"]))
    print()
    print(_table(rows_min, ["method", "model", "setting", "steps", "esm", "rel_esm", "rel_dist"]))
    print()
    print(_table(rows_gv, ["method", "model", "setting", "gvar_esm", "gvar_dsm", "ratio"]))
    print()
    print(_table(rows_ll, ["method", "model", "setting", "n", "bpd", "bpd_exact", "abs_err_nats", "mean_err_nats",
                           "time_ms"]))
    print(f"\n(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
