"""Where the CIFAR-10 UNet's TPU train step spends its time: its parts compiled for one v5e chip (no TPU needed).

    python -m experiments.aot_breakdown [--batch 16] [--dtypes float32,bfloat16] [--parts fwd,grad,opt,full,dp8,dp8_su]
    python -m experiments.aot_breakdown --batch 32 --dtypes float32 --parts dp4_su   # the global 128 on v5e-4
    python -m experiments.aot_breakdown --dtypes float32 --parts grad_save_convs   # remat, saving the matmul outputs
    python -m experiments.aot_breakdown --table      # the recorded rows, compiling nothing

configs/ddpm_cifar10.py trains with a global batch of 128 on v5e-8: 16 images per chip. Each part is the program a
chip runs for its share, compiled through libtpu for one chip of an abstract v5e slice (jaxgen.aot's way):

    fwd    the loss (forward pass, noise and time drawn as in training)
    grad   loss and gradients (forward + backward)
    grad_save_convs  the same with every residual block under jax.checkpoint, saving only its convolutions' and
           matmuls' outputs and its reductions (the GroupNorm statistics): the backward pass recomputes the
           normalisations, activations and dropout from them instead of reading them back
    opt    the optimizer update and the EMA, given the gradients (the config's AdamW, clipping, EMA)
    full   the train step as a run jits it (grad + opt + the logged norms), without the data-parallel all-reduce
    dpN    the train step as a run on v5e-N jits it (jaxgen.aot: N chips, data parallel, global batch N x --batch),
           collectives included; per chip (dp8: the config's slice)
    dpN_su the same with weight-update sharding (config.mesh.shard_update: optimizer state and EMA split over the
           N chips, each updating its slice of the all-reduced gradients; the new parameters all-gathered)

For each: XLA's FLOPs and bytes accessed (`cost_analysis`), the roofline bounds FLOPs / peak and bytes / HBM
bandwidth with v5e's published figures (197 TFLOP/s bf16, 819 GB/s), and the TPU compiler's own cost model: the sum
of the `estimated_cycles` it records for each operation of the program, in ms at v5e's clock, with the shares of
convolutions + matmuls, reductions, random bits (dropout's masks and selects) and the rest.
Writes experiments/results/aot_breakdown.json (one row per batch, dtype and part). Compiling `grad` and `full` takes minutes
each on 2 CPU cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse
import collections
import contextlib
import json
import re
import time

from experiments._report import markdown_table, prepare_out, write_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COLS = ["batch_per_chip", "dtype", "part", "gflop", "gib_accessed", "flop_bound_ms", "memory_bound_ms", "bound_by", "mcycles",
        "estimated_ms", "mxu", "reductions", "rng", "other"]
V5E_CLOCK_HZ = 197e12 / (4 * 128 * 128 * 2)  # the published bf16 peak over 4 MXUs of 128 x 128 multiply-adds: 1.5 GHz


def estimated_cycles(hlo: str) -> tuple[float, dict[str, float]]:
    """(total, {category: cycles}) of the entry computation's operations, from the `estimated_cycles` XLA:TPU writes
    into each one's backend config. A category is the op (with its fusion kind) and the JAX primitive it came from."""
    entry = hlo[hlo.index("\nENTRY"):]
    by = collections.Counter()
    for line in entry.split("\n")[1:]:
        op = re.match(r"\s*(?:ROOT )?%\S+ = .*? ([\w-]+)\(", line)
        cycles = re.search(r'"estimated_cycles":"(\d+)"', line)
        if not (op and cycles):
            continue
        kind = re.search(r"kind=k(\w+)", line)
        name = re.search(r'op_name="([^"]*)"', line)
        primitive = re.sub(r"\[.*", "", name.group(1).split("/")[-1]) if name else ""
        by[f"{op.group(1)}{':' + kind.group(1) if kind else ''} {primitive}".strip()] += int(cycles.group(1))
    return float(sum(by.values())), dict(by)


