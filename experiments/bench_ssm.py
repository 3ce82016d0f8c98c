"""Benchmark SSM kernels and layers: naive powers vs S4D Vandermonde vs S4 Cauchy; LRU scans.

    python -m experiments.bench_ssm [--quick] [--out DIR]

Measured side by side in one run on the default JAX device (float32 / complex64):

* kernel: computing K (H, L) from the parameters — `naive` (dense powers of the bilinear Ab of the
  2·(N/2)-mode system, lax.scan, O(H L N^2)), `vandermonde_direct` (S4D, ZOH, the (H, N/2, L)
  Vandermonde matrix materialised), `vandermonde` (the same sum blocked into a batched matmul,
  chunk ≈ sqrt(L)), `cauchy` (S4 DPLR rank 1, generating function + Woodbury + Cauchy sums +
  irfft: `kernel_dplr`'s default 'paired' method, each conjugate mode pair summed in real
  arithmetic at the L/2 + 1 roots a real kernel needs, one real matmul per block of roots) and
  `cauchy_direct` (the same sums over all 2·(N/2) modes at all L roots in complex arithmetic, the
  previous implementation); N is the state size (N/2 complex modes + conjugates).
* layer_fwd_bwd: value and gradient of mean(layer(x)^2) w.r.t. all parameters for a batch of 4:
  S4D layer (vandermonde), S4 layer (cauchy, default chunk 'auto') and the naive kernel inside the
  same conv layer.
* block_matmul: the cauchy method's matmul alone at one block's shape (per channel 8 x N/2 by N/2 x 2 chunk, batched
  over the H channels, each with its own modes): the most the kernel's frac_of_matmul can reach without another
  formulation.
* lru: LRU forward and forward+backward with jax.lax.associative_scan vs jax.lax.scan.

Each row: compile_s (lower + compile), time_ms (best wall time of up to 5 calls, stopping once
the calls took 3 s; 1 call when a call takes more than 2 s; the S4D and S4 layers of one size are
called in turns, so that a slow phase of the machine cannot skew their ratio alone), cpu_ms (the same call's process CPU
time, all threads: less sensitive than wall time to other processes on a shared machine), peak_mb (XLA's static estimate for the compiled program: arguments + outputs +
temporaries), model_gflop (the formula below; multiply-adds only, a complex multiply-add = 8 real
FLOPs, exp / division / FFT work not counted, so the rate is a lower bound on work done),
gflops_per_s and frac_of_matmul (against the best float32 matmul rate measured in the same run: at
its start and again at its end, the larger of the two, so that a start on a busy shared machine
does not inflate every fraction).
    naive: 8 H L N^2      vandermonde(_direct): 8 H L N/2 (one complex multiply-add per channel,
    position and mode)
    cauchy: 8 H (L/2)(N/2)(1 + r)^2, r = 1: the matmul of the paired method — per channel, root
    k <= L/2, mode pair and each of the (1 + r)^2 Cauchy sums, 2 real coefficients times a complex
    1/den = 4 real multiply-adds (the reciprocals themselves are not counted).
    cauchy_direct: 8 H L N (1 + r)^2: one complex multiply-add per channel, root, closure mode, sum.
    (Before the paired method the cauchy rows used the cauchy_direct formula: 4x this one, for 4x
    the work; the rates of the two methods are each against the work that method does.)
    layer rows: 3x the kernel's (forward + backward) plus the FFT convolution is not counted.
    lru: 8 B L N H (input and output projections) per pass.
Naive rows are skipped (reason given) when their model FLOPs exceed a budget, direct Vandermonde
rows when the matrix exceeds 2^26 entries; Cauchy sums are evaluated `chunk` roots at a time:
cauchy_direct so that one block holds about 2^22 complex numbers, cauchy with `kernel_dplr`'s
chunk='auto' (about 2^19 entries, in cache); the chunk is in the row. Writes bench_ssm.json and
bench_ssm.md (the tables printed at the end, with the S4 / S4D layer time ratio).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgen.ssm import S4, S4D, hippo
from jaxgen.ssm import kernels as K
from jaxgen.ssm.lru import lru_apply, lru_init
from experiments._report import machine, prepare_out, write_json, write_text

BLOCK = 2**22  # complex entries per Cauchy block (chunk = BLOCK // (H N) roots of unity at a time)
DIRECT_MAX = 2**26  # largest (H, N/2, L) Vandermonde matrix materialised by vandermonde_direct


def vandermonde_chunk(L: int) -> int:
    """Block size of the blocked Vandermonde product: the power of two nearest sqrt(L)."""
    return 2 ** round(math.log2(math.sqrt(L)))


def matmul_peak_flops(n: int, repeats: int = 5) -> float:
    """Best float32 matmul FLOP/s (2 n^3 per product) on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measure(fn, *args) -> dict:
    """compile_s, time_ms, cpu_ms, peak_mb of jax.jit(fn)(*args)."""
    return measure_side_by_side({"fn": (fn, args)})["fn"]


