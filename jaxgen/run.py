"""Launch an experiment.

    python -m jaxgen.run --config configs/X.py[:variant] --workdir DIR [--config.key=value ...] [--dry_run]

Flags follow the flax examples and big_vision (absl): `--config=configs/X.py:arg`, `--config.key=value`
(or `--config.key value`), `--workdir`, `--dry_run` (print the resolved config and exit), `--flagfile=F`
(read flags from a file), `--help` / `--helpfull` (every flag, the `--jax_*` ones included), and any JAX
option as `--jax_NAME=value` (e.g. `--jax_log_compiles`).

Re-running the same command on the same workdir resumes from the latest checkpoint. A workdir is used by
one run at a time (a second one exits 2 naming the holder); resuming under a config that differs in more
than run length, cadence, `eval.*`, `distributed.*` or `mesh.*` exits 2 listing the keys, unless
`--config.train.resume_changed=True`. `train.num_steps` at or below the latest checkpoint trains nothing
and evaluates that checkpoint under its own step. A damaged latest checkpoint is named, moved to
`checkpoints_damaged/`, and the run resumes from the newest intact one (exit 2 if none is). Bad
input (a config file that does not load, a misspelt key, an invalid value, a workdir that cannot be
used) exits with status 2 and one line, before anything is written to the workdir; a bug still shows
its traceback. SIGTERM saves a checkpoint and exits with status 143 (Ctrl-C: 130). On CPU, convolutions run in
XLA's own convolution rather than YNNPACK (`jaxgen.xla_cpu`: set in $XLA_FLAGS before JAX starts its backends).

Overrides are parsed by `jaxgen.config.apply_overrides`, not by `ml_collections.config_flags`:
config_flags cannot set a field whose default is None (`optimizer.b1`, `eval.clip_x0`: "Type NoneType
... is not supported for overriding") nor clear a field to None, defers a missing config file to an
IOError on first access, and reports a failing `get_config` as a multi-line traceback; none of these
gives one line naming the key. The rest of the command line is absl's.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from absl import app, flags

from jaxgen import xla_cpu

FLAGS = flags.FLAGS
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def _define_flags() -> None:
    """Once per process: this module's flags, absl's help flags and JAX's options as absl flags."""
    if "workdir" in FLAGS:
        return
    flags.DEFINE_string("config", None, "config file and optional variant: configs/X.py[:variant]; "
                        "override keys with --config.key=value")
    flags.DEFINE_string("workdir", None, "directory (or gs:// URL) for checkpoints, metrics and figures")
    flags.DEFINE_bool("dry_run", False, "print the resolved config and exit")
    app.define_help_flags()
    import jax

    if "jax_platforms" not in FLAGS:
        jax.config.config_with_absl()


class Args(NamedTuple):
    spec: str
    workdir: str | None
    overrides: list[tuple[str, str]]
    dry_run: bool


def _split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Take `--config.key=value` / `--config.key value` out of argv (absl does not know these keys)."""
    from jaxgen.config import ConfigError

    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name, eq, value = arg.partition("=")
        if name.startswith(("--config.", "-config.")):
            key = name.split(".", 1)[1]
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise ConfigError(f"{name} needs a value (--config.{key}=VALUE)")
                value, i = argv[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _print_help(full: bool) -> None:
    print(__doc__)
    print(FLAGS.get_help() if full else FLAGS.module_help(__name__ if __name__ != "__main__" else sys.argv[0]))


def parse_args(argv: list[str]) -> Args:
    """Parse the command line (without the program name) into Args; ConfigError (one line) on bad flags."""
    from jaxgen.config import ConfigError

    _define_flags()
    FLAGS.unparse_flags()  # main() may be called more than once in a process (tests)
    try:
        argv = FLAGS.read_flags_from_files(["jaxgen.run", *argv], force_gnu=False)[1:]
    except flags.Error as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    if any(a.split("=")[0] in HELP_FLAGS for a in argv):
        _print_help(full=any(a.startswith("--helpfull") for a in argv))
        raise SystemExit(0)
    rest, overrides = _split_overrides(argv)
    try:
        positional = FLAGS(["jaxgen.run", *rest])[1:]
    except flags.Error as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    if positional:
        raise ConfigError(f"unexpected argument {positional[0]!r}; flags look like --config=configs/X.py "
                          f"--workdir=DIR --config.key=value")
    import jax

    jax.config.complete_absl_config(flags)  # --jax_* options, before anything starts the backend
    if FLAGS.config is None:
        raise ConfigError("--config is required (e.g. --config=configs/quickstart.py[:variant]); see --help")
    if FLAGS.workdir is None and not FLAGS.dry_run:
        raise ConfigError("--workdir is required (a directory or gs:// URL); see --help")
    return Args(FLAGS.config, FLAGS.workdir, overrides, FLAGS.dry_run)


def run(args: Args) -> int:
    """Load and check the config, then train; returns the exit status."""
    from jaxgen.config import ConfigError, apply_overrides, load_config, validate

    try:
        config = load_config(args.spec)
        apply_overrides(config, args.overrides)
        validate(config)
        if args.dry_run:
            print(config)
            return 0
        if not args.workdir:
            raise ConfigError(f"--workdir must be a non-empty path, got {args.workdir!r}")
        from jaxgen import tasks
        from jaxgen.train.loop import maybe_initialize_distributed

        maybe_initialize_distributed(config.distributed)  # before anything starts the JAX backend

        task = tasks.build(config)  # validates the task's own keys before the workdir is touched
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from jaxgen.train.loop import NonFiniteError, Preempted, train_and_evaluate

    try:
        train_and_evaluate(config, args.workdir, task=task)
    except Preempted as e:  # SIGTERM: 143, SIGINT: 130, after a checkpoint of the current step
        print(str(e), file=sys.stderr)
        return getattr(e, "exit_code", 143)
    except KeyboardInterrupt:  # Ctrl-C before the step loop, or a second one during it
        print("interrupted", file=sys.stderr)
        return 130
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:  # user input found invalid only once devices, data and the workdir are known
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI as a function: `main(['--config', 'configs/X.py', '--workdir', 'w'])` -> exit status."""
    from jaxgen.config import ConfigError

    argv = sys.argv[1:] if argv is None else list(argv)
    xla_cpu.set_default_flags()  # before JAX starts its backends (in this process: unless they already run)
    try:
        args = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    return run(args)


def _absl_flags_parser(argv: list[str]) -> Args | int:
    """app.run's parser: our one-line errors (exit 2) instead of absl's usage dump (exit 1)."""
    from jaxgen.config import ConfigError

    try:
        args = parse_args(argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if FLAGS["verbosity"].using_default_value:
        FLAGS.verbosity = -1  # absl would raise it to INFO: keep the libraries' INFO lines out of the output
    return args


if __name__ == "__main__":
    xla_cpu.set_default_flags()
    _define_flags()
    app.run(run, flags_parser=_absl_flags_parser)
