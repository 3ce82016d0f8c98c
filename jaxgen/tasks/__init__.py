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
    when `state` is abstract (host inputs without a sharding); for compile checks (jaxgen.aot);
    prepare(workdir, mesh) -> {'data': a data config replacing config.data, 'params': initial parameters}
    (both optional): work before training, run by every process, e.g. a teacher's reflow pairs."""

    init: Callable[[jax.Array], Any]
    train_step: Callable[[Any, dict, jax.Array], tuple[Any, dict]]
    evaluate: Callable[[Any, jax.Array, str], dict]
    eval_step: Callable[[Any], tuple[Callable, tuple, str]] | None = None
    prepare: Callable[[str, Any], dict] | None = None


def available() -> list[str]:
    import jaxgen.tasks as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


# Earlier names of tasks, still accepted: config.task='ddpm' (DDPM's discrete VP) is the diffusion task.
ALIASES = {"ddpm": "diffusion"}


def build(config) -> Task:
    from jaxgen.config import ConfigError

    name = ALIASES.get(config.task, config.task)
    if name not in available():
        raise ConfigError(f"config.task must be one of {available()}, got '{config.task}'")
    return importlib.import_module(f"jaxgen.tasks.{name}").build(config)


def build_and_train(config, workdir: str) -> dict:
    """Start jax.distributed where the run spans processes, build `config.task` and train it in `workdir`
    (jaxgen.train.loop.train_and_evaluate); returns the final evaluation metrics."""
    from jaxgen.train.loop import maybe_initialize_distributed, train_and_evaluate

    maybe_initialize_distributed(config.distributed)
    return train_and_evaluate(config, workdir, build(config))


def dataset_info(config):
    """`jaxgen.data.dataset_info(config.data)`, its errors as ConfigError (exit 2 on the command line)."""
    from jaxgen import data as data_lib
    from jaxgen.config import ConfigError

    try:
        return data_lib.dataset_info(config.data)
    except ValueError as e:
        raise ConfigError(str(e)) from None
