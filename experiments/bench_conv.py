"""The CIFAR-10 UNet's 3x3 convolutions on XLA:CPU: forward, input gradient and weight gradient, each against the
float32 matmul rate measured in the same process, with the convolutions in XLA's own (Eigen) convolution, as
`python -m jaxgen.run` runs them (jaxgen.xla_cpu), and in YNNPACK, jaxlib's default.

    python -m experiments.bench_conv [--rounds 2] [--out DIR]

Each library gets processes of its own (XLA reads its flags once per process), in turns, `--rounds` each. For each
shape (batch, resolution, C_in, C_out) of the UNet's levels: FLOPs 2 B H W 9 C_in C_out per pass, the median of 5
timings of the jitted pass, divided by the best matmul rate (n x n, n = 2048 and 4096) measured right after. The
weight gradient is also computed as 9 matmuls, dW[i, j] = x_pad[:, i:i+H, j:j+W, :]^T dy (each (C_in x BHW) @
(BHW x C_out)). Prints each process's table and, per shape and pass, each library's best round; writes
experiments/results/bench_conv.json (every round's rows).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from experiments._report import (CONVOLUTION_LIBRARIES, machine, markdown_table, prepare_out, rows_from_subprocess,
                                 write_json)
from experiments.bench_train_step import matmul_peak_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = ((32, 32, 128, 128), (32, 32, 256, 128), (32, 16, 256, 256), (32, 8, 256, 256))


def conv3x3(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def weight_grad_as_matmuls(x, dy):
    """dW[i, j, c, o] = sum_{b, h, w} x_pad[b, h + i, w + j, c] dy[b, h, w, o] ("SAME" padding of 1)."""
    B, H, W, C = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    d = dy.reshape(-1, dy.shape[-1])
    return jnp.stack([jnp.stack([xp[:, i:i + H, j:j + W, :].reshape(-1, C).T @ d for j in range(3)])
                      for i in range(3)])


def median_seconds(f, *args, repeats: int = 5) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure() -> list[dict]:
    """Every pass at every shape, in this process (with the convolution library its $XLA_FLAGS select)."""
    rows = []
    for B, H, C, O in SHAPES:
        kx, kw, kd = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (B, H, H, C))
        w = jax.random.normal(kw, (3, 3, C, O)) * 0.05
        dy = jax.random.normal(kd, (B, H, H, O))
        # every array an argument: one closed over is a constant of the program, and XLA then does its padding,
        # slicing and transposes at compile time (the 9 matmuls measured 0.64-0.75 of the matmul rate so, 0.34-0.41
        # with x an argument)
        passes = {"forward": (jax.jit(conv3x3), (x, w)),
                  "input gradient": (jax.jit(lambda x, w, dy: jax.vjp(conv3x3, x, w)[1](dy)[0]), (x, w, dy)),
                  "weight gradient": (jax.jit(lambda x, w, dy: jax.vjp(conv3x3, x, w)[1](dy)[1]), (x, w, dy)),
                  "weight gradient as 9 matmuls": (jax.jit(weight_grad_as_matmuls), (x, dy))}
        ref = passes["weight gradient"][0](x, w, dy)
        rel = float(jnp.max(jnp.abs(passes["weight gradient as 9 matmuls"][0](x, dy) - ref)) / jnp.max(jnp.abs(ref)))
        assert rel < 1e-4, f"the 9-matmul weight gradient differs from XLA's by {rel:.1e} (relative)"
        flops = 2 * B * H * H * 9 * C * O
        seconds = {name: median_seconds(f, *a) for name, (f, a) in passes.items()}
        peak = matmul_peak_flops()  # right after the row: the machine's speed drifts
        for name, s in seconds.items():
            rows.append(dict(shape=f"{B}x{H}x{H}x{C} -> {O}", op=name, machine=machine(), ms=1e3 * s,
                             gflops=flops / s / 1e9, matmul_gflops=peak / 1e9, frac_of_matmul=flops / s / peak))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    p.add_argument("--rounds", type=int, default=2, help="processes per convolution library, in turns")
    p.add_argument("--rows-json", help=argparse.SUPPRESS)  # one library's process: write its rows here
    args = p.parse_args(argv)
    if args.rows_json:
        with open(args.rows_json, "w") as f:  # local: the parent's temporary file
            json.dump(measure(), f)
        return
    out = prepare_out(args.out)
    rows = []
    for i in range(args.rounds):
        for library in CONVOLUTION_LIBRARIES:
            rows += [dict(r, round=i) for r in rows_from_subprocess("experiments.bench_conv", [], library)]
            print(markdown_table(rows[-len(SHAPES) * 4:], ["convolutions", "round", "shape", "op", "ms",
                                                           "matmul_gflops", "frac_of_matmul"]), flush=True)
    # per shape and pass: each library's best round (each round against the matmul rate of its own process)
    best = {}
    for r in rows:
        key = (r["shape"], r["op"])
        best.setdefault(key, dict(shape=r["shape"], op=r["op"]))
        best[key][r["convolutions"]] = max(best[key].get(r["convolutions"], 0.0), r["frac_of_matmul"])
    print("\nFraction of the matmul rate, best of the rounds:\n")
    print(markdown_table(list(best.values()), ["shape", "op", *CONVOLUTION_LIBRARIES]))
    write_json(os.path.join(out, "bench_conv.json"), rows)


if __name__ == "__main__":
    main()
