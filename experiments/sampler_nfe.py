"""Sample quality against the number of function evaluations (NFE) for every sampler, on the oracle and digits.

    python -m experiments.sampler_nfe [--quick] [--out DIR] [--digits WORKDIR] [--settings digits]

Settings: `oracle-2d` (9-component 2-D mixture) and `oracle-16d` (6-component 16-D mixture), both with the
exact denoiser (`jaxgen.diffusion.GaussianMixture`), so every difference is the sampler's. All samplers run on
the DDPM linear schedule (T = 1000): the discrete-time family with eps_fn at steps i / T, the ODE solvers on its
continuous view in EDM coordinates (sigma / alpha from 80 down to 0.002, rho = 7 grid; EDM/AMED's setting).

Samplers and NFE accounting:
    euler                 n = NFE intervals
    heun, dpm2, amed      n = ceil(NFE / 2) intervals; odd NFE uses the analytical first step (AFS, -1 NFE)
    amed                  the (r, c) predictor trained per setting and NFE against a Heun teacher (8 substeps)
    ddim (eta = 0), ddpm (beta_tilde)   K = NFE steps, uniform skipping
    pc                    K = NFE / 2 levels, one Langevin corrector each (even NFE only)
    adaptive              diffrax Tsit5 (rtol = atol = 1e-5; 1e-3 for digits), its own NFE
Measured against fresh data samples: `sw2` (sliced W2, 256 directions) and `mmd` (RBF, unbiased);
for the ODE solvers also `ode_rmse`, the RMS distance to the adaptive reference solution from the same noise.
`data` rows give the noise floor (fresh samples against fresh samples).

Goal (issue 3): AMED at about 5 NFE beats Heun and DPM-Solver-2 at the same NFE.

Setting `digits` (with --digits WORKDIR): the quickstart UNet (configs/quickstart.py) trained in WORKDIR,
1000 samples against the 297 test digits, with `fd` (the Fréchet distance in the digits classifier's
features, the task's eval/fd) besides sw2 / mmd on pixels; the `data` row scores 1000 training digits.
The ODE grid ends at the schedule's first step (sigma / alpha = 0.01) since the network saw no smaller
noise; AMED's predictor trains 200 steps at batch 64 on 512 teacher solves, up to 10 NFE.
Any other model: `evaluate_model(setting, eps_fn, schedule, data, key, nfes, ...)` returns the same rows.
Figure: sampler_nfe.png (sw2, or fd for digits, vs NFE per setting).

Measured (results/sampler_nfe.json; the digits setting 31 min on 2 shared cores), at 5 NFE: AMED sw2 0.196 / 0.022
on oracle-2d / -16d vs DPM-Solver-2 0.409 / 0.366 and Heun 1.24 / 1.25; on digits AMED fd 5.13 vs DDIM 6.12,
Heun 8.56, Euler 9.31, DPM-Solver-2 16.6 (data floor 2.71). The goal holds on both.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxgen import diffusion as D  # noqa: E402
from jaxgen.diffusion import amed, sampling  # noqa: E402
from jaxgen.diffusion.objectives import ModelFns  # noqa: E402
from experiments._report import digits_model, markdown_table as _table, prepare_out, sample_quality, save_figure  # noqa: E402
from experiments._report import write_rows  # noqa: E402

ODE = ("euler", "heun", "dpm2", "amed")


def evaluate_model(setting: str, eps_fn, schedule, data, key, nfes, denoise_fn=None, n_samples: int = 4000,
                   sigma_min: float = 0.002, sigma_max: float = 80.0, amed_iters: int = 300, amed_max_nfe: int = 50,
                   amed_train: int = 2048, amed_batch: int = 256, ref_tol: float = 1e-5, fresh_data=None,
                   extra_metrics=None, log=print):
    """Rows for one model: eps_fn(x, t) on `schedule` (DiscreteVP), fresh `data` [N, ...] to compare with.

    denoise_fn: optional exact x0-prediction on the schedule's continuous view (defaults to the one
    derived from eps_fn). fresh_data: optional independent data sample for the `data` noise-floor row.
    extra_metrics: optional x -> {name: value} added to every row (e.g. the Fréchet distance for images).
    ref_tol: rtol = atol of the adaptive reference solve.
    Returns a list of flat row dicts.
    """

    def _quality(x, ref, key):
        return sample_quality(x, ref, key, extra_metrics)

    denoise_fn = denoise_fn or D.denoiser_from_eps(eps_fn, schedule)
    shape = (n_samples,) + tuple(data.shape[1:])
    rows = []
    kq, kx, kd = jax.random.split(key, 3)
    if fresh_data is not None:  # the noise floor: an independent data sample scored the same way
        rows.append(dict(method="data", setting=setting, nfe=0, **_quality(fresh_data[:n_samples], data, kq),
                         ode_rmse=None, time_ms=0.0))
    ts_cache = {}

    def grid(n):
        if n not in ts_cache:
            ts_cache[n] = D.time_grid(schedule, n, sigma_min=sigma_min, sigma_max=sigma_max)
        return ts_cache[n]

    t_ref = grid(1)
    x_T = float(schedule.sigma(jnp.asarray(t_ref[0]))) * jax.random.normal(kx, shape)
    t0 = time.time()
    ref, ref_nfe = D.reference_ode_solve(denoise_fn, schedule, x_T, t_ref[0], t_ref[-1], rtol=ref_tol, atol=ref_tol,
                                         return_nfe=True)
    ref = jax.block_until_ready(ref)
    rows.append(dict(method="adaptive", setting=setting, nfe=int(ref_nfe), **_quality(ref, data, kq), ode_rmse=0.0,
                     time_ms=1000 * (time.time() - t0)))

    def rmse(x):
        return float(jnp.sqrt(jnp.mean(jnp.sum(((x - ref) ** 2).reshape(x.shape[0], -1), -1))))

    fns = ModelFns(eps_fn, denoise_fn, None)
    for nfe in nfes:
        for method in ("euler", "heun", "dpm2", "amed", "ddim", "ddpm", "pc"):
            if method == "pc" and nfe % 2:
                continue
            t0 = time.time()
            extra = {}
            spec = sampling.SamplerSpec(method, nfe // 2 if method == "pc" else nfe, variance="beta_tilde",
                                        clip_x0=None)
            if method in ODE:
                n = nfe if method == "euler" else math.ceil(nfe / 2)
                afs = method != "euler" and nfe % 2 == 1
                ts = grid(n)
                rc_fn = None
                if method == "amed":
                    if nfe > amed_max_nfe or n < 1:
                        continue
                    prior = lambda k, m: float(schedule.sigma(jnp.asarray(ts[0]))) * jax.random.normal(  # noqa: E731
                        k, (m,) + shape[1:])
                    rc_fn, info = amed.fit_amed(denoise_fn, schedule, ts, prior, jax.random.fold_in(kd, nfe),
                                                afs=afs, num_train=amed_train, batch_size=amed_batch,
                                                num_iters=amed_iters)
                    extra = dict(amed_r=float(np.mean(info["r"])), amed_c=float(np.mean(info["c"])),
                                 train_s=time.time() - t0)
                    t0 = time.time()
                x = sampling.sample(fns, schedule, shape, None, spec, grid=(ts, afs), x_init=x_T, rc_fn=rc_fn)
                x = jax.block_until_ready(x)
                err = rmse(x)
            else:
                x = sampling.sample(fns, schedule, shape, jax.random.fold_in(kd, 1000 + nfe), spec)
                x = jax.block_until_ready(x)
                err = None
            row = dict(method=method, setting=setting, nfe=int(nfe), **_quality(x, data, kq), ode_rmse=err,
                       time_ms=1000 * (time.time() - t0), **extra)
            rows.append(row)
            log(f"  {setting:10s} {method:6s} nfe={nfe:3d} sw2={row['sw2']:.4f} mmd={row['mmd']:.5f}"
                + (f" ode_rmse={err:.4f}" if err is not None else ""))
    return rows


def _figure(rows, path):
    settings = sorted({r["setting"] for r in rows})
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        rs = [r for r in rows if r["setting"] == setting]
        metric = "fd" if "fd" in rs[0] else "sw2"
        for method in ("euler", "heun", "dpm2", "amed", "ddim", "ddpm", "pc"):
            pts = sorted((r["nfe"], r[metric]) for r in rs if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        for r in rs:
            if r["method"] == "data":
                ax.axhline(r[metric], color="k", ls=":", label="data floor")
            if r["method"] == "adaptive":
                ax.axhline(r[metric], color="gray", ls="--", label=f"adaptive ({r['nfe']} NFE)")
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=setting,
               ylabel="Fréchet distance (classifier features)" if metric == "fd" else "sliced W2 to data")
        ticks = sorted({r["nfe"] for r in rs if r["method"] not in ("data", "adaptive")})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="experiments/results")
    ap.add_argument("--digits", metavar="WORKDIR", help="also the digits rows, from the quickstart model trained in "
                    "WORKDIR (trained there first, ~3 min, if it holds no checkpoint)")
    ap.add_argument("--settings", default=None, help="comma-separated subset of oracle-2d,oracle-16d,digits to run; "
                    "the other settings' rows already in the results file are kept")
    args = ap.parse_args(argv)
    prepare_out(args.out)
    settings = (args.settings or "oracle-2d,oracle-16d" + (",digits" if args.digits else "")).split(",")
    nfes = [5, 10] if args.quick else [3, 4, 5, 6, 8, 10, 15, 20, 30, 50]
    n = 2000 if args.quick else 5000
    schedule = D.make_schedule("linear", 1000)
    rows = []
    t0 = time.time()
    for setting, gm in (("oracle-2d", D.oracle_2d()), ("oracle-16d", D.oracle_16d())):
        if setting not in settings:
            continue
        data = gm.sample(jax.random.key(123), 2 * n)
        rows += evaluate_model(setting, gm.eps_fn(schedule), schedule, data, jax.random.key(7), nfes,
                               denoise_fn=gm.denoise_fn(schedule), n_samples=n,
                               fresh_data=gm.sample(jax.random.key(5), n),
                               amed_iters=120 if args.quick else 400, amed_max_nfe=10 if args.quick else 20)
    if "digits" in settings:
        if not args.digits:
            ap.error("the digits setting needs --digits WORKDIR")
        m = digits_model(args.digits)
        sigma_min = float(m["schedule"].sigma_ratio(m["schedule"].step_to_time(jnp.asarray(1))))
        rows += evaluate_model("digits", m["eps_fn"], m["schedule"], m["test"], jax.random.key(7), nfes,
                               n_samples=500 if args.quick else 1000, sigma_min=sigma_min,
                               fresh_data=m["train"], extra_metrics=m["fd"], amed_iters=60 if args.quick else 200,
                               amed_max_nfe=10, amed_train=512, amed_batch=64, ref_tol=1e-3)
    rows = write_rows(os.path.join(args.out, "sampler_nfe.json"), rows, settings)
    _figure(rows, os.path.join(args.out, "sampler_nfe.png"))
    print(_table(rows, ["method", "setting", "nfe", "sw2", "mmd", "fd", "ode_rmse", "amed_r", "amed_c", "time_ms"]))
    print(f"\n(total {time.time() - t0:.0f} s)")
    # the goal: AMED beats Heun and DPM-Solver-2 at 5 NFE on the oracle
    for setting in ("oracle-2d", "oracle-16d"):
        at5 = {r["method"]: r for r in rows if r["setting"] == setting and r["nfe"] == 5}
        if {"amed", "heun", "dpm2"} <= at5.keys():
            print(f"{setting} @5 NFE ode_rmse: amed {at5['amed']['ode_rmse']:.4f}, heun {at5['heun']['ode_rmse']:.4f}, "
                  f"dpm2 {at5['dpm2']['ode_rmse']:.4f}; sw2: amed {at5['amed']['sw2']:.4f}, "
                  f"heun {at5['heun']['sw2']:.4f}, dpm2 {at5['dpm2']['sw2']:.4f}")


if __name__ == "__main__":
    main()
