"""Experiment configs: load `configs/X.py[:arg]`, apply `--config.a.b=v` overrides, validate.

A config file defines `get_config(arg=None)` returning an `ml_collections.ConfigDict`. Configs are
locked after loading, so a misspelt key is an error; `ConfigError` messages are one line that names
the key and, for a typo, the nearest valid key. The CLI turns a `ConfigError` into exit status 2.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Iterable

import ml_collections


class ConfigError(ValueError):
    """Bad user input in a config: raised before anything is written to the workdir."""


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted keys of a (nested) ConfigDict, leaves and sub-dicts."""
    keys = []
    for k, v in config.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(flat_keys(v, full + "."))
    return keys


def _unknown_key(config, dotted: str) -> ConfigError:
    close = difflib.get_close_matches(dotted, flat_keys(config), n=1, cutoff=0.5)
    hint = f"; did you mean 'config.{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key 'config.{dotted}'{hint}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:arg]` and return its locked ConfigDict.

    A file that fails to import (syntax error, import error, any exception at import), a `get_config`
    that raises, or one that returns something other than a ConfigDict is a `ConfigError` (one line).
    """
    path, _, arg = spec.partition(":")
    if not path:
        raise ConfigError(f"--config must name a config file, e.g. configs/quickstart.py[:variant], got {spec!r}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: '{path}' (expected a path like configs/quickstart.py[:variant])")
    module_spec = importlib.util.spec_from_file_location(f"jaxgen_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file '{path}' has a syntax error at line {e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - the user's file: one line, not a traceback
        raise ConfigError(f"config file '{path}' failed to import: {type(e).__name__}: {_first_line(e)}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file '{path}' defines no get_config(arg=None)")
    call = f"get_config({arg!r})" if arg else "get_config()"
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:  # an unknown variant
        raise ConfigError(f"{path}: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: {call} raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: {call} returned {type(config).__name__}, expected an "
                          f"ml_collections.ConfigDict (a missing 'return'?)")
    _add_model_defaults(config)
    config.lock()
    return config


# Keys every network config has (the compute and parameter dtypes), added where a config leaves them out.
MODEL_DEFAULTS = dict(dtype="float32", param_dtype="float32")


def _add_model_defaults(config: ml_collections.ConfigDict) -> None:
    if isinstance(config.get("model"), ml_collections.ConfigDict):
        for k, v in MODEL_DEFAULTS.items():
            if k not in config.model:
                config.model[k] = v


def _parse_value(raw: str, current: Any, dotted: str) -> Any:
    """Parse an override string into the type of the value it replaces ('None' clears any field)."""
    if raw == "None":
        return None
    if isinstance(current, bool):
        low = raw.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"config.{dotted} must be a bool (true/false), got '{raw}'")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"config.{dotted} must be an integer, got '{raw}'") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"config.{dotted} must be a number, got '{raw}'") from None
    if isinstance(current, str):
        return raw
    try:  # tuples, lists, None-valued fields
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as e:
        if isinstance(current, (tuple, list)) or any(c in raw for c in "()[]{},"):
            reason = getattr(e, "msg", None) or _first_line(e)
            raise ConfigError(f"config.{dotted} must be a Python literal such as (1, 2), got {raw!r} ({reason})") from None
        value = raw  # a bare word: a string
    if isinstance(current, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(value)
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[tuple[str, str]]) -> None:
    """Set dotted keys (without the 'config.' prefix) from strings, keeping each field's type."""
    for dotted, raw in overrides:
        parent = config
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not isinstance(parent, ml_collections.ConfigDict) or part not in parent:
                raise _unknown_key(config, dotted)
            if i < len(parts) - 1:
                parent = parent[part]
        current = parent[parts[-1]]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"config.{dotted} is a group of keys; set one of its fields, e.g. 'config.{dotted}.{next(iter(current.keys()))}'")
        with parent.unlocked():
            parent[parts[-1]] = _parse_value(raw, current, dotted)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks shared by every config; tasks check their own keys when built."""
    for key in ("seed", "task", "train", "optimizer", "data", "eval", "mesh", "ema_decay"):
        _require(key in config, f"config has no '{key}' (every config needs seed, task, train, optimizer, data, eval, mesh, ema_decay)")
    t = config.train
    _require(isinstance(t.num_steps, int) and t.num_steps >= 0, f"config.train.num_steps must be an integer >= 0, got {t.num_steps!r}")
    _require(isinstance(t.batch_size, int) and t.batch_size > 0, f"config.train.batch_size must be a positive integer, got {t.batch_size!r}")
    _require(t.log_every > 0, f"config.train.log_every must be > 0, got {t.log_every!r}")
    _require(t.checkpoint_every > 0, f"config.train.checkpoint_every must be > 0, got {t.checkpoint_every!r}")
    _require(t.keep_checkpoints >= 1, f"config.train.keep_checkpoints must be >= 1, got {t.keep_checkpoints!r}")
    _check_knobs(config)
    _require(isinstance(t.get("resume_changed", False), bool),
             f"config.train.resume_changed must be true or false, got {t.get('resume_changed')!r}")
    from jaxgen.optim.factory import check_optimizer_config

    try:
        check_optimizer_config(config.optimizer)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _require(0.0 <= config.ema_decay < 1.0, f"config.ema_decay must be in [0, 1), got {config.ema_decay!r}")
    m = config.mesh
    _require(m.data == -1 or m.data >= 1, f"config.mesh.data must be >= 1 or -1 (all remaining devices), got {m.data!r}")
    _require(m.fsdp == -1 or m.fsdp >= 1, f"config.mesh.fsdp must be >= 1 or -1, got {m.fsdp!r}")
    _require(not (m.data == -1 and m.fsdp == -1), "config.mesh.data and config.mesh.fsdp cannot both be -1")
    _require(isinstance(m.shard_update, bool), f"config.mesh.shard_update must be true or false, got {m.shard_update!r}")


DTYPES = ("float32", "bfloat16", "float16")


def _check_knobs(config: ml_collections.ConfigDict) -> None:
    """grad_accum_steps, remat, profile_steps and the model's dtypes (when the config has them)."""
    t = config.train
    k = t.get("grad_accum_steps", 1)
    _require(isinstance(k, int) and not isinstance(k, bool) and k >= 1,
             f"config.train.grad_accum_steps must be an integer >= 1, got {k!r}")
    _require(isinstance(t.get("remat", False), bool), f"config.train.remat must be true or false, got {t.get('remat')!r}")
    p = tuple(t.get("profile_steps", ()) or ())
    _require(p == () or (len(p) == 2 and all(isinstance(v, int) for v in p) and 0 <= p[0] < p[1]),
             f"config.train.profile_steps must be () or (start, stop) with 0 <= start < stop, got {p!r}")
    model = config.get("model")
    for key in ("dtype", "param_dtype"):
        if isinstance(model, ml_collections.ConfigDict) and key in model:
            _require(model[key] in DTYPES, f"config.model.{key} must be one of {DTYPES}, got {model[key]!r}")


