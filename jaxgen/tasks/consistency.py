"""Consistency models: distillation (CD), training (CT) (Song et al. 2023) and improved training (iCT, Song &
Dhariwal 2023) of a one-step / few-step generator; the losses and the sampler: jaxgen.diffusion.consistency.

Config keys beyond the shared ones (each section's defaults: CONSISTENCY_DEFAULTS and jaxgen/tasks/_one_step.py):
  model: the network F of f(x, sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4) ('mlp' | 'unet', as in the
    diffusion task); f(x, sigma_min) = x by construction.
  consistency.method: 'cd' | 'ct' | 'ict';  consistency.sigma_min / sigma_max / sigma_data / rho: the EDM noise
    range and preconditioning (ConsistencySpec); consistency.distance: 'l2' | 'pseudo_huber' (CD, CT; the papers'
    LPIPS is not available here; iCT always uses the pseudo-Huber distance).
  CD: a PF-ODE step of the teacher (config.teacher.workdir, see _one_step) between adjacent points of the Karras
    grid of consistency.num_scales (N = 18) levels with consistency.solver ('heun' | 'euler'); the target network is
    an EMA of the online one with rate consistency.target_ema (mu = 0.95).
  CT: no teacher (x0 + sigma_i z with the same z); adaptive N(k) = ct_num_scales(k, K, s0, s1) and target EMA
    mu(k) = ct_target_ema(k, K, s0, s1, mu0) over K = train.num_steps (s0 = 2, s1 = 150, mu0 = 0.9 when
    consistency.s0 / s1 are 0).
  iCT: pseudo-Huber, lambda = 1 / (sigma_{i+1} - sigma_i), lognormal pair sampling (consistency.p_mean / p_std,
    -1.1 / 2.0), the doubling N(k) = ict_num_scales(k, K, s0, s1) (10 / 1280 when 0); the target is the online
    network itself (no EMA target).
  The CD / CT target lives in the TrainState's `extra` ({'target': params}), updated after every optimizer step,
  so it is checkpointed and resumed with the rest; config.ema_decay is the separate EMA that is evaluated (the
  papers' 0.9999-type evaluation EMA). The online and target evaluations of a pair share one dropout key.
  eval.sample_steps: multistep consistency sampling (Algorithm 1: x = f(sigma_0 z, sigma_0), then re-noise to
    each next level tau with sqrt(tau^2 - sigma_min^2) z and apply f) at the levels consistency_sample_sigmas(n)
    (the interior points of the Karras grid; the papers tune them per data set), scored per step count
    (_one_step: eval/sw2_1step, eval/sw2_2step, ... or eval/fd_1step, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.config import ConfigError
from jaxgen.diffusion import consistency as cm
from jaxgen.tasks import Task, dataset_info
from jaxgen.tasks._one_step import StepCountEval, eval_section, load_teacher, network, section
from jaxgen.train.state import eval_params, trainable

METHODS = ("cd", "ct", "ict")
CONSISTENCY_DEFAULTS = dict(method="ct", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0, num_scales=18,
                            solver="heun", distance="l2", target_ema=0.95, s0=0, s1=0, mu0=0.9, p_mean=-1.1,
                            p_std=2.0)


def settings(config):
    """config.consistency with its defaults, checked; (settings, ConsistencySpec, (s0, s1))."""
    c = section(config, "consistency", CONSISTENCY_DEFAULTS)
    if c.method not in METHODS:
        raise ConfigError(f"config.consistency.method must be one of {METHODS}, got '{c.method}'")
    if c.solver not in ("heun", "euler") or c.distance not in ("l2", "pseudo_huber"):
        raise ConfigError(f"config.consistency.solver must be 'heun' or 'euler' and consistency.distance 'l2' or "
                          f"'pseudo_huber', got '{c.solver}', '{c.distance}'")
    try:
        spec = cm.ConsistencySpec(c.sigma_min, c.sigma_max, c.sigma_data, c.rho)
    except ValueError as e:
        raise ConfigError(f"config.consistency: {e}") from None
    K = config.train.num_steps
    s0, s1 = (c.s0 or 2, c.s1 or 150) if c.method == "ct" else (c.s0 or 10, c.s1 or 1280)
    try:
        if c.method == "cd" and c.num_scales < 2:
            raise ValueError(f"num_scales must be >= 2, got {c.num_scales}")
        if c.method == "cd" and not 0 <= c.target_ema < 1:
            raise ValueError(f"target_ema must be in [0, 1), got {c.target_ema}")
        if c.method == "ct":
            cm.ct_target_ema(0, max(K, 1), s0, s1, c.mu0)
        if c.method == "ict":
            cm.ict_num_scales(0, K, s0, s1)
    except ValueError as e:
        raise ConfigError(f"config.consistency ({c.method}): {e} (s0, s1 = consistency.s0, consistency.s1; "
                          f"K = train.num_steps)") from None
    if c.method != "ict" and config.train.get("grad_accum_steps", 1) > 1:
        raise ConfigError("config.train.grad_accum_steps > 1 is not supported with consistency.method 'cd' / 'ct' "
                          "(the target EMA would move on every micro-step); set it to 1")
    return c, spec, (s0, s1)


def build(config) -> Task:
    info = dataset_info(config)
    c, spec, (s0, s1) = settings(config)
    ev = eval_section(config, info)
    teacher = load_teacher(config, info, "consistency distillation (consistency.method='cd')") \
        if c.method == "cd" else None
    t = trainable(config, network(config.model, info, config.train.get("remat", False)))
    K = config.train.num_steps

    def apply(params, x_in, c_noise, key):
        return t.module(params)(x_in, c_noise, key=key)

    def init(key):
        state = t.init(key)
        extra = {}
        if c.method != "ict":
            extra["target"] = jax.tree.map(jnp.copy, state.params)
        if teacher is not None:
            extra["teacher"] = teacher.initial_params()
        return state.replace(extra=extra)

    def train_step(state, batch, key):
        k = state.step

        def loss_fn(params, extra, batch, key):
            x0 = batch["x"]
            if c.method == "cd":
                denoise = lambda x, s: teacher.denoise(extra["teacher"], x, s)  # noqa: E731
                loss = cm.cd_loss(apply, params, extra["target"], x0, key, denoise, c.num_scales, c.solver, spec,
                                  c.distance)
                n = jnp.asarray(c.num_scales)
            elif c.method == "ct":
                n = cm.ct_num_scales(k, K, s0, s1)
                loss = cm.ct_loss(apply, params, extra["target"], x0, key, n, spec, c.distance)
            else:
                n = cm.ict_num_scales(k, K, s0, s1)
                loss = cm.ict_loss(apply, params, x0, key, n, s1 + 1, c.p_mean, c.p_std, spec)
            return loss, ({"num_scales": n}, extra)

        def update_target(params, extra, step, key):
            if c.method == "ict":
                return params, extra
            mu = c.target_ema if c.method == "cd" else cm.ct_target_ema(step, K, s0, s1, c.mu0)
            target = jax.tree.map(lambda e, p: mu * e + (1.0 - mu) * p, extra["target"], params)
            out = dict(extra, target=target)
            return params, out

        return t.train_step(loss_fn, update_target)(state, batch, key)

    def draws(params):
        def one_for(n):
            sigmas = cm.consistency_sample_sigmas(n, spec)

            def one(p, key):
                f = lambda x, s: cm.consistency_function(apply, p, x, s, None, spec)  # noqa: E731
                return cm.consistency_sample(f, key, (1,) + tuple(info.shape), sigmas, spec)[0]

            return one

        return {f"{n}step": one_for(n) for n in ev.sample_steps}

    scorer = StepCountEval(config, ev, info, c.method)
    if teacher is not None:
        print(f"consistency distillation from {teacher.describe}", flush=True)

    def evaluate(state, key, workdir):
        return scorer(eval_params(state), key, workdir, int(state.step), draws(None))

    def eval_step(state):
        label, one = next(iter(draws(None).items()))
        return scorer.eval_step(eval_params(state), label, one)

    return Task(init=init, train_step=train_step, evaluate=evaluate, eval_step=eval_step)
