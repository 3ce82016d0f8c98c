"""Compile every paper-scale config for the TPU slice its docstring names, without a TPU (jaxgen.aot).

    python -m experiments.aot_tpu [--quick] [--out DIR] [--configs ddpm_cifar10.py,s4_smnist.py]

For each config (its "Target slice: v5e-8" docstring line names the slice) the train step and the
evaluation step are compiled through libtpu for that slice and reported per chip: HBM (arguments,
outputs, temporaries, total against the capacity), FLOPs and bytes accessed per call, and the roofline
bound max(FLOPs / peak, bytes / HBM bandwidth) with the chip's published numbers (a bound on steps/s,
not a measurement). The DDPM sampling variants share the base config's train step, so only their
samplers are compiled. Writes DIR/aot_tpu.json (one row per config and step; `setting` = config@slice).
`--quick` compiles the configs' `:smoke` variants instead, without the sampling variants (minutes, not the
better part of an hour; the CIFAR-10 UNet's train step alone took 384 s to compile on 2 CPU cores).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import re
import time

from experiments._report import markdown_table, prepare_out, write_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAPER_CONFIGS = ("ddpm_cifar10.py", "rf_cifar10.py", "cm_cifar10.py", "sid_cifar10.py", "s4_smnist.py", "s4_psmnist.py",
                 "s4_scifar.py", "fsq_mnist.py", "fsq_cifar10.py")
# A freshly initialised teacher has the trained one's shapes: the same memory and FLOPs, no teacher run needed.
OVERRIDES = {"configs/sid_cifar10.py": [("teacher.untrained", "True")]}
DDPM_SAMPLING = ("ddim", "analytic", "analytic_ddim", "npr", "sn", "pc", "euler", "heun", "dpm2", "amed")
COLS = ["setting", "step", "what", "mesh", "params", "total_gib", "hbm_gib", "fits", "gflop", "gib_accessed",
        "bound_ms", "bound_steps_per_s", "bound_by", "compile_s"]


def target_slice(config_file: str) -> str:
    """The slice named by the config file's docstring line 'Target slice: v5e-8'."""
    with open(config_file) as f:
        m = re.search(r"Target slice: (\S+)", f.read())
    if m is None:
        raise ValueError(f"{config_file} names no 'Target slice: ...' in its docstring")
    return m.group(1).rstrip(".,;")


def jobs(configs, quick: bool, steps=None):
    """(config spec, slice, steps) to compile: every config's `steps` (default: jaxgen.aot.default_steps, the
    train and eval steps and the Inception extraction where the config scores with it), then the DDPM samplers."""
    out, samplers = [], []
    for name in configs:
        path = os.path.join("configs", name)
        slice_name = target_slice(os.path.join(ROOT, path))
        out.append((path + (":smoke" if quick else ""), slice_name, steps))
        if name == "ddpm_cifar10.py" and not quick:
            samplers = [(f"{path}:{v}{',smoke' if quick else ''}", slice_name, ("eval",)) for v in DDPM_SAMPLING]
    return out + samplers


def _flat(row: dict) -> dict:
    gib = 2.0**30
    scaled = dict(total_gib=row["total_bytes"] / gib, hbm_gib=row["hbm_bytes"] / gib,
                  gflop=None if row["flops"] is None else row["flops"] / 1e9,
                  gib_accessed=None if row["bytes_accessed"] is None else row["bytes_accessed"] / gib,
                  bound_ms=None if row["bound_s"] is None else row["bound_s"] * 1e3)
    return dict(row, **scaled)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--configs", default=",".join(PAPER_CONFIGS))
    parser.add_argument("--steps", default="", help="comma-separated subset of train,eval,inception (default: "
                        "each config's jaxgen.aot.default_steps)")
    parser.add_argument("--match", default="", help="only the config specs this regex finds, e.g. 'py:' (samplers)")
    args = parser.parse_args(argv)
    prepare_out(args.out)  # local or gs://; exits 2 naming it if it cannot be written
    path = os.path.join(args.out, "aot_tpu.json")

    from jaxgen.aot import compile_report, default_steps
    from jaxgen.config import apply_overrides, load_config

    os.chdir(ROOT)
    all_rows = []
    todo = jobs([c.strip() for c in args.configs.split(",") if c.strip()], args.quick,
                tuple(s for s in args.steps.split(",") if s) or None)
    for spec, slice_name, steps in [j for j in todo if re.search(args.match, j[0])]:
        start = time.perf_counter()
        try:
            config = load_config(spec)
            apply_overrides(config, OVERRIDES.get(spec.split(":")[0], []))
            rows = [_flat(r) for r in compile_report(config, slice_name, steps or default_steps(config))]
        except Exception as e:  # noqa: BLE001 - report it and go on with the other configs
            print(f"{spec} on {slice_name}: failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
            continue
        for r in rows:
            r.update(setting=f"{spec}@{slice_name} {r['step']}", config=spec, slice=slice_name)
        all_rows += rows
        write_rows(path, rows, {r["setting"] for r in rows})  # after each config: a long run keeps what it finished
        print(f"{spec} on {slice_name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(markdown_table(all_rows, COLS))


if __name__ == "__main__":
    main()
