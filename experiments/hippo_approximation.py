"""Online function approximation with HiPPO-LegS and HiPPO-LegT (seed 003's own experiments).

    python -m experiments.hippo_approximation [--quick] [--out DIR]

Signals on t in [0, 1], sampled at L points t_k = k / L (seeded): 'smooth' (five random sinusoids,
1-6 cycles), 'noisy' (smooth + N(0, 0.2^2) per sample; the error is measured against the clean
signal, so the projection's smoothing counts) and 'piecewise' (piecewise constant, 6 jumps).
The state is run online in NumPy float64 with the input held at the newest sample, and at t = 1:

* LegS (scale-invariant recurrence, `jaxgen.ssm.legs_step`) reconstructs the whole history
  u(s), s in [0, 1], from c via u(x t) ≈ Σ c_n g_n(x);
* LegT (window theta = 0.25, LTI, `jaxgen.ssm.discretize` with step 1/L) reconstructs the window
  u(s), s in [0.75, 1].

Measured: the relative RMS error of the reconstruction at the sample points (`rel_error`) against
N and the discretisation method (forward Euler, backward Euler, bilinear, ZOH); LegT's window error
at several times (it tracks the sliding window); and the error against the sampling rate when the
same continuous signal is sampled at L in {250 ... 8000}: LegS has no timescale and needs no change,
LegT is run once with the step it was tuned for (1/2000) and once with the true 1/L.
Figures: hippo_approximation_error_vs_N.png, hippo_approximation_reconstruction.png,
hippo_approximation_sampling_rate.png.
"""
from __future__ import annotations

import argparse
import os
import time

# Thousands of small (N <= 129) LAPACK calls in a loop: BLAS threads only add contention.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxgen.ssm import discretize, hippo, legs_step  # noqa: E402
from experiments._report import prepare_out, save_figure, write_json  # noqa: E402

METHODS = ("forward_euler", "backward_euler", "bilinear", "zoh")
SIGNALS = ("smooth", "noisy", "piecewise")
THETA = 0.25
DIVERGED = 1e6  # errors above this (or non-finite) are reported as diverged and capped here


def make_signals(seed: int = 0):
    """Continuous clean signals as callables of t (noise is added per sample in `sample`)."""
    rng = np.random.default_rng(seed)
    a, f, ph = rng.normal(size=5), rng.uniform(1, 6, 5), rng.uniform(0, 2 * np.pi, 5)
    smooth = lambda t: np.sum(a[:, None] * np.sin(2 * np.pi * f[:, None] * np.atleast_1d(t) + ph[:, None]), 0) / 1.5  # noqa: E731
    jumps, levels = np.sort(rng.uniform(0.05, 0.95, 6)), rng.normal(size=7)
    piecewise = lambda t: levels[np.searchsorted(jumps, np.atleast_1d(t))]  # noqa: E731
    return {"smooth": smooth, "noisy": smooth, "piecewise": piecewise}


def sample(signals, L: int, seed: int = 1):
    """(observed (S, L), clean (S, L)) at t_k = k / L, k = 1..L."""
    t = np.arange(1, L + 1) / L
    clean = np.stack([signals[s](t) for s in SIGNALS])
    obs = clean.copy()
    obs[SIGNALS.index("noisy")] += 0.2 * np.random.default_rng(seed).normal(size=L)
    return obs, clean


def run_legs(N, method, u):
    """LegS states at the last sample for inputs u (S, L): c_k = Ab_k c_{k-1} + Bb_k u_k."""
    A, B = hippo.legs(N)
    c = np.zeros((N, u.shape[0]))
    with np.errstate(all="ignore"):
        for k in range(1, u.shape[1] + 1):
            Ab, Bb = legs_step(A, B, k, method)
            c = Ab @ c + np.outer(Bb, u[:, k - 1])
    return c.T


def run_legt(N, method, u, step, theta=THETA, keep_at=()):
    """LegT states (S, N) at the last sample (and at the sample indices in keep_at)."""
    A, B = hippo.legt(N, theta)
    Ab, Bb = discretize(A, B, step, method)
    c = np.zeros((N, u.shape[0]))
    kept = {}
    with np.errstate(all="ignore"):
        for k in range(u.shape[1]):
            c = Ab @ c + np.outer(Bb, u[:, k])
            if k + 1 in keep_at:
                kept[k + 1] = c.T.copy()
    return c.T, kept


