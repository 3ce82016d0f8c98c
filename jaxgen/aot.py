"""Compile a config's train step and evaluation step for a Cloud TPU slice, without TPU hardware.

    python -m jaxgen.aot --config configs/X.py[:variant] --topology v5e-16 [--config.key=value ...]
                         [--steps train,eval[,inception]] [--json PATH]

libtpu (installed by the `tpu` extra) compiles for an abstract slice from
`jax.experimental.topologies.get_topology_desc` while JAX itself runs on the CPU (JAX_PLATFORMS=cpu is
set unless already given). Compiled are exactly the functions a run jits: the train step of
`jaxgen.train.loop` (`sharded_train_step`, with the mesh and state shardings of `jaxgen.train.mesh`) and
the step `evaluate` spends its time in (`Task.eval_step`: the sampler for generative tasks, the batched
forward for the others), with the shardings they have today. No data is read: tfds data sets are
mocked (`data.mock=True`), so shapes come from the data set's own feature metadata.

Per chip the report gives the HBM XLA assigns (arguments + outputs - donated aliases + temporaries +
generated code) against the chip's capacity, the FLOPs and bytes accessed of one call
(`cost_analysis`; a while loop's body, e.g. one step of a sampler's loop, is counted once), and the
roofline bound

    t >= max(FLOPs / peak_flops, bytes_accessed / hbm_bandwidth)

with the chip's published bf16 peak and HBM bandwidth, i.e. at most 1 / t steps per second. It is a
bound, not a measurement (fusion, overlap, the interconnect and float32 matmuls at a lower rate all
make real steps slower). A step that needs more HBM than the chip has exits with status 2 and one line.
Slice names follow Cloud TPU's: v5e-N / v6e-N count chips, v4-N / v5p-N count TensorCores (2 per
chip); a topology string such as v5e:2x2 is accepted too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures (Google Cloud TPU documentation)."""

    name: str
    hbm_bytes: int
    peak_flops: float  # bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    cores_per_chip: int  # TensorCores counted by the slice name (v4-8: 4 chips)
    dims: int  # torus dimensions of the topology string


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1.2e12, 2, 3),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9, 1, 2),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2.765e12, 2, 3),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1.64e12, 1, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}
# Chip grids of the usual slice shapes (Cloud TPU docs): 2-D for v5e / v6e, 3-D for v4 / v5p.
_GRIDS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_GRIDS_3D = {1: "1x1x1", 2: "1x1x2", 4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
             128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}
SLICE_EXAMPLES = "v5e-16, v5e-8, v4-8, v4-32, v5p-8, v6e-8 (or a topology such as v5e:2x2)"


def parse_slice(name: str) -> tuple[Chip, str]:
    """'v5e-16' -> (the v5e Chip, 'v5e:4x4'); 'v4-8' -> (v4, 'v4:2x2x1'); 'v5e:2x2' passes through."""
    m = re.fullmatch(r"(v\d+[a-z]*)([-:])([0-9x]+)", str(name).strip().lower())
    family = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if m is None or family not in CHIPS:
        raise ValueError(f"--topology={name!r} is not a TPU slice; accepted: {SLICE_EXAMPLES}")
    chip, sep, size = CHIPS[family], m.group(2), m.group(3)
    if sep == ":":
        if len(size.split("x")) != chip.dims or not all(size.split("x")):
            raise ValueError(f"--topology={name!r}: a {family} topology has {chip.dims} dimensions, e.g. "
                             f"{family}:{_GRIDS_2D[4] if chip.dims == 2 else _GRIDS_3D[4]}")
        return chip, f"{family}:{size}"
    grids = _GRIDS_2D if chip.dims == 2 else _GRIDS_3D
    count = int(size) if size.isdigit() else 0
    chips, rest = divmod(count, chip.cores_per_chip)
    if rest or chips not in grids:
        sizes = ", ".join(f"{family}-{n * chip.cores_per_chip}" for n in grids)
        raise ValueError(f"--topology={name!r}: no standard {family} slice of that size; accepted: {sizes}")
    return chip, f"{family}:{grids[chips]}"


def _ensure_cpu_backend() -> None:
    """JAX itself stays on the CPU; libtpu is used only through the abstract topology (so it need not take
    libtpu's one-process lock, which a training run on a real TPU VM, or any JAX process started without
    JAX_PLATFORMS=cpu, holds)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: str):
    """The abstract TPU devices of `topology` (libtpu needed; no TPU hardware)."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError("jaxgen.aot needs libtpu: pip install -e '.[tpu]' (jax[tpu])") from e
    from jax.experimental import topologies

    return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices


def _devices_per_chip(devices) -> int:
    chips = {tuple(getattr(d, "coords", (d.id,))) for d in devices}
    return len(devices) // len(chips)


