"""Tasks join a method, a network, data and evaluation. `build(config)` returns a `Task`.

A task module `jaxgen/tasks/<name>.py` defines `build(config) -> Task`; `config.task` names it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Task:
    """init(key) -> state; train_step(state, batch, key) -> (state, metrics);
    evaluate(state, key, workdir) -> metrics (and figures under workdir/figures);
    eval_step(state) -> (jitted_fn, args, description): the jitted function `evaluate` spends its time in
    (the sampler, or one batch of the forward pass) with its arguments for `state`, as ShapeDtypeStructs
    when `state` is abstract (host inputs without a sharding); for compile checks (jaxgen.aot)."""

    init: Callable[[jax.Array], Any]
    train_step: Callable[[Any, dict, jax.Array], tuple[Any, dict]]
    evaluate: Callable[[Any, jax.Array, str], dict]
    eval_step: Callable[[Any], tuple[Callable, tuple, str]] | None = None


def available() -> list[str]:
    import jaxgen.tasks as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def build(config) -> Task:
    from jaxgen.config import ConfigError

    if config.task not in available():
        raise ConfigError(f"config.task must be one of {available()}, got '{config.task}'")
    return importlib.import_module(f"jaxgen.tasks.{config.task}").build(config)
