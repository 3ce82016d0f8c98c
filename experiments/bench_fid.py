"""The Fréchet distance's host cost at Inception's 2048 features: jaxgen's factorisation against the alternatives.

    python -m experiments.bench_fid [--dim 2048] [--samples 10,1000,10000] [--out DIR]

FID = |mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr sqrt(C1^(1/2) C2 C1^(1/2)) on the host in float64, measured side by side
in one process (best of 3 calls each) for generated statistics of N samples against reference statistics of 10,000:

    pstrf   jaxgen.metrics.frechet_distance: C1 = S S^T by pivoted Cholesky (LAPACK dpstrf, stopped at C1's
            numerical rank), then the eigenvalues of S^T C2 S
    eigh    the same with S from C1's eigendecomposition (S = V_r W_r^(1/2)), jaxgen's method before
    sqrtm   scipy.linalg.sqrtm(C1 C2), the matrix square root the reference implementations (pytorch-fid, TTUR)
            take; one call, at the largest N only (it takes tens of seconds)

The features are Gaussian with a decaying spectrum (feature k's scale exp(-k / 300)), the generated ones shifted by
0.01. Each row gives the distance and its relative difference from `eigh`'s. Writes bench_fid.json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from experiments._report import machine, markdown_table, prepare_out, write_json
from jaxgen.metrics import frechet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frechet_distance_eigh(mu1, cov1, mu2, cov2) -> float:
    """frechet_distance with C1's factor from its eigendecomposition (eigenvalues below round-off dropped)."""
    w, v = np.linalg.eigh(0.5 * (cov1 + cov1.T))
    w = frechet._clip_round_off(w)
    s1 = v[:, w > 0] * np.sqrt(w[w > 0])
    m = s1.T @ cov2 @ s1
    tr_sqrt = np.sum(np.sqrt(frechet._clip_round_off(np.linalg.eigvalsh(0.5 * (m + m.T)))))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def frechet_distance_sqrtm(mu1, cov1, mu2, cov2) -> float:
    """The reference implementations' formula: the principal square root of C1 C2 (real part of its trace)."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean).real)


METHODS = {"pstrf": frechet.frechet_distance, "eigh": frechet_distance_eigh, "sqrtm": frechet_distance_sqrtm}


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(value, best wall seconds of `repeats` calls)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(*args)
        best = min(best, time.perf_counter() - start)
    return value, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--samples", default="10,1000,10000", help="generated samples N, comma-separated")
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    args = ap.parse_args()
    out = prepare_out(args.out)
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(args.dim, args.dim)) * np.exp(-np.arange(args.dim) / 300)[None, :]

    def stats(n, shift):
        return frechet.feature_stats(rng.normal(size=(n, args.dim)) @ mix.T + shift)

    ref = stats(10_000, 0.0)
    sizes = [int(n) for n in args.samples.split(",")]
    rows = []
    for n in sizes:
        gen = stats(n, 0.01)
        results = {m: timed(fn, *gen, *ref, repeats=3) for m, fn in METHODS.items() if m != "sqrtm"}
        if n == max(sizes):
            results["sqrtm"] = timed(frechet_distance_sqrtm, *gen, *ref, repeats=1)
        base = results["eigh"][0]
        for method, (value, seconds) in results.items():
            rows.append(dict(dim=args.dim, samples=n, method=method, seconds=seconds, fid=value,
                             rel_diff_vs_eigh=abs(value - base) / base, speedup_vs_eigh=results["eigh"][1] / seconds))
            print(f"N={n} {method}: {seconds:.3f} s, fid {value:.10g}", flush=True)
    table = markdown_table(rows, ["dim", "samples", "method", "seconds", "speedup_vs_eigh", "fid", "rel_diff_vs_eigh"])
    print(f"\n### Fréchet distance on the host ({machine()})\n\n{table}")
    write_json(os.path.join(out, "bench_fid.json"), dict(machine=machine(), rows=rows))


if __name__ == "__main__":
    main()
