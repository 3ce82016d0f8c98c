"""Rectified flow, reflow and one-step distillation on the Gaussian-mixture oracles (Liu et al. 2023).

    python -m experiments.reflow [--quick] [--out DIR] [--settings oracle-2d,oracle-16d,digits] [--digits-workdir DIR]

For each setting (oracle-2d: the 9-component 2-D mixture; oracle-16d: 6 components in 16-D):
- 1-RF is the EXACT rectified-flow field of the data, v(x, t) = E[x1 - x0 | x_t = x] from the oracle's denoiser
  (t = 0 data, t = 1 noise; `jaxgen.diffusion.interpolants.velocity_from_denoiser` on the straight path).
- 2-RF: a time-conditioned MLP trained with the velocity loss on (noise, sample) pairs of the 1-RF's ODE
  (adaptive RK45, `reflow_pairs`); 3-RF: the same on pairs of the 2-RF's ODE, initialised from the 2-RF.
- 2-RF + distill: the 2-RF's one-step generator x1 - v(x1, 1) fine-tuned with the l2 distillation loss on
  the 2-RF's pairs (the paper also uses LPIPS on images; not available offline).
Each is sampled by Euler with 1, 2, 4, 8 steps and by adaptive RK45 (its NFE recorded) from fresh noise:
`sw2` is the sliced W2 to fresh data (256 directions), `sw2_floor` the same between two data samples,
`logp` the mean log-density of the samples under the true mixture (`logp_floor`: of fresh data), and
`straightness` the paper's int_0^1 E||(Z_1 - Z_0) - v(Z_t, t)||^2 dt along each model's own ODE paths.
Expected (paper): straightness falls from 1-RF to 2-RF to 3-RF, and the 1-step sw2 improves from 1-RF to
2-RF to 2-RF + distill. Figures: reflow_trajectories.png (2-D ODE paths), reflow_samples.png (1-step samples).

Measured (--quick: 10k pairs, 3000 Adam steps per model, 2000 evaluation samples; 4.8 CPU-minutes). sw2 / logp
at 1 Euler step and with adaptive RK45, and the straightness S:
    oracle-2d  (sw2 floor 0.033, logp of data 0.004):
        1-RF (exact)    1 step 0.447 / 0.79 (every sample at the data mean)   RK45 (55 NFE) 0.024 / -0.03   S 0.434
        2-RF            1 step 0.026 / -0.55                                 RK45 (43 NFE) 0.024 / -0.38   S 0.00073
        3-RF            1 step 0.025 / -0.53                                 RK45 (37 NFE) 0.024 / -0.42   S 0.00023
        2-RF + distill  1 step 0.025 / -0.54
    oracle-16d (sw2 floor 0.020, logp of data 4.22):
        1-RF (exact)    1 step 0.395 / -4.96                                 RK45 (43 NFE) 0.032 / 4.60    S 2.24
        2-RF            1 step 0.036 / 1.07                                  RK45 (43 NFE) 0.037 / 3.36    S 0.019
        3-RF            1 step 0.039 / 1.59                                  RK45 (37 NFE) 0.037 / 2.96    S 0.0075
        2-RF + distill  1 step 0.038 / 1.82
Reflow straightens as the paper says (S falls 3 orders of magnitude from 1-RF to 3-RF in 2-D, 300x in 16-D) and
one step of the 2-RF is as good in sw2 as its adaptive solve, a 17x (2-D) / 11x (16-D) gain over one step of
the 1-RF. sw2 is at its sample floor in 2-D and blind to the fine cluster structure; the mode-sensitive logp
shows what remains: the small MLP's fitting error (2-RF's RK45 logp -0.38 vs the exact 1-RF's -0.03), which
reflow does not remove. Distillation and 3-RF raise the 1-step logp in 16-D (1.07 -> 1.82 / 1.59) at a slightly
higher sw2 (0.036 -> 0.038 / 0.039); in 2-D the three 1-step results are within noise of each other.

Digits (--settings digits, the configs' full budgets; fd at Euler 1 / 2 / 4 / 8 steps, RK45, straightness S):
    1-RF            169.5 / 13.08 / 5.32 / 4.17   RK45 3.54   S 8.83
    2-RF            4.56 / 4.32 / 4.16 / 4.09     RK45 4.01   S 0.209
    2-RF + distill  4.79 at its one step (more Euler steps of a one-step generator only hurt: 6.02 / 6.62 / 6.89)
"""
from __future__ import annotations

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
from jaxgen import paths  # noqa: E402
from jaxgen.metrics import sliced_wasserstein  # noqa: E402
from jaxgen.nets import MLPDenoiser  # noqa: E402
from experiments._report import markdown_table, parse_setting_args, prepare_out, save_figure, write_rows  # noqa: E402

SETTINGS = {"oracle-2d": D.oracle_2d, "oracle-16d": D.oracle_16d}
NFES = (1, 2, 4, 8)


def _velocity(graphdef, state):
    m = nnx.merge(graphdef, state)
    return lambda x, t: m(x, t)