def sharding_summary(abstract_state, shardings) -> str:
    """Leaves of the train state grouped by PartitionSpec, largest first: 'PartitionSpec(): 12 leaves, 1.5M; ...'."""
    import jax

    groups: dict[str, list[int]] = {}
    for leaf, sharding in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings)):
        spec = str(getattr(sharding, "spec", sharding))
        g = groups.setdefault(spec, [0, 0])
        g[0] += 1
        g[1] += math.prod(leaf.shape)
    return "; ".join(f"{k}: {n} leaves, {e / 1e6:.3g}M" for k, (n, e) in sorted(groups.items(), key=lambda kv: -kv[1][1]))


def _with_default_sharding(args, sharding):
    """ShapeDtypeStructs without a sharding get `sharding` (host inputs a jitted call replicates)."""
    import jax

    def fill(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return x

    return jax.tree.map(fill, args)


def _analyse(compiled, chip: Chip, per_chip: int) -> dict:
    """Per-chip memory, cost and roofline bound of a compiled SPMD step (every device runs the same program)."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    arg, out, alias = mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes
    temp, code = mem.temp_size_in_bytes, mem.generated_code_size_in_bytes
    total = arg + out - alias + temp + code  # donated inputs (aliased) are counted once
    flops = float(cost.get("flops", 0.0)) * per_chip
    accessed = float(cost.get("bytes accessed", 0.0)) * per_chip
    t_compute, t_memory = flops / chip.peak_flops, accessed / chip.hbm_bandwidth
    bound = max(t_compute, t_memory)
    hlo = compiled.as_text() or ""
    return dict(
        argument_bytes=arg * per_chip, output_bytes=out * per_chip, alias_bytes=alias * per_chip,
        temp_bytes=temp * per_chip, code_bytes=code * per_chip, total_bytes=total * per_chip,
        hbm_bytes=chip.hbm_bytes, fits=total * per_chip <= chip.hbm_bytes, compile_error=None,
        flops=flops, bytes_accessed=accessed, peak_flops=chip.peak_flops, hbm_bandwidth=chip.hbm_bandwidth,
        bound_s=bound, bound_steps_per_s=(1.0 / bound) if bound > 0 else float("inf"),
        bound_by="compute" if t_compute >= t_memory else "memory",
        loop_bodies_counted_once=bool(re.search(r"\bwhile\(", hlo)),
    )


_OOM = re.compile(r"Ran out of memory.*?required for ([^(]*)\(([\d.]+)([KMGT]?)\).*?available HBM \(([\d.]+)([KMGT]?)\)",
                  re.S)


def _out_of_memory(error: Exception, chip: Chip, per_chip: int) -> dict:
    """The report of a step XLA:TPU refused to compile for lack of HBM (its message gives the need)."""
    m = _OOM.search(str(error))
    if m is None or "RESOURCE_EXHAUSTED" not in str(error):
        raise error
    unit = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    need = float(m.group(2)) * unit[m.group(3)] * per_chip
    nan = None  # not known: the program was not compiled
    return dict(argument_bytes=nan, output_bytes=nan, alias_bytes=nan, temp_bytes=nan, code_bytes=nan,
                total_bytes=need, hbm_bytes=chip.hbm_bytes, fits=False,
                compile_error=f"XLA: {m.group(0).splitlines()[0]}", flops=nan, bytes_accessed=nan,
                peak_flops=chip.peak_flops, hbm_bandwidth=chip.hbm_bandwidth, bound_s=nan, bound_steps_per_s=nan,
                bound_by=None, loop_bodies_counted_once=None)


STEPS = ("train", "eval", "inception")


def default_steps(config) -> tuple[str, ...]:
    """train and eval, and the Inception feature extraction where the evaluation scores with it."""
    inception = config.get("eval", {}).get("metric", "") == "inception"
    return ("train", "eval") + (("inception",) if inception else ())


def lower_steps(config, devices, steps=("train", "eval")):
    """Trace and lower (no compile) `steps` of `config` over `devices` as a run jits them; tfds data are mocked.

    Returns (task, mesh, abstract_state, state_sharding, [(step, what, lowered, seconds to lower), ...]). Used by
    `compile_report` for TPU slices and by the tests on CPU devices (a config's steps trace, cheaply)."""
    import jax
    import jax.numpy as jnp

    from jaxgen import data as data_lib
    from jaxgen import tasks as tasks_lib
    from jaxgen.train import mesh as mesh_lib
    from jaxgen.train.loop import run_mesh, sharded_train_step

    unknown = set(steps) - set(STEPS)
    if unknown or not steps:
        raise ValueError(f"steps must be a non-empty subset of {STEPS}, got {tuple(steps)!r}")
    config = config.copy_and_resolve_references()
    if config.data.name not in _bundled_data_names():
        with config.unlocked():
            config.data.mock = True  # shapes from tfds metadata; no files read
    task = tasks_lib.build(config)
    mesh = run_mesh(config, devices)
    init_key, train_key, _ = jax.random.split(jax.random.key(config.seed), 3)  # as jaxgen.train.loop
    abstract = jax.eval_shape(task.init, init_key)
    state_sharding = mesh_lib.state_shardings(mesh, abstract, config.mesh.fsdp_min_size, config.mesh.shard_update)
    state_args = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract, state_sharding)
    replicated = mesh_lib.replicated(mesh)
    lowered = []
    for step in steps:
        if step == "train":
            info = data_lib.dataset_info(config.data)
            B = config.train.batch_size
            batch = {"x": jax.ShapeDtypeStruct((B,) + tuple(info.shape), jnp.float32)}
            if info.num_classes is not None:
                batch["label"] = jax.ShapeDtypeStruct((B,), jnp.int32)
            batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                sharding=mesh_lib.batch_sharding(mesh)), batch)
            fn = sharded_train_step(task, state_sharding, mesh_lib.batch_sharding(mesh), train_key, config)
            args = (state_args, batch, jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated))
            what = f"train step, global batch {B}"
        elif step == "inception":
            fn, args, what = _inception_step(mesh, config.eval.batch_size, data_lib.dataset_info(config.data).shape)
        else:
            if getattr(task, "eval_step", None) is None:
                raise ValueError(f"task {config.task!r} exposes no eval_step to compile (use --steps train)")
            fn, args, what = task.eval_step(state_args)
            args = _with_default_sharding(args, replicated)
        start = time.perf_counter()
        lowered.append((step, what, fn.lower(*args), time.perf_counter() - start))
    return task, mesh, abstract, state_sharding, lowered


