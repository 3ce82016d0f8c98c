"""Optimizer from config: adamw | adam | sgd | lion, warmup + cosine/constant schedule, global-norm
clipping and parameter groups (per-group learning-rate and weight-decay multipliers).

Parameter groups are `(regex, lr_mult, wd_mult)` triples matched (re.search) against the '/'-joined
parameter path, first match wins; unmatched parameters use multipliers (1, 1). SSM layers, for
example, give A, B and the step size `lr_mult=0.1, wd_mult=0` (Gu et al. 2022; Orvieto et al. 2023).
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import optax

OPTIMIZERS = ("adamw", "adam", "sgd", "lion")
SCHEDULES = ("constant", "cosine")


def make_lr_schedule(opt_config, num_steps: int) -> optax.Schedule:
    """lr(step): linear warmup from 0 over `warmup_steps`, then constant or cosine decay to 0 at `num_steps`."""
    lr, warmup = opt_config.learning_rate, opt_config.warmup_steps
    if opt_config.schedule not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule must be one of {SCHEDULES}, got '{opt_config.schedule}'")
    if opt_config.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1), end_value=0.0)


# Betas when config.optimizer.b1 / b2 are None: the papers' defaults (Lion's b2 differs from Adam's).
DEFAULT_BETAS = {"adamw": (0.9, 0.999), "adam": (0.9, 0.999), "lion": (0.9, 0.99)}


def _base(name: str, lr, weight_decay: float, opt_config) -> optax.GradientTransformation:
    o = opt_config
    b1, b2 = DEFAULT_BETAS.get(name, (None, None))
    b1 = b1 if o.b1 is None else o.b1
    b2 = b2 if o.b2 is None else o.b2
    if name == "adamw":
        return optax.adamw(lr, b1=b1, b2=b2, eps=o.eps, weight_decay=weight_decay)
    if name == "adam":
        return optax.adam(lr, b1=b1, b2=b2, eps=o.eps)
    if name == "sgd":
        tx = optax.sgd(lr, momentum=o.momentum or None)
        return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx
    if name == "lion":
        from jaxgen.optim.lion import lion  # registered by name; arrives with the Lion module

        return lion(lr, b1=b1, b2=b2, weight_decay=weight_decay)
    raise ValueError(f"config.optimizer.name must be one of {OPTIMIZERS}, got '{name}'")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_optimizer_config(opt_config) -> None:
    """Raise ValueError naming the key, its value and what is accepted for a bad `config.optimizer`.

    Checked: name, schedule, learning_rate > 0, warmup_steps >= 0, weight_decay >= 0, grad_clip > 0 or None,
    b1 and b2 in [0, 1) or None, and param_groups as a tuple of (regex, lr_mult >= 0, wd_mult >= 0).
    """
    o = opt_config
    if o.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name must be one of {OPTIMIZERS}, got {o.name!r}")
    if o.schedule not in SCHEDULES:
        raise ValueError(f"config.optimizer.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
    if not (_is_number(o.learning_rate) and o.learning_rate > 0):
        raise ValueError(f"config.optimizer.learning_rate must be a finite number > 0, got {o.learning_rate!r}")
    if not (isinstance(o.warmup_steps, int) and o.warmup_steps >= 0):
        raise ValueError(f"config.optimizer.warmup_steps must be an integer >= 0, got {o.warmup_steps!r}")
    if not (_is_number(o.weight_decay) and o.weight_decay >= 0):
        raise ValueError(f"config.optimizer.weight_decay must be a finite number >= 0, got {o.weight_decay!r}")
    if o.grad_clip is not None and not (_is_number(o.grad_clip) and o.grad_clip > 0):
        raise ValueError(f"config.optimizer.grad_clip must be a number > 0 or None, got {o.grad_clip!r}")
    for key in ("b1", "b2"):
        b = o[key]
        if b is not None and not (_is_number(b) and 0.0 <= b < 1.0):
            raise ValueError(f"config.optimizer.{key} must be in [0, 1) or None (the paper default), got {b!r}")
    groups = o.param_groups
    if not isinstance(groups, (tuple, list)):
        raise ValueError(f"config.optimizer.param_groups must be a tuple of (regex, lr_mult, wd_mult), got {groups!r}")
    for g in groups:
        if not (isinstance(g, (tuple, list)) and len(g) == 3 and isinstance(g[0], str)
                and _is_number(g[1]) and _is_number(g[2]) and g[1] >= 0 and g[2] >= 0):
            raise ValueError(f"config.optimizer.param_groups entries must be (regex, lr_mult >= 0, wd_mult >= 0), "
                             f"got {g!r}")
        try:
            re.compile(g[0])
        except re.error as e:
            raise ValueError(f"config.optimizer.param_groups regex {g[0]!r} is invalid: {e}") from None


def param_path(path) -> str:
    """'/'-joined names of a pytree key path, e.g. 'blocks/0/ssm/log_step'."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def group_labels(params, param_groups) -> Any:
    """Label each leaf with the index of the first matching group ('default' if none)."""
    compiled = [re.compile(g[0]) for g in param_groups]

    def label(path, _):
        name = param_path(path)
        for i, pattern in enumerate(compiled):
            if pattern.search(name):
                return f"group{i}"
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(opt_config, num_steps: int) -> tuple[Callable[[Any], optax.GradientTransformation], optax.Schedule]:
    """Returns (`build(params) -> optax.GradientTransformation`, lr schedule).

    `build` needs the parameter tree because parameter groups label leaves by path.
    Order: clip by global norm (all parameters together), then the per-group optimizers.
    """
    check_optimizer_config(opt_config)
    schedule = make_lr_schedule(opt_config, num_steps)
    groups = tuple(tuple(g) for g in opt_config.param_groups)

    def scaled(mult):
        return schedule if mult == 1.0 else (lambda step: mult * schedule(step))

    def build(params) -> optax.GradientTransformation:
        wd = opt_config.weight_decay
        if groups:
            transforms = {"default": _base(opt_config.name, schedule, wd, opt_config)}
            for i, (_, lr_mult, wd_mult) in enumerate(groups):
                transforms[f"group{i}"] = _base(opt_config.name, scaled(lr_mult), wd * wd_mult, opt_config)
            tx = optax.multi_transform(transforms, group_labels(params, groups))
        else:
            tx = _base(opt_config.name, schedule, wd, opt_config)
        if opt_config.grad_clip:
            tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip), tx)
        return tx

    return build, schedule