def rel_error(rec, ref):
    with np.errstate(all="ignore"):
        e = np.sqrt(np.mean((rec - ref) ** 2, -1) / np.mean(ref**2, -1))
    return np.where(np.isfinite(e) & (e < DIVERGED), e, DIVERGED)


def legs_history_error(c, clean):
    L = clean.shape[1]
    return rel_error(hippo.reconstruct("legs", c, np.arange(1, L + 1) / L), clean)


def legt_window_error(c, clean, k_end, L, theta=THETA):
    """Window (t_end - theta, t_end] at the true sample times; x = (s - t_end + theta) / theta."""
    t = np.arange(1, L + 1) / L
    t_end = k_end / L
    idx = np.nonzero((t > t_end - theta + 1e-12) & (t <= t_end + 1e-12))[0]
    x = (t[idx] - t_end + theta) / theta
    return rel_error(hippo.reconstruct("legt", c, x), clean[:, idx])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller grid (< 5 min on 2 CPU cores)")
    p.add_argument("--out", default="experiments/results")
    args = p.parse_args(argv)
    prepare_out(args.out)
    t_start = time.time()

    L = 1000 if args.quick else 2000
    Ns = (4, 16, 64) if args.quick else (4, 8, 16, 32, 64, 128)
    rates = (250, 1000, 4000) if args.quick else (250, 500, 1000, 2000, 4000, 8000)
    tuned_L = L
    signals = make_signals()
    obs, clean = sample(signals, L)
    rows = []

    # 1. error vs N and vs discretisation method
    for N in Ns:
        for method in METHODS:
            e_s = legs_history_error(run_legs(N, method, obs), clean)
            c_t, _ = run_legt(N, method, obs, 1.0 / L)
            e_t = legt_window_error(c_t, clean, L, L)
            for measure, errs in (("legs", e_s), ("legt", e_t)):
                for s, e in zip(SIGNALS, errs):
                    rows.append(dict(experiment="error_vs_N", method=method, measure=measure, signal=s,
                                     setting=f"{measure}/{s}", N=N, L=L, rel_error=float(e),
                                     diverged=bool(e >= DIVERGED)))
        print(f"  N={N} done ({time.time() - t_start:.0f}s)", flush=True)

    # 2. LegT tracks the sliding window: window error at several times (N = 32 or 64, bilinear)
    N_track = 32 if 32 in Ns else 16
    ks = [int(L * f) for f in (0.4, 0.6, 0.8, 1.0)]
    _, kept = run_legt(N_track, "bilinear", obs, 1.0 / L, keep_at=ks)
    for k in ks:
        for s, e in zip(SIGNALS, legt_window_error(kept[k], clean, k, L)):
            rows.append(dict(experiment="tracking", method="bilinear", measure="legt", signal=s,
                             setting=f"legt/{s}/t={k / L:.1f}", N=N_track, L=L, t=k / L, rel_error=float(e),
                             diverged=bool(e >= DIVERGED)))

    # 3. sampling rate: the same continuous signal sampled at L' (smooth signal, N = 32, bilinear)
    N_rate = N_track
    rate_rows = []
    for Lr in rates:
        o, cl = sample(signals, Lr)
        o, cl = o[:1], cl[:1]  # smooth
        e_s = legs_history_error(run_legs(N_rate, "bilinear", o), cl)[0]
        c_fixed, _ = run_legt(N_rate, "bilinear", o, 1.0 / tuned_L)
        c_true, _ = run_legt(N_rate, "bilinear", o, 1.0 / Lr)
        e_fixed = legt_window_error(c_fixed, cl, Lr, Lr)[0]
        e_true = legt_window_error(c_true, cl, Lr, Lr)[0]
        for method_name, e in (("legs", e_s), (f"legt_step_1/{tuned_L}", e_fixed), ("legt_step_1/L", e_true)):
            r = dict(experiment="sampling_rate", method=method_name, measure=method_name.split("_")[0], signal="smooth",
                     setting=f"L={Lr}", N=N_rate, L=Lr, rel_error=float(e), diverged=bool(e >= DIVERGED))
            rows.append(r)
            rate_rows.append(r)

    write_json(os.path.join(args.out, "hippo_approximation.json"), rows)

    # tables
    print(f"\n### Reconstruction error vs N (relative RMS, L = {L}, LegT window theta = {THETA})\n")
    print("| measure | signal | N | " + " | ".join(METHODS) + " |")
    print("|---|---|---|" + "---|" * len(METHODS))
    for measure in ("legs", "legt"):
        for s in SIGNALS:
            for N in Ns:
                vals = [next(r for r in rows if r["experiment"] == "error_vs_N" and r["measure"] == measure
                             and r["signal"] == s and r["N"] == N and r["method"] == m) for m in METHODS]
                cells = ["diverged" if v["diverged"] else f"{v['rel_error']:.2e}" for v in vals]
                print(f"| {measure} | {s} | {N} | " + " | ".join(cells) + " |")
    print(f"\n### LegT (N = {N_track}, bilinear) tracks the sliding window\n")
    print("| t | " + " | ".join(SIGNALS) + " |")
    print("|---|" + "---|" * len(SIGNALS))
    for k in ks:
        vals = [next(r for r in rows if r["experiment"] == "tracking" and r["t"] == k / L and r["signal"] == s) for s in SIGNALS]
        print(f"| {k / L:.1f} | " + " | ".join(f"{v['rel_error']:.2e}" for v in vals) + " |")
    print(f"\n### Sampling rate (smooth signal, N = {N_rate}, bilinear)\n")
    names = ("legs", f"legt_step_1/{tuned_L}", "legt_step_1/L")
    print("| L | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for Lr in rates:
        vals = [next(r for r in rate_rows if r["L"] == Lr and r["method"] == n) for n in names]
        print(f"| {Lr} | " + " | ".join(f"{v['rel_error']:.2e}" for v in vals) + " |")

    # figures
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    for i, measure in enumerate(("legs", "legt")):
        for j, s in enumerate(SIGNALS):
            ax = axes[i, j]
            for m in METHODS:
                e = [next(r["rel_error"] for r in rows if r["experiment"] == "error_vs_N" and r["measure"] == measure
                          and r["signal"] == s and r["N"] == N and r["method"] == m) for N in Ns]
                ax.loglog(Ns, e, "o-", label=m)
            ax.axhline(DIVERGED, color="k", lw=0.5, ls=":")
            ax.set_title(f"{'LegS history' if measure == 'legs' else 'LegT window'} / {s}")
            ax.set_xticks(Ns, [str(n) for n in Ns])
            ax.minorticks_off()
            ax.set_xlabel("N")
            ax.set_ylabel("relative RMS error")
            ax.set_ylim(1e-4, 3e6)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Online reconstruction error at t = 1 (L = {L} samples; diverged capped at {DIVERGED:g})")
    fig.tight_layout()
    save_figure(fig, os.path.join(args.out, "hippo_approximation_error_vs_N.png"), dpi=110)
    plt.close(fig)

    N_show = 32 if 32 in Ns else 16
    t = np.arange(1, L + 1) / L
    fig, axes = plt.subplots(2, 3, figsize=(13, 6))
    c_s = run_legs(N_show, "bilinear", obs)
    _, kept = run_legt(N_show, "bilinear", obs, 1.0 / L, keep_at=ks)
    for j, s in enumerate(SIGNALS):
        ax = axes[0, j]
        ax.plot(t, obs[j], color="0.75", lw=0.6, label="observed")
        ax.plot(t, clean[j], "k", lw=1, label="signal")
        ax.plot(t, hippo.reconstruct("legs", c_s[j], t), "C3", lw=1.2, label=f"LegS N={N_show} at t=1")
        ax.set_title(f"LegS: whole history / {s}")
        ax = axes[1, j]
        ax.plot(t, clean[j], "k", lw=1)
        for k in ks:
            x = np.linspace(0, 1, 100)
            ax.plot(k / L - THETA + x * THETA, hippo.reconstruct("legt", kept[k][j], x), lw=1.5, label=f"LegT window at t={k / L:.1f}")
        ax.set_title(f"LegT (theta={THETA}): sliding window / {s}")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, os.path.join(args.out, "hippo_approximation_reconstruction.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        ax.loglog(rates, [next(r["rel_error"] for r in rate_rows if r["L"] == Lr and r["method"] == n) for Lr in rates], "o-", label=n)
    ax.set_xticks(rates, [str(r) for r in rates])
    ax.minorticks_off()
    ax.set_xlabel("samples on [0, 1]")
    ax.set_ylabel("relative RMS error")
    ax.set_title(f"Sampling rate (smooth, N={N_rate}, bilinear)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, os.path.join(args.out, "hippo_approximation_sampling_rate.png"), dpi=110)
    plt.close(fig)
    print(f"\nwrote {args.out}/hippo_approximation.json and 3 figures in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