def _fit(graphdef, state, pairs, steps, key, loss="velocity", batch=512, lr=2e-3):
    """Adam (cosine decay) on the velocity loss (t ~ U(0, 1)) or the one-step distillation loss, minibatches
    drawn uniformly from the pairs (x1 [N, D], x0 [N, D])."""
    x1_all, x0_all = pairs
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps))
    opt_state = opt.init(state)

    def loss_fn(state, k):
        k_idx, k_t = jax.random.split(k)
        idx = jax.random.randint(k_idx, (batch,), 0, x1_all.shape[0])
        x1, x0 = x1_all[idx], x0_all[idx]
        v = _velocity(graphdef, state)
        if loss == "distill":
            return jnp.mean(D.distill_loss(D.one_step_generator(v), x1, x0))
        return jnp.mean(D.rf_velocity_loss(v, x0, x1, jax.random.uniform(k_t, (batch,))))

    @jax.jit
    def step(state, opt_state, k):
        val, g = jax.value_and_grad(loss_fn)(state, k)
        upd, opt_state = opt.update(g, opt_state, state)
        return optax.apply_updates(state, upd), opt_state, val

    for i in range(steps):
        state, opt_state, val = step(state, opt_state, jax.random.fold_in(key, i))
    return state, float(val)


def _pairs(v, key, n, dim, batch=5000):
    solve = jax.jit(lambda z: D.flow_solve_adaptive(v, z, 1.0, 0.0, rtol=1e-4, atol=1e-4))
    out = list(D.reflow_pairs(solve, key, n, batch, (dim,)))
    return jnp.concatenate([b[1] for b in out]), jnp.concatenate([b[2] for b in out])


def _evaluate(method, setting, gm, v, z, fresh, floor, nfes, adaptive=True, straight=True):
    """Rows per solver: sw2 to fresh data and `logp`, the mean log-density of the samples under the true
    mixture (mode-sensitive, unlike sw2: a blob over the clusters has a much lower logp than the data's own
    `logp_floor`)."""
    rows = []
    key = jax.random.key(14)
    logp_floor = float(jnp.mean(gm.log_prob(fresh)))

    def quality(x):
        return dict(sw2=float(sliced_wasserstein(x, fresh, key)), sw2_floor=floor,
                    logp=float(jnp.mean(gm.log_prob(x))), logp_floor=logp_floor)

    for n in nfes:
        x = jax.jit(lambda y: D.flow_solve(v, y, D.uniform_grid(n), "euler"))(z)
        rows.append(dict(method=method, setting=setting, solver="euler", nfe=n) | quality(x))
    if adaptive:
        x, nfe = jax.jit(lambda y: D.flow_solve_adaptive(v, y, 1.0, 0.0, rtol=1e-4, atol=1e-4, return_nfe=True))(z)
        rows.append(dict(method=method, setting=setting, solver="rk45", nfe=int(nfe)) | quality(x))
    if straight:
        s = float(jnp.mean(jax.jit(lambda y: D.straightness(v, y, num_steps=32))(z[:1000])))
        for r in rows:
            r["straightness"] = s
    return rows


def run_setting(setting, quick, key):
    gm = SETTINGS[setting]()
    dim = gm.dim
    n_pairs, steps, n_eval = (10_000, 3000, 2000) if quick else (50_000, 10_000, 5000)
    hidden = 128 if dim == 2 else 256
    rf = D.RectifiedFlow()
    v1 = D.velocity_from_denoiser(gm.denoise_fn(rf), rf)
    z = jax.random.normal(jax.random.fold_in(key, 1), (n_eval, dim))
    fresh = gm.sample(jax.random.fold_in(key, 2), n_eval)
    floor = float(sliced_wasserstein(gm.sample(jax.random.fold_in(key, 3), n_eval), fresh, jax.random.key(14)))
    rows = _evaluate("1-RF (exact)", setting, gm, v1, z, fresh, floor, NFES)
    models = {"1-RF (exact)": v1}

    graphdef, state0 = nnx.split(MLPDenoiser(dim, hidden=hidden, depth=3, rngs=nnx.Rngs(0)))
    pairs1 = _pairs(v1, jax.random.fold_in(key, 10), n_pairs, dim)
    state2, loss2 = _fit(graphdef, state0, pairs1, steps, jax.random.fold_in(key, 11))
    v2 = _velocity(graphdef, state2)
    rows += [r | {"train_loss": loss2} for r in _evaluate("2-RF", setting, gm, v2, z, fresh, floor, NFES)]
    models["2-RF"] = v2

    pairs2 = _pairs(v2, jax.random.fold_in(key, 20), n_pairs, dim)
    state3, loss3 = _fit(graphdef, state2, pairs2, steps, jax.random.fold_in(key, 21))
    v3 = _velocity(graphdef, state3)
    rows += [r | {"train_loss": loss3} for r in _evaluate("3-RF", setting, gm, v3, z, fresh, floor, NFES)]
    models["3-RF"] = v3

    state_d, loss_d = _fit(graphdef, state2, pairs2, steps // 2, jax.random.fold_in(key, 31), loss="distill", lr=3e-4)
    vd = _velocity(graphdef, state_d)
    rows += [r | {"train_loss": loss_d} for r in _evaluate("2-RF + distill", setting, gm, vd, z, fresh, floor, (1,),
                                                           adaptive=False, straight=False)]
    models["2-RF + distill"] = vd
    return rows, models, z, fresh


def _figures(models, z, fresh, out):
    names = ["1-RF (exact)", "2-RF", "3-RF"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    zz = z[:150]
    for ax, name in zip(axes, names):
        _, traj = jax.jit(lambda y: D.flow_solve(models[name], y, D.uniform_grid(64), "heun",
                                                 return_trajectory=True))(zz)
        traj = np.asarray(traj)
        ax.plot(traj[:, :, 0], traj[:, :, 1], lw=0.5, color="tab:blue", alpha=0.5)
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=3, color="k")
        ax.set_title(f"{name}: ODE paths (t = 1 -> 0)")
        ax.set_xlim(-3, 3), ax.set_ylim(-3, 3)
    save_figure(fig, os.path.join(out, "reflow_trajectories.png"), dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), sharex=True, sharey=True)
    axes[0].scatter(*np.asarray(fresh[:2000]).T, s=1)
    axes[0].set_title("data")
    for ax, name in zip(axes[1:], list(models)):
        x = np.asarray(D.one_step_generator(models[name])(z[:2000]))
        ax.scatter(x[:, 0], x[:, 1], s=1)
        ax.set_title(f"{name}, 1 step")
    axes[0].set_xlim(-1.5, 1.5), axes[0].set_ylim(-1.5, 1.5)
    save_figure(fig, os.path.join(out, "reflow_samples.png"), dpi=110)
    plt.close(fig)


