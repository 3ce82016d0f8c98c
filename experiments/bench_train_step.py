"""Benchmark the DDPM train step: compile time, time per step and MFU on this machine.

    python -m experiments.bench_train_step [--quick] [--out DIR]

MFU = achieved FLOP/s / peak FLOP/s, with the step's FLOPs from XLA's cost analysis of the compiled
step (per device, times the device count) and the peak measured in the same run, right after each row, as the best
float32 matmul rate (jnp.dot of two n x n matrices, n = 2048 and 4096): a shared VM's speed drifts within a run.
Rows for the quickstart UNet (8x8 digits) and the CIFAR-10 UNet (35.7M parameters) at
several batch sizes, on 1 device, on one device per core and on 8 emulated devices (data parallel over the same
cores), with the XLA:CPU options `python -m jaxgen.run` sets (jaxgen.xla_cpu: convolutions outside YNNPACK; set in
experiments/__init__.py).

Then the quickstart step (batch 512; --quick: 128) and the CIFAR-10 step (batch 32; --quick: 8) on 1 device with their
convolutions in XLA's own convolution and in YNNPACK (jaxlib's default), a process per library and round, in turns
(`--rounds`, default 2): written to bench_train_step_convolutions.json.

Then a profile of the CIFAR-10 step (batch 32, 1 device; --quick: batch 8) from a `jax.profiler` trace of 3 steps:
the time of every executed XLA op, summed over threads, by category (convolution, matmul, reduction, layout copies
and transposes, elementwise fusions, collectives, other), a category read from the compiled HLO (a fusion counts as
the heaviest op it contains: convolution > matmul > reduction > layout > elementwise), and the 10 ops that take
longest. Written to bench_train_step_profile.json. It is taken with YNNPACK's convolutions, in a process of its own:
XLA's own convolution runs asynchronously on Eigen's threads, outside the trace's op events.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import argparse
import collections
import glob
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen import tasks
from jaxgen.train import mesh as mesh_lib
from jaxgen.train.loop import sharded_train_step
from experiments._report import (CONVOLUTION_LIBRARIES, machine, markdown_table, prepare_out, rows_from_subprocess,
                                 write_json)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_peak_flops(sizes=(2048, 4096), repeats: int = 10) -> float:
    """Best float32 matmul FLOP/s (2 n^3 per product, n in `sizes`) on the default device."""
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        f = jax.jit(lambda x, y: x @ y)
        f(a, a).block_until_ready()
        for _ in range(repeats):
            t = time.perf_counter()
            f(a, a).block_until_ready()
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def bench_step(config_spec: str, batch_size: int, num_devices: int, iters: int) -> dict:
    config = config_lib.load_config(os.path.join(ROOT, config_spec))
    config_lib.apply_overrides(config, [("train.batch_size", str(batch_size))])
    if config.data.name in data_lib.KNOWN_TFDS:  # only shapes are needed: no prepared data on a CPU box
        import tensorflow_datasets as tfds

        with tfds.testing.mock_data(num_examples=16):
            task = tasks.build(config)
            shape = data_lib.dataset_info(config.data).shape
    else:
        task = tasks.build(config)
        shape = data_lib.dataset_info(config.data).shape
    mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:num_devices])
    init_key, train_key = jax.random.split(jax.random.key(0))
    abstract = jax.eval_shape(task.init, init_key)
    state_sharding = mesh_lib.state_shardings(mesh, abstract, config.mesh.fsdp_min_size, config.mesh.shard_update)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    batch = {"x": jax.device_put(jnp.zeros((batch_size,) + tuple(shape), jnp.float32), batch_sharding),
             "label": jax.device_put(jnp.zeros((batch_size,), jnp.int32), batch_sharding)}
    state = jax.jit(task.init, out_shardings=state_sharding)(init_key)
    step = sharded_train_step(task, state_sharding, batch_sharding, train_key, config)
    step_no = jnp.zeros((), jnp.int32)
    t = time.perf_counter()
    compiled = step.lower(state, batch, step_no).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = num_devices * float(cost.get("flops", float("nan")))  # the SPMD program's count is per device
    state, m = compiled(state, batch, step_no)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        state, m = compiled(state, batch, step_no)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    row = dict(compile_s=compile_s, time_ms=1e3 * step_s, gflop_per_step=flops / 1e9,
               achieved_gflops=flops / step_s / 1e9, examples_per_sec=batch_size / step_s)
    return row, (compiled, state, batch, step_no)


# Categories in priority order: a fusion is counted as the first category any op inside it belongs to.
OP_CATEGORIES = (("convolution", ("convolution",)), ("matmul", ("dot",)),
                 ("reduction", ("reduce", "reduce-window", "select-and-scatter", "scatter", "sort")),
                 ("collective", ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")),
                 ("layout (copy / transpose)", ("copy", "transpose", "concatenate", "pad", "slice",
                                                "dynamic-slice", "dynamic-update-slice", "gather")))
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][a-z0-9\-]*)\((.*)$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")


def hlo_op_categories(hlo_text: str) -> dict[str, str]:
    """{instruction name: category} for every instruction of an optimised HLO module (see OP_CATEGORIES)."""
    opcode, calls, members, comp = {}, {}, collections.defaultdict(set), None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace():  # a computation's header (or its closing brace)
            m = re.match(r"(?:ENTRY )?%([\w.\-]+)", line)
            comp = m.group(1) if m else comp
            continue
        m = _INSTRUCTION.match(line)
        if m:
            name, op, rest = m.groups()
            opcode[name], calls[name] = op, _CALLS.findall(rest)
            members[comp].add(op)
            members[comp].update(f"@{c}" for c in calls[name])

    def ops_of(comp_name, seen):
        out = set()
        for op in members.get(comp_name, ()):
            if op.startswith("@"):
                if op[1:] not in seen:
                    seen.add(op[1:])
                    out |= ops_of(op[1:], seen)
            else:
                out.add(op)
        return out

    categories = {}
    for name, op in opcode.items():
        ops = {op}
        if op in ("fusion", "custom-call"):
            for c in calls[name]:
                ops |= ops_of(c, {c})
        categories[name] = next((cat for cat, members_ in OP_CATEGORIES if ops & set(members_)),
                                "elementwise" if op == "fusion" or ops - {"fusion"} <= _ELEMENTWISE else "other")
    return categories


_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "exponential", "log", "rsqrt",
                "sqrt", "tanh", "logistic", "negate", "select", "compare", "convert", "broadcast", "constant",
                "parameter", "bitcast", "iota", "and", "or", "not", "abs", "power", "sine", "cosine", "clamp",
                "exponential-minus-one", "log-plus-one", "floor", "sign", "reshape", "tuple", "get-tuple-element"}
_CONTAINERS = ("while", "call", "conditional")  # their events enclose the ops they run


def op_profile(compiled, state, *args, steps: int = 3) -> dict:
    """Per-category share of the XLA op time of `steps` train steps `state, _ = compiled(state, *args)` (the
    state is donated), from a jax.profiler trace."""
    categories = hlo_op_categories(compiled.as_text())
    state, out = compiled(state, *args)
    jax.block_until_ready(out)
    trace_dir = tempfile.mkdtemp(prefix="jaxgen-profile-")
    t = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            state, out = compiled(state, *args)
            jax.block_until_ready(out)
    wall_s = time.perf_counter() - t
    data = jax.profiler.ProfileData.from_file(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"),
                                                        recursive=True)[0])
    per_op = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                name = event.name
                if name in categories and not name.startswith(_CONTAINERS):
                    per_op[name] += event.duration_ns * 1e-9
    per_category = collections.Counter()
    for name, seconds in per_op.items():
        per_category[categories[name]] += seconds
    total = sum(per_category.values())
    return dict(steps=steps, wall_s=wall_s, op_thread_s=total,
                categories={k: dict(seconds=v / steps, share=v / total) for k, v in per_category.most_common()},
                top_ops=[dict(op=k, category=categories[k], seconds=v / steps, share=v / total)
                         for k, v in per_op.most_common(10)])


MODELS = {"quickstart": "configs/quickstart.py", "cifar10": "configs/ddpm_cifar10.py"}


def step_row(model: str, batch_size: int, iters: int) -> dict:
    """`model`'s train step on 1 device in this process: its time and MFU against the matmul rate measured right
    after it."""
    r, _ = bench_step(MODELS[model], batch_size, 1, iters)
    peak = matmul_peak_flops()
    return dict(model=model, batch_size=batch_size, devices=1, machine=machine(), **r, peak_gflops=peak / 1e9,
                mfu=r["achieved_gflops"] * 1e9 / peak)


def compare_convolution_libraries(steps: list[tuple[str, int]], iters: int, rounds: int) -> list[dict]:
    """The train steps `steps` ((model, batch size)) with XLA's own convolutions (jaxgen's CLI) and with YNNPACK's
    (jaxlib's default): a process per library and round, in turns, each with one CPU device, as `python -m
    jaxgen.run` has by default."""
    rows = []
    for i in range(rounds):
        for library in CONVOLUTION_LIBRARIES:
            for model, bs in steps:
                argv = ["--step-model", model, "--step-batch", str(bs), "--step-iters", str(iters)]
                rows += [dict(r, round=i) for r in rows_from_subprocess("experiments.bench_train_step", argv, library,
                                                                         JAX_NUM_CPU_DEVICES="1")]
                print(f"  {model} batch={bs} convolutions={library} round {i}: {rows[-1]['time_ms']:.0f} ms/step, "
                      f"mfu={rows[-1]['mfu']:.3f}", flush=True)
    return rows


def layout_rows(quick: bool, out: str) -> None:
    """Both models at their batch sizes on 1 device, one device per core and 8 devices of this process."""
    peak = matmul_peak_flops()
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s (float32, {jax.devices()[0].device_kind}: {machine()})")
    settings = [("quickstart", MODELS["quickstart"], (128,) if quick else (128, 512)),
                ("cifar10", MODELS["cifar10"], (8,) if quick else (8, 32))]
    layouts = sorted({1, min(os.cpu_count(), len(jax.devices())), 8})  # 1 device, one per core, the tests' 8
    rows = []
    for name, spec, batches in settings:
        for bs in batches:
            for nd in layouts:
                r, _ = bench_step(spec, bs, nd, iters=3 if quick else 5)
                peak = matmul_peak_flops()  # again for each row, right after it: the machine's speed drifts
                row = dict(method="ddpm_train_step", model=name, batch_size=bs, devices=nd, machine=machine(), **r,
                           peak_gflops=peak / 1e9, mfu=r["achieved_gflops"] * 1e9 / peak)
                rows.append(row)
                print(f"  {name} batch={bs} devices={nd}: {r['time_ms']:.1f} ms/step, mfu={row['mfu']:.3f}", flush=True)
    cols = ["model", "batch_size", "devices", "compile_s", "time_ms", "gflop_per_step", "achieved_gflops", "peak_gflops",
            "mfu"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    prepare_out(out)
    write_json(os.path.join(out, "bench_train_step.json"), rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    p.add_argument("--rounds", type=int, default=2, help="processes per convolution library in the comparison")
    p.add_argument("--no-layouts", action="store_true", help="skip the device layouts' rows (comparison and profile only)")
    p.add_argument("--step-model", default="cifar10", help=argparse.SUPPRESS)  # a comparison process: this row only
    p.add_argument("--step-batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--step-iters", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--step-profile", action="store_true", help=argparse.SUPPRESS)  # its op profile instead
    p.add_argument("--rows-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rows_json:
        with open(args.rows_json, "w") as f:  # local: the parent's temporary file
            if args.step_profile:
                _, (compiled, *step_args) = bench_step(MODELS[args.step_model], args.step_batch, 1, iters=1)
                json.dump([op_profile(compiled, *step_args)], f)
            else:
                json.dump([step_row(args.step_model, args.step_batch, args.step_iters)], f)
        return
    if not args.no_layouts:
        layout_rows(args.quick, args.out)
    bs = 8 if args.quick else 32
    steps = [("quickstart", 128), ("cifar10", bs)] if args.quick else [("quickstart", 512), ("cifar10", bs)]
    print(f"\nTrain steps on 1 device, {steps}: convolutions in XLA's own convolution (jaxgen's CLI) and in YNNPACK "
          "(jaxlib's default), a process each, in turns", flush=True)
    compare = compare_convolution_libraries(steps, 3 if args.quick else 5, args.rounds)
    print(markdown_table(compare, ["model", "batch_size", "convolutions", "round", "time_ms", "achieved_gflops",
                                   "peak_gflops", "mfu"]))
    prepare_out(args.out)
    write_json(os.path.join(args.out, "bench_train_step_convolutions.json"), compare)

    # XLA's own convolution runs asynchronously on Eigen's threads, outside the trace's op events (the ops after it
    # would be charged for the wait): the profile is taken with jaxlib's default, YNNPACK's convolutions
    argv = ["--step-model", "cifar10", "--step-batch", str(bs), "--step-profile"]
    prof = rows_from_subprocess("experiments.bench_train_step", argv, "ynnpack", JAX_NUM_CPU_DEVICES="1")[0]
    print(f"\nProfile of the CIFAR-10 train step, batch {bs}, 1 device, convolutions in YNNPACK "
          f"({prof['wall_s'] / prof['steps']:.2f} s per step, {prof['op_thread_s'] / prof['wall_s']:.2f} threads busy "
          "on average)\n")
    print("| category | s per step | share |\n|---|---|---|")
    for k, v in prof["categories"].items():
        print(f"| {k} | {v['seconds']:.3f} | {v['share']:.3f} |")
    print("\n| op | category | s per step | share |\n|---|---|---|---|")
    for r in prof["top_ops"]:
        print(f"| {r['op']} | {r['category']} | {r['seconds']:.3f} | {r['share']:.3f} |")
    write_json(os.path.join(args.out, "bench_train_step_profile.json"),
               dict(model="cifar10", batch_size=bs, machine=machine(), **prof))


if __name__ == "__main__":
    main()
