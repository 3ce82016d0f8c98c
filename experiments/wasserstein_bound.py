"""Kwon et al. (2022)'s Wasserstein bound, in closed form for Gaussian data and affine score models (seed 000).

    python -m experiments.wasserstein_bound [--quick] [--out DIR]

Data N(m0, S0); forward VP SDE with beta(t) = beta_min + t (beta_max - beta_min) on [0, 1]; the model's reverse
SDE with s(x, t) = A(t) x + b(t) from q_T = N(0, I). For each model: the exact W2(p_0, q_0) (`w2`) and the bound
int g^2 I(t) sqrt(E||grad log p_t - s||^2) dt + I(T) W2(p_T, q_T) (`bound`, split into `score_term` and
`prior_term`; `I_T` the Gronwall factor), and whether it holds (up to 1e-7, the
accuracy of the moment-ODE solve: W2 ~ 1e-9 when the model is exact).
Settings: `1d` (m0 = 0.5, s0 = 0.3) and `2d` (correlated 2-D Gaussian), each with beta_max = 20 (the usual VP
schedule) and beta_max = 2 (a weak schedule whose Lipschitz factor is small, so the bound is informative).
Models: the exact score (with the N(0, I) prior and with the exact prior p_T), the exact score scaled by
1.1 / 0.9, shifted by +0.1, and affine models trained by denoising score matching on n = 200 / 2000 / 20000
samples (least squares per t on 40 noise levels, interpolated) — the "trained" rows; `2d` has the trained ones.
Figure: wasserstein_bound.png (bound vs W2, log-log, with the diagonal).
"""
from __future__ import annotations

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxgen.diffusion import wasserstein as W  # noqa: E402
from experiments._report import prepare_out, save_figure, write_json, markdown_table as _table  # noqa: E402


def _models(m0, S0, beta_max, rng, ns):
    A, b = W.true_affine_score(m0, S0, beta_max=beta_max)
    mT, ST = W.vp_gaussian_marginal(m0, S0, 1.0, beta_max=beta_max)
    out = [("exact score, exact prior", A, b, dict(prior_mean=mT, prior_cov=ST)),
           ("exact score", A, b, {}),
           ("score x 1.1", lambda t: 1.1 * A(t), b, {}),
           ("score x 0.9", lambda t: 0.9 * A(t), b, {}),
           ("score + 0.1", A, lambda t: b(t) + 0.1, {})]
    for n in ns:
        x0 = rng.multivariate_normal(m0, S0, size=n)
        Af, bf = W.fit_affine_score_dsm(x0, np.linspace(0.0, 1.0, 41)[1:], rng, beta_max=beta_max)
        out.append((f"DSM-trained n={n}", Af, bf, {}))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="experiments/results")
    args = ap.parse_args(argv)
    prepare_out(args.out)
    t0 = time.time()
    rng = np.random.default_rng(0)
    points = 801 if args.quick else 4001
    settings = {"1d": (np.array([0.5]), np.array([[0.09]])),
                "2d": (np.array([0.5, -0.3]), np.array([[0.09, 0.03], [0.03, 0.04]]))}
    rows = []
    for name, (m0, S0) in settings.items():
        for beta_max in (20.0, 2.0):
            ns = [200, 2000] if args.quick else [200, 2000, 20000]
            for label, A_fn, b_fn, kw in _models(m0, S0, beta_max, rng, ns):
                r = W.wasserstein_bound_affine(m0, S0, A_fn, b_fn, beta_max=beta_max, num_points=points, **kw)
                rows.append(dict(method=label, setting=f"{name} beta_max={beta_max:g}", w2=r["w2"], bound=r["bound"],
                                 score_term=r["score_term"], prior_term=r["prior_term"], I_T=r["I_T"],
                                 ratio=r["bound"] / r["w2"] if r["w2"] > 0 else None,
                                 holds=bool(r["bound"] >= r["w2"] - 1e-7)))  # 1e-7: the moment-ODE tolerance
    write_json(os.path.join(args.out, "wasserstein_bound.json"), rows)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for setting in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == setting and r["w2"] > 1e-8]
        ax.scatter([r["w2"] for r in rs], [r["bound"] for r in rs], label=setting)
    lim = [1e-7, 1.0]
    ax.plot(lim, lim, "k--", lw=0.8, label="bound = W2")
    ax.set_xlim(*lim)
    ax.set(xscale="log", yscale="log", xlabel="W2(p0, q0)", ylabel="bound", title="Kwon et al. bound (closed form)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, os.path.join(args.out, "wasserstein_bound.png"), dpi=120)
    plt.close(fig)
    print(_table(rows, ["method", "setting", "w2", "bound", "score_term", "prior_term", "I_T", "ratio", "holds"]))
    print(f"\nbound holds in {sum(r['holds'] for r in rows)}/{len(rows)} rows (total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