def run_digits(workdir: str, quick: bool, log=print) -> list[dict]:
    """The digits setting through the diffusion task, as a user runs it (configs/rf_digits.py): the 1-RF trained on
    the data, the 2-RF on its RK45 pairs (`:reflow`) and the one-step generator distilled from the 2-RF's pairs
    (`:distill`), each in a workdir under `workdir` (trained only where it holds no checkpoint; --quick: 500 steps
    each). Every model is then evaluated on the finished checkpoint with Euler at 1, 2, 4, 8 steps and RK45: fd to
    the test split in the digits classifier's features (297 samples) and the straightness (64 Heun steps)."""
    from jaxgen import config as config_lib
    from jaxgen.tasks import build_and_train

    spec = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "rf_digits.py")
    stages = [("1-RF", "rf_digits", "", None), ("2-RF", "rf_digits_2rf", ":reflow", "rf_digits"),
              ("2-RF + distill", "rf_digits_distill", ":distill", "rf_digits_2rf")]  # the config's documented names
    rows = []
    for method, name, variant, teacher in stages:
        def config(**evals):
            c = config_lib.load_config(spec + variant)
            c.eval.untrained_baseline = False
            if quick:
                c.train.num_steps = 500
            if teacher:
                c.reflow.teacher = paths.join(workdir, teacher)
            c.eval.update(evals)
            return c

        wd = paths.join(workdir, name)
        t0 = time.time()
        build_and_train(config(), wd)  # trains only what the workdir lacks
        log(f"digits {method}: trained in {wd} ({time.time() - t0:.0f} s)")
        settings = [("euler", k, dict(sampler="flow_euler", sample_steps=k)) for k in NFES]
        if method != "2-RF + distill":
            settings.append(("rk45", None, dict(sampler="rk45", sample_steps=0)))
        for solver, nfe, evals in settings:
            out = build_and_train(config(**evals), wd)
            rows.append(dict(method=method, setting="digits", solver=solver, nfe=nfe, fd=out["eval/fd"],
                             straightness=out.get("eval/straightness")))
            log(f"  digits {method:15s} {solver} {nfe}: fd {out['eval/fd']:.3f}")
    return rows


def main(argv=None):
    args = parse_setting_args(__doc__.splitlines()[0], (*SETTINGS, "digits"), "runs/reflow_digits", argv)
    settings = args.settings
    prepare_out(args.out)
    t0 = time.time()
    rows = []
    for setting in settings:
        if setting == "digits":
            rows += [row | {"quick": args.quick} for row in run_digits(args.digits_workdir, args.quick)]
            continue
        r, models, z, fresh = run_setting(setting, args.quick, jax.random.key(0))
        rows += [row | {"quick": args.quick} for row in r]
        if setting == "oracle-2d":
            _figures(models, z, fresh, args.out)
        print(f"{setting} done ({time.time() - t0:.0f} s)", flush=True)
    rows = write_rows(os.path.join(args.out, "reflow.json"), rows, settings)
    print(markdown_table(rows, ["method", "setting", "solver", "nfe", "sw2", "sw2_floor", "logp", "logp_floor",
                                "fd", "straightness", "train_loss"]))
    print(f"\n(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
