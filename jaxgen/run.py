"""Launch an experiment.

    python -m jaxgen.run --config configs/X.py[:variant] --workdir DIR [--config.key=value ...] [--dry_run]

Re-running the same command on the same workdir resumes from the latest checkpoint. Bad input (a
missing config file, a misspelt key, an invalid value) exits with status 2 and one line, before
anything is written to the workdir. SIGTERM saves a checkpoint and exits with status 143.
"""

from __future__ import annotations

import sys

USAGE = ("usage: python -m jaxgen.run --config configs/X.py[:variant] --workdir DIR "
         "[--config.key=value ...] [--dry_run]")


def parse_args(argv: list[str]) -> tuple[str, str | None, list[tuple[str, str]], bool]:
    """-> (config spec, workdir, [(dotted key, raw value)], dry_run)."""
    from jaxgen.config import ConfigError

    spec = workdir = None
    overrides, dry_run = [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        takes_value = name in ("--config", "--workdir") or name.startswith("--config.")
        if takes_value and not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"{name} needs a value")
            value, i = argv[i + 1], i + 1
        if name == "--config":
            spec = value
        elif name == "--workdir":
            workdir = value
        elif name.startswith("--config."):
            overrides.append((name[len("--config."):], value))
        elif name == "--dry_run":
            dry_run = True
        elif name in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        else:
            raise ConfigError(f"unknown argument '{arg}'; {USAGE}")
        i += 1
    if spec is None:
        raise ConfigError(f"--config is required; {USAGE}")
    if workdir is None and not dry_run:
        raise ConfigError(f"--workdir is required; {USAGE}")
    return spec, workdir, overrides, dry_run


def main(argv: list[str] | None = None) -> int:
    from jaxgen.config import ConfigError, apply_overrides, load_config, validate

    argv = sys.argv[1:] if argv is None else argv
    try:
        spec, workdir, overrides, dry_run = parse_args(argv)
        config = load_config(spec)
        apply_overrides(config, overrides)
        validate(config)
        if dry_run:
            print(config)
            return 0
        from jaxgen import tasks
        from jaxgen.train.loop import maybe_initialize_distributed

        maybe_initialize_distributed(config.distributed)  # before anything starts the JAX backend

        task = tasks.build(config)  # validates the task's own keys before the workdir is touched
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from jaxgen.train.loop import NonFiniteError, Preempted, train_and_evaluate

    try:
        train_and_evaluate(config, workdir, task=task)
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return 143
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:  # user input found invalid only once devices and data are known
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