def measure_side_by_side(calls: dict) -> dict:
    """measure() for several {name: (fn, args)}, timed in turns (one call of each per round, up to 5 rounds,
    stopping once the rounds took 3 s per function) so that a slow phase of a shared machine hits all alike."""
    out, compiled = {}, {}
    for name, (fn, args) in calls.items():
        t = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(*args).compile()
        mem = compiled[name].memory_analysis()
        peak = None
        if mem is not None:
            peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2**20
        out[name] = dict(compile_s=round(time.perf_counter() - t, 3), peak_mb=None if peak is None else round(peak, 1))
    times, cpus = {name: [] for name in calls}, {name: [] for name in calls}
    for _ in range(5):
        for name, (_, args) in calls.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled[name](*args))
            times[name].append(time.perf_counter() - t)
            cpus[name].append(time.process_time() - c)
        last = max(ts[-1] for ts in times.values())
        if last > 2.0 or sum(map(sum, times.values())) > 3.0 * len(calls):
            break
    for name in calls:
        out[name].update(time_ms=round(1e3 * min(times[name]), 3), cpu_ms=round(1e3 * min(cpus[name]), 3))
    return out


def rate(row, gflop, peak):
    row["model_gflop"] = round(gflop, 4)
    row["gflops_per_s"] = round(gflop / (row["time_ms"] / 1e3), 3)
    row["frac_of_matmul"] = round(gflop * 1e9 / (row["time_ms"] / 1e3) / peak, 5)
    return row


def rerate(rows, peak):
    """Recompute frac_of_matmul of every measured row against `peak` FLOP/s."""
    for r in rows:
        if "model_gflop" in r:
            rate(r, r["model_gflop"], peak)


def ssm_params(H: int, N: int, seed: int = 0):
    """S4-style DPLR LegS parameters per channel (complex64): Lambda, P (H, 1, N/2), B, C, step."""
    d = hippo.nplr("legs", N)
    h = N // 2
    rng = np.random.default_rng(seed)
    tile = lambda v: jnp.asarray(np.broadcast_to(v, (H,) + v.shape), jnp.complex64)  # noqa: E731
    C = jnp.asarray((rng.normal(size=(H, h)) + 1j * rng.normal(size=(H, h))) * math.sqrt(0.5), jnp.complex64)
    step = jnp.asarray(np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H)), jnp.float32)
    return tile(d.Lambda[:h]), tile(d.P[:, :h]), tile(d.B[:h]), C, step


def naive_kernel(lam, P, B, C, step, L):
    Ab, Bb = K.bilinear_dense(K.dplr_dense(lam, P), K.conj_closure(B), step)
    return K.kernel_naive(Ab, Bb, K.conj_closure(C), L).real


def kernel_fn(method, L, chunk):
    if method == "naive":
        return lambda lam, P, B, C, step: naive_kernel(lam, P, B, C, step, L)
    if method.startswith("vandermonde"):
        return lambda lam, P, B, C, step: K.kernel_vandermonde(lam, B, C, step, L, "zoh", chunk=chunk)
    m = "direct" if method == "cauchy_direct" else "paired"
    return lambda lam, P, B, C, step: K.kernel_dplr(lam, P, B, C, step, L, c_is_tilde=True, chunk=chunk, method=m)