def smoke_train(config: ml_collections.ConfigDict, num_steps: int = 4, batch_size: int = 16) -> None:
    """The training part of every `:smoke` variant: a few steps, logged and checkpointed every 2 steps
    (so resume paths run), no periodic evaluation (the final one still runs)."""
    config.train.update(dict(num_steps=num_steps, batch_size=batch_size, log_every=2, checkpoint_every=2,
                             eval_every=0))


def base_config() -> ml_collections.ConfigDict:
    """The keys every experiment shares, with defaults; configs override what they need."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = ""
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=128, log_every=100, checkpoint_every=1000, keep_checkpoints=3,
        eval_every=0,  # 0: evaluate once at the end
        # Resuming a workdir whose config.json differs outside jaxgen.train.workdir.RESUME_ALLOWED stops
        # with exit 2; True accepts the change on purpose (the differences are logged).
        resume_changed=False,
        # Optimizer update every grad_accum_steps steps on the mean gradient (optax.MultiSteps); each step
        # still reads one batch of batch_size with its own key, so the update sees grad_accum_steps x batch_size.
        grad_accum_steps=1,
        remat=False,  # recompute activations in the backward pass (networks that support it: the UNet)
        compile_cache_dir="",  # persistent XLA cache; "": $JAX_COMPILATION_CACHE_DIR or WORKDIR/compile_cache
        profile_steps=(),  # (start, stop): jax.profiler trace of those steps into WORKDIR/tensorboard
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, schedule="constant", warmup_steps=0, weight_decay=0.0,
        grad_clip=1.0, eps=1e-8, momentum=0.9,
        b1=None, b2=None,  # None: the optimizer's paper default (Adam 0.9/0.999, Lion 0.9/0.99)
        # Parameter groups: tuple of (regex on the parameter path, lr multiplier, weight-decay multiplier).
        param_groups=(),
    ))
    c.ema_decay = 0.0
    # Parameters with at least fsdp_min_size elements are split along the fsdp axis. shard_update: the optimizer
    # state and EMA of such leaves are split over all devices, each updating its slice (jaxgen.train.mesh).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=2**16, shard_update=False))
    c.distributed = ml_collections.ConfigDict(dict(
        # 'auto': initialise jax.distributed when launched on a multi-host runtime (TPU VM pod, SLURM, ...).
        initialize="auto", coordinator_address="", num_processes=0, process_id=-1,
    ))
    c.data = ml_collections.ConfigDict()
    c.eval = ml_collections.ConfigDict()
    return c


def parse_variant(arg: str | None, groups: dict[str, tuple[str, ...]], defaults: dict[str, str]) -> dict:
    """A config file's variant string, e.g. 'lru,smoke' -> {'ssm': 'lru', 'smoke': True}.

    Comma-separated tokens in any order: at most one from each group ({'ssm': ('s4d', 's4', 'lru')}) and an
    optional 'smoke'. Groups not named take their default. Unknown, repeated or conflicting tokens raise
    ValueError naming what is accepted.
    """
    out = dict(defaults)
    out["smoke"] = False
    seen: set[str] = set()
    accepted = ", ".join(f"one of {'/'.join(v)}" for v in groups.values())
    for token in (arg or "").split(","):
        token = token.strip()
        if not token:
            continue
        if token in seen:
            raise ValueError(f"variant '{token}' given twice in '{arg}'")
        seen.add(token)
        if token == "smoke":
            out["smoke"] = True
            continue
        for group, choices in groups.items():
            if token in choices:
                if seen & set(choices) - {token}:
                    raise ValueError(f"more than one {group} in variant '{arg}'; give one of {choices}")
                out[group] = token
                break
        else:
            raise ValueError(f"unknown variant '{token}'; accepted: {accepted}, and/or smoke, comma-separated "
                             f"(e.g. '{next(iter(groups.values()))[-1]},smoke')")
    return out