GROUPS = (("mxu", ("conv_general_dilated", "dot_general")), ("reductions", ("reduce_sum", "reduce_max")),
          ("rng", ("select_n", "iota_2x32_shape", "threefry2x32", "shift_right_logical")))


def grouped_shares(by: dict[str, float]) -> dict[str, float]:
    """Shares of the estimated cycles: matrix-unit ops (convolutions, matmuls, as fusions), reductions (the
    GroupNorm statistics, softmax, norms), random bits (dropout masks), and the rest (elementwise, copies)."""
    total = sum(by.values()) or 1.0
    shares = dict.fromkeys([g for g, _ in GROUPS] + ["other"], 0.0)
    for category, cycles in by.items():
        primitive = category.split(" ")[-1]
        group = next((g for g, names in GROUPS if primitive in names), "other")
        shares[group] += cycles / total
    return shares


def task_loss_and_trainable(config):
    """(task, loss_fn, Trainable) of `config`: the loss and optimizer its train step is built from, caught as the
    task builds the step."""
    from jaxgen import tasks
    from jaxgen.train import state as state_lib

    captured = {}
    original = state_lib.Trainable.train_step

    def spy(self, loss_fn, post_update=None):
        captured.update(loss_fn=loss_fn, trainable=self)
        return original(self, loss_fn, post_update)

    state_lib.Trainable.train_step = spy
    try:
        task = tasks.build(config)
    finally:
        state_lib.Trainable.train_step = original
    return task, captured["loss_fn"], captured["trainable"]


def save_convs_policy(prim, *_, **__) -> bool:
    """jax.checkpoint policy of `grad_save_convs`: keep convolution, matmul and reduce_sum outputs."""
    import jax

    return prim in (jax.lax.conv_general_dilated_p, jax.lax.dot_general_p, jax.lax.reduce_sum_p)


@contextlib.contextmanager
def residual_blocks_checkpointed(policy):
    """The UNet's residual blocks under jax.checkpoint(policy) while inside (the UNet's own `remat` recomputes
    everything, convolutions included)."""
    import jax
    from flax import nnx

    from jaxgen.nets import unet

    def call(self, x, temb, key):
        graphdef, state = nnx.split(self)
        forward = lambda state, x, temb, key: nnx.merge(graphdef, state)._forward(x, temb, key)  # noqa: E731
        return jax.checkpoint(forward, policy=policy)(state, x, temb, key)

    original, unet.ResBlock.__call__ = unet.ResBlock.__call__, call
    try:
        yield
    finally:
        unet.ResBlock.__call__ = original