def _compile_uncached(lowered):
    """`lowered.compile()`, not written to jax's persistent compilation cache: an executable compiled without a
    device cannot be loaded back from it (a second run would warn and compile again). jax decides once per process
    whether the cache is used, so the write is skipped through its minimum compile time."""
    import jax

    min_secs = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)


def compile_report(config, slice_name: str, steps=("train", "eval")) -> list[dict]:
    """Compile `steps` of `config` for `slice_name` and return one report row per step (see the module docstring)."""
    _ensure_cpu_backend()
    import jax

    chip, topology = parse_slice(slice_name)
    devices = topology_devices(topology)
    per_chip = _devices_per_chip(devices)
    _, mesh, abstract, state_sharding, lowered = lower_steps(config, devices, steps)
    common = dict(topology=topology, chip=chip.name, devices=len(devices), chips=len(devices) // per_chip,
                  mesh=", ".join(f"{k}={v}" for k, v in mesh.shape.items()),
                  params=sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params)),
                  sharding=sharding_summary(abstract, state_sharding))
    rows = []
    for step, what, low, lower_s in lowered:
        start = time.perf_counter()
        try:
            analysis = _analyse(_compile_uncached(low), chip, per_chip)
        except Exception as e:  # noqa: BLE001 - XLA:TPU refuses programs that exceed HBM; anything else re-raised
            analysis = _out_of_memory(e, chip, per_chip)
        row = dict(step=step, what=what, **common, **analysis)
        row["compile_s"] = lower_s + time.perf_counter() - start
        rows.append(row)
    return rows