def model_gflop(method, H, L, N, r: int = 1):
    """Model GFLOP of one kernel evaluation (the formulas in the module docstring)."""
    if method == "cauchy":
        return 8 * H * (L / 2) * (N / 2) * (1 + r) ** 2 / 1e9
    per = {"naive": N * N, "vandermonde": N // 2, "vandermonde_direct": N // 2, "cauchy_direct": N * (1 + r) ** 2}[method]
    return 8 * H * L * per / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (< 5 min on 2 CPU cores)")
    p.add_argument("--out", default="experiments/results")
    args = p.parse_args(argv)
    prepare_out(args.out)
    t0 = time.time()
    if args.quick:
        H, Ns, Ls, naive_budget, lru_Ls, B = 64, (64,), (1024, 4096), 5.0, (1024, 4096), 4
    else:
        H, Ns, Ls, naive_budget, lru_Ls, B = 256, (64, 256), (1024, 4096, 16384), 40.0, (1024, 4096, 16384), 4
    peak = matmul_peak_flops(1024 if args.quick else 2048)
    device = jax.devices()[0].device_kind
    if device == "cpu":
        device = f"cpu: {machine()}"
    rows = [dict(bench="matmul_peak", method="matmul_f32", gflops_per_s=round(peak / 1e9, 2), device=device)]
    print(f"device {device}: float32 matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)

    # 1. kernels
    for N in Ns:
        for L in Ls:
            chunks = {"naive": None, "vandermonde_direct": None, "vandermonde": vandermonde_chunk(L),
                      "cauchy": K.dplr_auto_chunk(H, N // 2), "cauchy_direct": max(1, BLOCK // (H * N))}
            params = ssm_params(H, N)
            for method, chunk in chunks.items():
                row = dict(bench="kernel", method=method, N=N, L=L, H=H, chunk=chunk)
                gflop = model_gflop(method, H, L, N)
                if method == "naive" and gflop > naive_budget:
                    row["skipped"] = f"model FLOPs {gflop:.0f} GFLOP > budget {naive_budget:g}"
                    rows.append(row)
                    continue
                if method == "vandermonde_direct" and H * (N // 2) * L > DIRECT_MAX:
                    row["skipped"] = f"(H, N/2, L) Vandermonde matrix of {H * (N // 2) * L / 2**20:.0f}M entries > {DIRECT_MAX / 2**20:.0f}M"
                    rows.append(row)
                    continue
                row.update(measure(kernel_fn(method, L, chunk), *params))
                rows.append(rate(row, gflop, peak))
                print(f"  kernel {method:13s} N={N:4d} L={L:6d}: {row['time_ms']:10.1f} ms ({time.time() - t0:.0f}s)", flush=True)

    # the paired kernel's matmul alone, at one block's shape: coef (H, 2 (1 + r)^2, N/2) @ U (H, N/2, 2 chunk), r = 1,
    # batched over the channels (each channel has its own modes): the ceiling of the kernel's frac_of_matmul
    for N in Ns:
        c = K.dplr_auto_chunk(H, N // 2)
        coef = jax.random.normal(jax.random.key(2), (H, 8, N // 2))
        U = jax.random.normal(jax.random.key(3), (H, N // 2, 2 * c))
        row = dict(bench="block_matmul", method="cauchy_block_matmul", N=N, H=H, chunk=c)
        row.update(measure(lambda a, b: jnp.einsum("hcn,hnm->hcm", a, b), coef, U))
        rows.append(rate(row, 2 * H * 8 * (N // 2) * 2 * c / 1e9, peak))
        print(f"  block matmul N={N:4d}: {row['time_ms']:10.3f} ms, {row['gflops_per_s']:.1f} GFLOP/s", flush=True)

    # 2. layers: forward + backward
    for N in Ns:
        for L in Ls:
            x = jax.random.normal(jax.random.key(1), (B, L, H))
            chunks = {"vandermonde": vandermonde_chunk(L), "cauchy": K.dplr_auto_chunk(H, N // 2), "naive": None}
            layers = {
                "vandermonde": S4D(H, N, chunk=chunks["vandermonde"], rngs=nnx.Rngs(0)),
                "cauchy": S4(H, N, l_max=L, rngs=nnx.Rngs(0)),  # chunk='auto'
                "naive": S4(H, N, l_max=L, rngs=nnx.Rngs(0)),
            }
            calls, layer_rows = {}, []
            for method, layer in layers.items():
                row = dict(bench="layer_fwd_bwd", method=method, N=N, L=L, H=H, batch=B, chunk=chunks[method])
                gflop = 3 * model_gflop(method, H, L, N)
                layer_rows.append((row, gflop))
                if method == "naive" and gflop > naive_budget:
                    row["skipped"] = f"model FLOPs {gflop:.0f} GFLOP > budget {naive_budget:g}"
                    continue
                graph, state = nnx.split(layer)
                if method == "naive":  # same S4 parameters, kernel by dense powers

                    def loss(state, x, graph=graph):
                        m = nnx.merge(graph, state)
                        lam, P, Bv, Ct = m._parts()
                        Ab, Bb = K.bilinear_dense(K.dplr_dense(lam, P), K.conj_closure(Bv), m._step())
                        C = K.c_from_c_tilde(Ab, K.conj_closure(Ct), m.l_max)
                        kern = K.kernel_naive(Ab, Bb, C, x.shape[1]).real
                        return jnp.mean(m._conv(x, kern) ** 2)
                else:

                    def loss(state, x, graph=graph):
                        return jnp.mean(nnx.merge(graph, state)(x) ** 2)

                calls[method] = (jax.value_and_grad(loss), (state, x))
            # S4D and S4 timed in turns (their ratio is a claim); the slow naive layer alone
            measured = measure_side_by_side({m: c for m, c in calls.items() if m != "naive"})
            if "naive" in calls:
                measured["naive"] = measure(calls["naive"][0], *calls["naive"][1])
            for row, gflop in layer_rows:
                if "skipped" not in row:
                    row.update(measured[row["method"]])
                    rate(row, gflop, peak)
                    print(f"  layer  {row['method']:13s} N={N:4d} L={L:6d}: {row['time_ms']:10.1f} ms "
                          f"({time.time() - t0:.0f}s)", flush=True)
                rows.append(row)

    # 3. LRU: associative scan vs lax.scan
    lru_N = N = 256 if not args.quick else 64
    lp = lru_init(jax.random.key(0), N, H, r_min=0.9, r_max=0.999)
    for L in lru_Ls:
        x = jax.random.normal(jax.random.key(1), (B, L, H))
        for parallel in (True, False):
            name = "associative_scan" if parallel else "lax_scan"
            fwd = lambda p, x, par=parallel: lru_apply(p, x, parallel=par)[0]  # noqa: E731
            both = jax.value_and_grad(lambda p, x, par=parallel: jnp.mean(lru_apply(p, x, parallel=par)[0] ** 2))
            for bench, fn, mult in (("lru_fwd", fwd, 1), ("lru_fwd_bwd", both, 3)):
                row = dict(bench=bench, method=name, N=N, L=L, H=H, batch=B)
                row.update(measure(fn, lp, x))
                rows.append(rate(row, mult * 2 * 8 * B * L * N * H / 1e9, peak))
                print(f"  {bench:11s} {name:16s} L={L:6d}: {row['time_ms']:10.1f} ms ({time.time() - t0:.0f}s)", flush=True)

    peak_end = matmul_peak_flops(1024 if args.quick else 2048)
    peak = max(peak, peak_end)
    rows[0].update(gflops_per_s=round(peak / 1e9, 2), gflops_per_s_start=rows[0]["gflops_per_s"],
                   gflops_per_s_end=round(peak_end / 1e9, 2))
    rerate(rows, peak)
    print(f"float32 matmul peak at the end {peak_end / 1e9:.1f} GFLOP/s; fractions against {peak / 1e9:.1f}", flush=True)
    write_json(os.path.join(args.out, "bench_ssm.json"), rows)

    out = [f"### SSM kernels and layers (H = {H}, float32, {device}; matmul peak {peak / 1e9:.1f} GFLOP/s)\n",
           "| bench | method | N | L | chunk | time_ms | cpu_ms | vs naive | compile_s | peak_mb | GFLOP/s | frac of matmul |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for bench in ("kernel", "layer_fwd_bwd"):
        for N in Ns:
            for L in Ls:
                group = [r for r in rows if r["bench"] == bench and r["N"] == N and r["L"] == L]
                naive = next(r for r in group if r["method"] == "naive")
                for r in group:
                    ratio = "" if "skipped" in naive or "skipped" in r else f"{naive['time_ms'] / r['time_ms']:.1f}x"
                    if "skipped" in r:
                        out.append(f"| {bench} | {r['method']} | {N} | {L} | | skipped | | | | | | |")
                        continue
                    out.append(f"| {bench} | {r['method']} | {N} | {L} | {r['chunk']} | {r['time_ms']:.1f} | {r['cpu_ms']:.1f} | {ratio} | "
                               f"{r['compile_s']:.2f} | {r['peak_mb']} | {r['gflops_per_s']:.2f} | {r['frac_of_matmul']:.4f} |")
    out += ["\n### S4 (cauchy) against S4D (vandermonde) and the previous S4 kernel (cauchy_direct)\n",
            "The ceiling column: the paired kernel's per-block matmul alone (batched over the H channels, "
            "8 x N/2 by N/2 x 2 chunk each), as a fraction of the matmul rate.\n",
            "| N | L | kernel cauchy frac of matmul | its block matmul alone (ceiling) | kernel cauchy_direct / cauchy time | "
            "layer S4 ms | layer S4D ms | S4 / S4D layer time | S4 / S4D layer CPU time |",
            "|---|---|---|---|---|---|---|---|---|"]
    for N in Ns:
        for L in Ls:
            get = lambda bench, m: next(r for r in rows if r["bench"] == bench and r["method"] == m and r["N"] == N and r["L"] == L)  # noqa: E731
            kc, kd = get("kernel", "cauchy"), get("kernel", "cauchy_direct")
            ceiling = next(r for r in rows if r["bench"] == "block_matmul" and r["N"] == N)
            s4, s4d = get("layer_fwd_bwd", "cauchy"), get("layer_fwd_bwd", "vandermonde")
            out.append(f"| {N} | {L} | {kc['frac_of_matmul']:.3f} | {ceiling['frac_of_matmul']:.3f} | {kd['time_ms'] / kc['time_ms']:.1f}x | "
                       f"{s4['time_ms']:.1f} | {s4d['time_ms']:.1f} | {s4['time_ms'] / s4d['time_ms']:.2f}x | "
                       f"{s4['cpu_ms'] / s4d['cpu_ms']:.2f}x |")
    out += [f"\n### LRU (N = {lru_N}, H = {H}, batch {B}): associative scan vs lax.scan\n",
            "| bench | L | associative_scan ms | lax_scan ms | speed-up | compile_s (assoc / scan) |",
            "|---|---|---|---|---|---|"]
    for bench in ("lru_fwd", "lru_fwd_bwd"):
        for L in lru_Ls:
            a = next(r for r in rows if r["bench"] == bench and r["L"] == L and r["method"] == "associative_scan")
            s = next(r for r in rows if r["bench"] == bench and r["L"] == L and r["method"] == "lax_scan")
            out.append(f"| {bench} | {L} | {a['time_ms']:.1f} | {s['time_ms']:.1f} | {s['time_ms'] / a['time_ms']:.2f}x | "
                       f"{a['compile_s']:.2f} / {s['compile_s']:.2f} |")
    text = "\n".join(out) + "\n"
    print("\n" + text)
    write_text(os.path.join(args.out, "bench_ssm.md"), text)
    print(f"wrote {args.out}/bench_ssm.json, bench_ssm.md in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