def parts_of(config, devices):
    """{part: (function, abstract arguments, donated argument indices)} for `config` on one device."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxgen import data as data_lib
    from jaxgen.train import state as state_lib

    task, loss_fn, t = task_loss_and_trainable(config)
    one = NamedSharding(Mesh(np.array(devices[:1]), ("data",)), P())
    on_one = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), tree)  # noqa: E731
    state = on_one(jax.eval_shape(task.init, jax.random.key(0)))
    x = jax.ShapeDtypeStruct((config.train.batch_size, *data_lib.dataset_info(config.data).shape), jnp.float32,
                             sharding=one)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=one)

    def fwd(params, x, key):
        return loss_fn(params, state.extra, {"x": x}, key)[0]

    def grad(params, x, key):
        return jax.value_and_grad(fwd)(params, x, key)

    def opt(params, opt_state, ema, grads):
        updates, opt_state = t.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, state_lib.ema_update(ema, params, t.ema_decay)

    return {"fwd": (fwd, (state.params, x, key), ()), "grad": (grad, (state.params, x, key), ()),
            "opt": (opt, (state.params, state.opt_state, state.ema_params, state.params), (0, 1, 2)),
            "full": (task.train_step, (state, {"x": x}, key), (0,))}


def pod_step(config, chips: int, shard_update: bool):
    """The lowered train step of `config` with `chips` x its batch on v5e-`chips`, as jaxgen.aot compiles it."""
    from jaxgen import aot
    from jaxgen import config as config_lib

    config = config.copy_and_resolve_references()
    config_lib.apply_overrides(config, [("train.batch_size", str(chips * config.train.batch_size)),
                                        ("mesh.shard_update", str(shard_update))])
    _, topology = aot.parse_slice(f"v5e-{chips}")
    *_, [(_, _, lowered, _)] = aot.lower_steps(config, aot.topology_devices(topology), ("train",))
    return lowered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16, help="images per chip (the config's 128 over v5e-8: 16)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="config.model.dtype values")
    ap.add_argument("--parts", default="fwd,grad,opt,full")
    ap.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
    ap.add_argument("--table", action="store_true", help="print the table of OUT/aot_breakdown.json; compile nothing")
    args = ap.parse_args()
    if args.table:
        from jaxgen import paths

        rows = json.loads(paths.read_text(os.path.join(args.out, "aot_breakdown.json")))
        print(markdown_table([with_shares(r) for r in rows], COLS))
        return

    import jax

    from jaxgen import aot
    from jaxgen import config as config_lib

    out = prepare_out(args.out)
    chip, topology = aot.parse_slice("v5e:2x2")  # libtpu's smallest v5e host; one of its chips is used
    devices = aot.topology_devices(topology)
    rows = []
    for dtype in args.dtypes.split(","):
        config = config_lib.load_config(os.path.join(ROOT, "configs", "ddpm_cifar10.py"))
        config_lib.apply_overrides(config, [("train.batch_size", str(args.batch)), ("model.dtype", dtype),
                                            ("data.mock", "True")])
        parts = parts_of(config, devices)
        for part in args.parts.split(","):
            start = time.perf_counter()
            if pod := re.fullmatch(r"dp(\d+)(_su)?", part):
                compiled = pod_step(config, int(pod.group(1)), bool(pod.group(2))).compile()
            elif part == "grad_save_convs":
                fn, fn_args, _ = parts["grad"]
                with residual_blocks_checkpointed(save_convs_policy):
                    lowered = jax.jit(fn).lower(*fn_args)
                compiled = lowered.compile()
            else:
                fn, fn_args, donate = parts[part]
                compiled = jax.jit(fn, donate_argnums=donate).lower(*fn_args).compile()
            seconds = time.perf_counter() - start
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            flops, accessed = float(cost["flops"]), float(cost["bytes accessed"])
            total, by = estimated_cycles(compiled.as_text())
            top = sorted(by.items(), key=lambda kv: -kv[1])[:4]
            row = dict(setting=f"ddpm_cifar10 {part} {dtype} batch {args.batch}@v5e chip", dtype=dtype, part=part,
                       batch_per_chip=args.batch, gflop=flops / 1e9, gib_accessed=accessed / 2**30,
                       flop_bound_ms=flops / chip.peak_flops * 1e3, memory_bound_ms=accessed / chip.hbm_bandwidth * 1e3,
                       bound_by="compute" if flops / chip.peak_flops >= accessed / chip.hbm_bandwidth else "memory",
                       mcycles=total / 1e6, top_cycles="; ".join(f"{k} {100 * v / total:.0f}%" for k, v in top),
                       cycles_by_category=by, compile_s=seconds)
            rows.append(row)
            write_rows(os.path.join(out, "aot_breakdown.json"), [row], [row["setting"]])  # each row as it comes
            print(markdown_table([with_shares(row)], COLS), flush=True)
    print(markdown_table([with_shares(r) for r in rows], COLS))


def with_shares(row: dict) -> dict:
    """The row with the compiler's estimate in ms at v5e's clock and its grouped shares (table columns)."""
    shares = {k: round(v, 3) for k, v in grouped_shares(row["cycles_by_category"]).items()}
    return dict(row, estimated_ms=row["mcycles"] * 1e6 / V5E_CLOCK_HZ * 1e3, **shares)


if __name__ == "__main__":
    main()
