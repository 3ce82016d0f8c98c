"""Sampling throughput of the evaluation samplers, and a check that the compiled sampler loop never goes back to
the host between steps.

    python -m experiments.bench_sampling [--quick] [--out DIR]

Measured is exactly what `evaluate` runs for one batch: the diffusion task's `eval_step` (the whole sampler,
all its steps, one jitted program on one device), timed after compilation as the median of 3 calls (--quick: 1).
Reported: images/s, ms per network evaluation (the call's time over its NFE) and the compiled program's host
traffic: the number of `while` loops (the sampler's steps run inside one) and of host callbacks, infeed / outfeed
and send / recv ops in the optimised HLO (each would be a round trip per step; there must be none). The call runs
under `jax.transfer_guard("disallow")`, so any implicit host <-> device transfer would raise.

Rows: the quickstart UNet (8x8 digits) with its own sampler (ancestral DDPM, 250 steps; batch 100 and 500) and
the CIFAR-10 UNet (35.7M parameters) with DDIM at 50 steps (batch 8 and 32; its config's 1000-step ancestral
sampler takes 20x as long per image, on a TPU slice: see the AOT rows in the README).
"""

from __future__ import annotations

import argparse
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen import tasks
from experiments._report import markdown_table, prepare_out, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_OPS = {"callback": r"custom_call_target=\"[^\"]*callback[^\"]*\"", "infeed": r"\binfeed\(",
            "outfeed": r"\boutfeed\(", "send": r"\bsend\(", "recv": r"\brecv\("}


def host_traffic(hlo_text: str) -> dict[str, int]:
    """Counts of `while` loops and of the ops that move data between host and device in an optimised HLO module."""
    counts = {name: len(re.findall(pattern, hlo_text)) for name, pattern in HOST_OPS.items()}
    counts["while"] = len(re.findall(r"\bwhile\(", hlo_text))
    return counts


def concrete_args(args, state_key):
    """The eval step's abstract arguments made concrete: zeros for learned inputs, a key, batch index 0."""
    def leaf(a):
        if not isinstance(a, jax.ShapeDtypeStruct):
            return a
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return state_key
        return jnp.zeros(a.shape, a.dtype)
    return jax.tree.map(leaf, args)


def bench_sampler(config_spec: str, overrides: list[tuple[str, str]], batch_size: int, iters: int) -> dict:
    config = config_lib.load_config(os.path.join(ROOT, config_spec))
    config_lib.apply_overrides(config, overrides + [("eval.batch_size", str(batch_size))])
    if config.data.name in data_lib.KNOWN_TFDS:  # only shapes are needed: no prepared data on a CPU box
        with config.unlocked():
            config.data.mock = True
    task = tasks.build(config)
    state = jax.jit(task.init)(jax.random.key(0))
    fn, args, what = task.eval_step(state)
    args = concrete_args(args, jax.random.key(1))
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    traffic = host_traffic(compiled.as_text())
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    with jax.transfer_guard("disallow"):
        for _ in range(iters):
            t = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t)
    call_s = float(np.median(times))
    nfe = int(config.eval.sample_steps) or int(config.diffusion.num_steps)
    return dict(what=what, compile_s=compile_s, call_s=call_s, nfe=nfe, images_per_s=batch_size / call_s,
                ms_per_nfe=1e3 * call_s / nfe, **traffic)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    args = p.parse_args(argv)
    ddim50 = [("eval.sampler", "ddim"), ("eval.sample_steps", "50"), ("eval.eta", "0.0")]
    settings = [("quickstart", "configs/quickstart.py", [], (100,) if args.quick else (100, 500)),
                ("cifar10", "configs/ddpm_cifar10.py", ddim50, (8,) if args.quick else (8, 32))]
    rows = []
    for name, spec, overrides, batches in settings:
        for bs in batches:
            r = bench_sampler(spec, overrides, bs, iters=1 if args.quick else 3)
            rows.append(dict(model=name, batch_size=bs, quick=args.quick, **r))
            print(f"  {name} batch={bs}: {r['images_per_s']:.1f} images/s, {r['ms_per_nfe']:.1f} ms per NFE, "
                  f"{r['while']} while loop(s), host ops {sum(r[k] for k in HOST_OPS)}", flush=True)
    print(f"\nSampling throughput ({jax.devices()[0].device_kind}, {os.cpu_count()} cores, one device)\n")
    print(markdown_table(rows, ["model", "what", "batch_size", "nfe", "compile_s", "call_s", "images_per_s",
                                "ms_per_nfe", "while", *HOST_OPS]))
    bad = [r for r in rows if any(r[k] for k in HOST_OPS) or not r["while"]]
    prepare_out(args.out)
    write_json(os.path.join(args.out, "bench_sampling.json"), rows)
    if bad:
        raise SystemExit(f"host round trips in the compiled sampler: {bad}")


if __name__ == "__main__":
    main()
