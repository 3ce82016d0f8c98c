"""Shortcut models (Frans et al. 2024): one flow network conditioned on its step size d, sampled with 1, 2, 4, ...,
num_base_steps equal steps; the loss and the sampler: jaxgen.diffusion.shortcut (package time: data at t = 0).

Config keys beyond the shared ones (defaults: SHORTCUT_DEFAULTS and jaxgen/tasks/_one_step.py):
  model: the diffusion task's network ('mlp' | 'unet'), wrapped by `StepConditioned`: a second time embedding of
    log2(1/d) / log2(num_base_steps) is added to the network's time embedding (the paper's DiT adds the t and d
    embeddings the same way); the output is the velocity s(x_t, t, d) = eps - x0 direction.
  shortcut.num_base_steps (M = 128, a power of two): the flow rows' base step 1/M, also the largest sample_steps;
  shortcut.bootstrap_fraction (0.25): the share of self-consistency rows per batch (every step size each batch).
  config.ema_decay (> 0; the paper's 0.999): the EMA weights, which give the self-consistency targets and are
    evaluated (TrainState.ema_params: checkpointed and resumed with the rest).
  eval.sample_steps: step counts, powers of two <= num_base_steps, scored per count (_one_step: eval/sw2_1step, ...).
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxgen.config import ConfigError
from jaxgen.diffusion import shortcut as sc
from jaxgen.nets.embeddings import TimeEmbedding
from jaxgen.tasks import Task, dataset_info
from jaxgen.tasks._one_step import StepCountEval, eval_section, network, section
from jaxgen.train.state import eval_params, trainable

SHORTCUT_DEFAULTS = dict(num_base_steps=128, bootstrap_fraction=0.25)


class StepConditioned(nnx.Module):
    """model(x, t [B], level [B], key=None): `net` (a diffusion network with a `temb` TimeEmbedding, as the MLP and
    the UNet have) with the embedding of level / max_level added to its time embedding for this call."""

    def __init__(self, net: nnx.Module, max_level: int, *, rngs: nnx.Rngs):
        self.net, self.max_level = net, max(int(max_level), 1)
        self.step_embed = TimeEmbedding(net.temb.dim, net.temb.dense1.out_features, rngs=rngs)

    def __call__(self, x, t, level, *, key=None):
        temb, d = self.net.temb, self.step_embed(level / self.max_level)
        object.__setattr__(self.net, "temb", lambda tt: temb(tt) + d)  # the net's own forward, one more input
        try:
            return self.net(x, t, key=key)
        finally:
            object.__setattr__(self.net, "temb", temb)


def build(config) -> Task:
    info = dataset_info(config)
    s = section(config, "shortcut", SHORTCUT_DEFAULTS)
    ev = eval_section(config, info)
    try:
        L = sc.shortcut_levels(s.num_base_steps)
        sc.shortcut_batch_split(config.train.batch_size, s.num_base_steps, s.bootstrap_fraction)
    except ValueError as e:
        raise ConfigError(f"config.shortcut / config.train.batch_size: {e}") from None
    bad = [n for n in ev.sample_steps if n > s.num_base_steps or n & (n - 1)]
    if bad:
        raise ConfigError(f"config.eval.sample_steps must be powers of two <= shortcut.num_base_steps = "
                          f"{s.num_base_steps}, got {bad}")
    if not config.ema_decay > 0:
        raise ConfigError("config.ema_decay must be > 0 for shortcut models: the EMA weights give the "
                          "self-consistency targets (the paper uses 0.999)")
    new_net = network(config.model, info, config.train.get("remat", False))
    t = trainable(config, lambda key: StepConditioned(new_net(key), L,
                                                      rngs=nnx.Rngs(params=jax.random.fold_in(key, 1))))

    def apply(params, x, tt, level, key):
        return t.module(params)(x, tt, level, key=key)

    def train_step(state, batch, key):
        def loss_fn(params, extra, batch, key):
            loss, parts = sc.shortcut_loss(apply, params, state.ema_params, batch["x"], key, s.num_base_steps,
                                           s.bootstrap_fraction, noise=batch.get("noise"))
            return loss, (parts, extra)

        return t.train_step(loss_fn)(state, batch, key)

    def draws():
        def one_for(n):
            def one(p, key):
                noise = jax.random.normal(key, (1,) + tuple(info.shape))
                return sc.shortcut_sample(lambda x, tt, lv: apply(p, x, tt, lv, None), noise, n, s.num_base_steps)[0]

            return one

        return {f"{n}step": one_for(n) for n in ev.sample_steps}

    scorer = StepCountEval(config, ev, info, "shortcut")

    def evaluate(state, key, workdir):
        return scorer(eval_params(state), key, workdir, int(state.step), draws())

    def eval_step(state):
        label, one = next(iter(draws().items()))
        return scorer.eval_step(eval_params(state), label, one)

    return Task(init=t.init, train_step=train_step, evaluate=evaluate, eval_step=eval_step)