def _inception_step(mesh, batch_size_per_device: int, image_shape):
    """The FID Inception-v3 extraction step over all of `mesh`'s devices (the run's evaluation uses each host's
    own devices; per chip the program is the same), with abstract weights."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxgen.metrics import fid, inception

    graphdef, flat = inception._abstract()
    flat_mesh = Mesh(np.asarray(mesh.devices).reshape(-1), ("data",))
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(flat_mesh, P())),
                         nnx.from_flat_state(flat))
    b = batch_size_per_device * flat_mesh.size
    h, w = image_shape[:2]  # grayscale is repeated to RGB before the step
    x = jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32, sharding=NamedSharding(flat_mesh, P("data")))
    fn = fid.extraction_step(graphdef, flat_mesh, (-1.0, 1.0))
    return fn, (state, x), (f"FID Inception-v3 features of {batch_size_per_device} {h}x{w} images per device "
                            f"(resized to 299x299)")


def _bundled_data_names() -> tuple[str, ...]:
    from jaxgen.data import toy

    return ("digits",) + tuple(toy.TOY_NAMES)


def _gib(b) -> str:
    return "-" if b is None else f"{b / GIB:.2f}"


def _num(v, scale: float = 1.0, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v * scale, fmt)


def format_report(rows: list[dict], config_spec: str, slice_name: str) -> str:
    """A human-readable table of `compile_report` rows."""
    r0 = rows[0]
    lines = [f"{config_spec} on {slice_name} ({r0['topology']}: {r0['chips']} x {r0['chip']}, "
             f"{r0['devices']} JAX devices), mesh {r0['mesh']}, {r0['params'] / 1e6:.2f}M parameters",
             "", "| step | HBM args GiB | outputs | temps | total / capacity GiB | GFLOP | GiB accessed | "
                 "bound ms | <= steps/s | bound by | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['step']} | {_gib(r['argument_bytes'])} | {_gib(r['output_bytes'])} | {_gib(r['temp_bytes'])} | "
            f"{_gib(r['total_bytes'])} / {_gib(r['hbm_bytes'])}{'' if r['fits'] else ' DOES NOT FIT'} | "
            f"{_num(r['flops'], 1e-9, '.1f')} | {_gib(r['bytes_accessed'])} | {_num(r['bound_s'], 1e3, '.3g')} | "
            f"{_num(r['bound_steps_per_s'])} | {r['bound_by'] or '-'} | {r['compile_s']:.1f} |")
    lines.append("")
    for r in rows:
        loops = " (a while loop's body, e.g. one sampler step, is counted once)" if r["loop_bodies_counted_once"] else ""
        error = f"; not compiled: {r['compile_error']}" if r["compile_error"] else ""
        lines.append(f"{r['step']}: {r['what']}{loops}{error}")
    lines.append(f"Per chip; roofline bound max(FLOPs / {r0['peak_flops'] / 1e12:.0f} TFLOP/s bf16, bytes / "
                 f"{r0['hbm_bandwidth'] / 1e9:.0f} GB/s HBM) for {r0['chip']}: a bound, not a measurement.")
    lines.append(f"Train-state sharding by PartitionSpec: {r0['sharding']}")
    return "\n".join(lines)


def not_fitting_line(rows: list[dict], slice_name: str) -> str | None:
    """One line naming the chip, what each step that does not fit needs and the capacity; None if all fit."""
    bad = [r for r in rows if not r["fits"]]
    if not bad:
        return None
    needs = " and ".join(f"the {r['step']} step needs {'at least ' if r['compile_error'] else ''}"
                         f"{_gib(r['total_bytes'])} GiB{' (temporaries alone)' if r['compile_error'] else ''}"
                         for r in bad)
    return f"does not fit on {slice_name}: {needs} per {bad[0]['chip']} chip, which has {_gib(bad[0]['hbm_bytes'])} GiB of HBM"


def append_json(path: str, rows: list[dict], **extra) -> None:
    """Append `rows` (each with `extra`) to the JSON list at `path` (created if missing)."""
    from etils import epath

    p = epath.Path(path)
    existing = json.loads(p.read_text()) if p.exists() else []
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(existing + [dict(extra, **r) for r in rows], indent=1) + "\n")


USAGE = ("usage: python -m jaxgen.aot --config configs/X.py[:variant] --topology SLICE "
         "[--config.key=value ...] [--steps train,eval,inception] [--json PATH]")


def parse_args(argv: list[str]) -> dict[str, Any]:
    from jaxgen.config import ConfigError

    out: dict[str, Any] = dict(config=None, topology=None, steps=None, json=None, overrides=[])
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        if name not in ("--config", "--topology", "--steps", "--json") and not name.startswith("--config."):
            raise ConfigError(f"unknown argument {argv[i]!r}; {USAGE}")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"{name} needs a value; {USAGE}")
            value, i = argv[i + 1], i + 1
        if name.startswith("--config."):
            out["overrides"].append((name[len("--config."):], value))
        else:
            out[name[2:]] = value
        i += 1
    for key in ("config", "topology"):
        if out[key] is None:
            raise ConfigError(f"--{key} is required; {USAGE}")
    if out["steps"] is not None:  # default: default_steps(config)
        out["steps"] = tuple(s.strip() for s in out["steps"].split(",") if s.strip())
        if not out["steps"] or set(out["steps"]) - set(STEPS):
            raise ConfigError(f"--steps={','.join(out['steps'])!r} must name some of {', '.join(STEPS)}, "
                              f"comma-separated")
    return out


def main(argv: list[str] | None = None) -> int:
    _ensure_cpu_backend()
    from jaxgen.config import ConfigError, apply_overrides, load_config, validate

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        parse_slice(args["topology"])
        config = load_config(args["config"])
        apply_overrides(config, args["overrides"])
        validate(config)
        rows = compile_report(config, args["topology"], args["steps"] or default_steps(config))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(rows, args["config"], args["topology"]), flush=True)
    if args["json"]:
        append_json(args["json"], rows, config=args["config"], slice=args["topology"])
    line = not_fitting_line(rows, args["topology"])
    if line:
        print(f"error: {args['config']} {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
