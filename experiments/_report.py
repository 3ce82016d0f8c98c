"""Shared helpers for the experiment scripts: tables, sample quality, result files, the digits model.

Every output goes through `jaxgen.paths`, so `--out` may be a local folder or a gs:// URL.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from jaxgen import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    """The CPU model and core count, e.g. 'Intel(R) Xeon(R) Processor @ 2.80GHz, 2 cores': benchmark rates depend
    on it (a VM's processor changes between sessions), so result files record it."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:  # local: this machine's processor
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    import platform

    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


CONVOLUTION_LIBRARIES = ("xla", "ynnpack")  # jaxgen's CLI default first, then jaxlib's (jaxgen.xla_cpu)


def xla_flags_for(library: str, flags: str) -> str:
    """$XLA_FLAGS `flags` with XLA:CPU's convolutions in XLA's own convolution ('xla': what `python -m jaxgen.run`
    sets) or in YNNPACK's fusions ('ynnpack': jaxlib's default, named explicitly)."""
    from jaxgen import xla_cpu

    option = xla_cpu.CONVOLUTIONS_OUTSIDE_YNNPACK.split("=")[0]
    kept = [f for f in flags.split() if f.split("=")[0] != option]
    return " ".join(kept + [xla_cpu.CONVOLUTIONS_OUTSIDE_YNNPACK if library == "xla"
                            else f"{option}=+individual_convolution"])


def rows_from_subprocess(module: str, argv: list[str], library: str, **env_vars: str) -> list[dict]:
    """`python -m module *argv --rows-json FILE` run with `library`'s convolutions (XLA reads its flags once per
    process, so each library gets a process of its own) and `env_vars` set; the rows it wrote to FILE."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.json")
        env = dict(os.environ, **env_vars, XLA_FLAGS=xla_flags_for(library, os.environ.get("XLA_FLAGS", "")))
        subprocess.run([sys.executable, "-m", module, *argv, "--rows-json", path], env=env, cwd=ROOT, check=True)
        with open(path) as f:  # local: this process's temporary file
            return [dict(r, convolutions=library) for r in json.load(f)]


def markdown_table(rows: list[dict], cols: list[str]) -> str:
    """Rows of flat dicts as a markdown table over `cols` (floats to 4 significant digits, None as '-')."""

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def sample_quality(x, ref, key, extra_metrics=None) -> dict:
    """{'sw2': sliced W2 (256 directions), 'mmd': unbiased RBF MMD (bandwidths relative to the data spread)}
    of samples x [N, ...] against reference data [M, ...], plus extra_metrics(x) if given."""
    import jax.numpy as jnp

    from jaxgen import metrics

    xf = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
    y = jnp.asarray(ref, jnp.float32).reshape(ref.shape[0], -1)
    scale = float(jnp.sqrt(jnp.mean(jnp.var(y, 0)) * y.shape[1]))
    bw = tuple(scale * h for h in (0.05, 0.1, 0.2, 0.5, 1.0))
    m = min(xf.shape[0], 2000)
    out = dict(sw2=float(metrics.sliced_wasserstein(xf, y, key, 256)),
               mmd=float(metrics.mmd(xf[:m], y[:m], bandwidths=bw)))
    return out | (extra_metrics(x) if extra_metrics is not None else {})


def prepare_out(out: str) -> str:
    """Check that the output folder `out` (local or gs://) can be written, before any work; create it if
    local. Exits 2 with one line naming it otherwise."""
    try:
        paths.check_writable(out, "--out")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None  # like argparse's usage errors
    paths.makedirs(out)
    return out


def parse_setting_args(description: str, settings: tuple[str, ...], digits_workdir: str, argv=None):
    """The arguments of the experiments run per setting (oracles and digits): --quick, --out, --settings (a
    comma-separated subset of `settings`, returned as a list) and --digits-workdir."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="experiments/results")
    ap.add_argument("--settings", default=",".join(settings),
                    help=f"comma-separated subset of {','.join(settings)}; the other settings' rows are kept")
    ap.add_argument("--digits-workdir", default=digits_workdir,
                    help="where the digits setting keeps its workdirs (reused when they hold checkpoints)")
    args = ap.parse_args(argv)
    args.settings = args.settings.split(",")
    for s in args.settings:
        if s not in settings:
            ap.error(f"--settings: unknown setting {s!r}; accepted: {', '.join(settings)}")
    return args


def write_json(path: str, obj, indent: int = 1) -> None:
    """`obj` as JSON in the file `path` (local or gs://), written whole."""
    paths.write_text(path, json.dumps(obj, indent=indent))


def write_text(path: str, text: str) -> None:
    paths.write_text(path, text)


def save_figure(fig, path: str, **savefig_kwargs) -> None:
    """`fig.savefig(path, ...)` to a local path or a gs:// URL."""
    paths.save_figure(fig, path, **savefig_kwargs)


def write_rows(path: str, rows: list[dict], settings) -> list[dict]:
    """Write `rows` to the JSON file `path`, keeping the rows it already has for settings not in `settings`
    (so one setting can be re-run alone). Returns all rows."""
    kept = []
    if paths.exists(path):
        kept = [r for r in json.loads(paths.read_text(path)) if r["setting"] not in set(settings)]
    rows = kept + rows
    write_json(path, rows)
    return rows


def digits_model(workdir: str, log=print):
    """The quickstart DDPM on the 8x8 digits (configs/quickstart.py), trained in `workdir` first if it holds
    no checkpoint (about 3 min on 2 cores). Returns dict(eps_fn, schedule, config, train, test, fd) with
    train/test images [N, 8, 8, 1] and fd(x) -> {'fd': Fréchet distance to the test split in the features
    of the digits classifier (the task's eval/fd)}."""
    import numpy as np

    from jaxgen import config as config_lib
    from jaxgen import data as data_lib
    from jaxgen import metrics
    from jaxgen.tasks import diffusion as diffusion_task
    from jaxgen.tasks import build_and_train

    config = config_lib.load_config(os.path.join(ROOT, "configs", "quickstart.py"))
    if not paths.listdir(paths.join(workdir, "checkpoints")):
        log(f"training the quickstart digits model in {workdir}")
        build_and_train(config, workdir)
    fns, schedule, step = diffusion_task.load_trained(config, workdir)
    eps_fn = fns.eps
    log(f"digits model: {workdir} at step {step}")
    train = data_lib.load_split(config.data, config.data.split_train)
    test = data_lib.load_split(config.data, config.data.split_test)
    extract, _ = metrics.classifier_features("digits", train["x"], train["label"], test["x"], test["label"],
                                             num_steps=config.eval.classifier_steps)
    real = np.asarray(extract(test["x"]))

    def fd(x):
        return {"fd": float(metrics.frechet_distance_from_features(np.asarray(extract(np.asarray(x))), real))}

    return dict(eps_fn=eps_fn, schedule=schedule, config=config, train=train["x"], test=test["x"], fd=fd)
