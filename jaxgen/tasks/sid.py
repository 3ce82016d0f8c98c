"""Score identity Distillation, SiD (Zhou et al. 2024): a one-step generator distilled from a diffusion teacher with
three networks, the frozen teacher f_phi, the fake score f_psi and the generator G; the losses and the alternating
step: jaxgen.diffusion.sid (make_sid_step).

Config keys beyond the shared ones (defaults: SID_DEFAULTS and jaxgen/tasks/_one_step.py):
  teacher.workdir: the teacher (see _one_step: a trained diffusion workdir, or '' on gmm_grid: the exact mixture
    denoiser). With a workdir, the generator G(z) = f(sigma_init z, sigma_init) and the fake score are the teacher's
    network, read through its own process and prediction, and both start from its weights (as in SiD); config.model
    is then not used. With the mixture oracle they are config.model networks with EDM's preconditioning
    (prediction 'edm', sid.sigma_data), both starting from the same fresh initialisation.
  sid.alpha (1.2), sid.sigma_init (2.5), sid.t_max (0.8: sigma >= 0.085 in the losses), sid.sigma_data (0.5; the
    fake score's EDM loss weight and, with the oracle, the preconditioning).
  One training step: one fake-score update (DSM on the generator's samples), then one generator update against the
  updated fake score, each with config.optimizer (two optimizer states); an update whose loss or gradients are not
  finite is skipped (parameters and optimizer state kept) and counted: gen_skipped / fake_skipped in the logs. The
  logged `loss` is the generator loss of the updates that were applied (0 for a skipped one, so the training loop's
  non-finite check does not stop a run whose skipped updates the library already handled).
  State (jaxgen.train.state.TrainState, all checkpointed and resumed bitwise): params {'gen', 'fake'}, opt_state
  {'gen', 'fake'}, ema_params: the generator's EMA (config.ema_decay; evaluated), extra: {'teacher': its weights,
  'gen_skipped', 'fake_skipped'}. The data iterator is not read by the losses (SiD is data-free).
  eval.sample_steps: (1,) only (a one-step generator); scored as eval/sw2_1step or eval/fd_1step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxgen.config import ConfigError
from jaxgen.diffusion import objectives
from jaxgen.diffusion import sid as sid_lib
from jaxgen.diffusion.processes import make_process
from jaxgen.tasks import Task, dataset_info
from jaxgen.tasks._one_step import StepCountEval, denoiser_of, eval_section, load_teacher, network, section
from jaxgen.train.mesh import shard_like_update
from jaxgen.train.state import TrainState, ema_update, trainable

SID_DEFAULTS = dict(alpha=1.2, sigma_init=2.5, t_max=0.8, sigma_data=0.5)


def build(config) -> Task:
    info = dataset_info(config)
    s = section(config, "sid", SID_DEFAULTS)
    ev = eval_section(config, info)
    if tuple(ev.sample_steps) != (1,):
        raise ConfigError(f"config.eval.sample_steps must be (1,) for SiD (a one-step generator), got "
                          f"{ev.sample_steps}")
    if config.train.get("grad_accum_steps", 1) > 1:
        raise ConfigError("config.train.grad_accum_steps > 1 is not supported by SiD's two-optimizer step; set it to 1")
    teacher = load_teacher(config, info, "SiD")
    if teacher.trainable is not None:  # the generator and fake score are the teacher's network
        new_model = network(teacher.config.model, info, config.train.get("remat", False))
        param = teacher.param
    else:
        new_model = network(config.model, info, config.train.get("remat", False))
        param = objectives.Parameterization(make_process("edm"), "edm", s.sigma_data)
    t = trainable(config, new_model)

    def net_fn(params, key=None):
        model = t.module(params)
        return lambda x, tt: model(x, tt, key=key)

    denoise = denoiser_of(net_fn, param)

    def generator(params, x_in, key):
        return denoise(params, x_in, jnp.full(x_in.shape[:1], s.sigma_init, x_in.dtype), key)

    try:
        step = sid_lib.make_sid_step(generator, denoise, lambda p, x, sigma: teacher.denoise(p, x, sigma), t.tx, t.tx,
                                     (config.train.batch_size,) + tuple(info.shape), s.alpha, s.sigma_init,
                                     s.sigma_data, s.t_max)
    except ValueError as e:
        raise ConfigError(f"config.sid: {e}") from None

    def init(key):
        if teacher.trainable is not None:
            gen, fake = teacher.initial_params(), teacher.initial_params()
        else:
            gen = t.init(key).params
            fake = jax.tree.map(jnp.copy, gen)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=dict(gen=gen, fake=fake),
                          opt_state=dict(gen=t.tx.init(gen), fake=t.tx.init(fake)),
                          ema_params=jax.tree.map(jnp.copy, gen) if config.ema_decay else None,
                          extra=dict(teacher=teacher.initial_params(), gen_skipped=zero, fake_skipped=zero))

    def train_step(state, batch, key):
        del batch  # data-free
        x = state.extra
        sid_state = sid_lib.SiDState(step=state.step, gen_params=state.params["gen"],
                                     gen_opt_state=state.opt_state["gen"], fake_params=state.params["fake"],
                                     fake_opt_state=state.opt_state["fake"], gen_skipped=x["gen_skipped"],
                                     fake_skipped=x["fake_skipped"])
        new, m = step(sid_state, x["teacher"], key)
        ema = ema_update(state.ema_params, new.gen_params, config.ema_decay) if config.ema_decay else None
        metrics = {k: v for k, v in m.items() if k not in ("gen_ok", "fake_ok")}
        metrics.update(loss=jnp.where(m["gen_ok"], m["gen_loss"], 0.0), learning_rate=t.lr_schedule(state.step),
                       param_norm=optax.tree.norm(shard_like_update(new.gen_params)))
        return TrainState(step=new.step, params=dict(gen=new.gen_params, fake=new.fake_params),
                          opt_state=dict(gen=new.gen_opt_state, fake=new.fake_opt_state), ema_params=ema,
                          extra=dict(x, gen_skipped=new.gen_skipped, fake_skipped=new.fake_skipped)), metrics

    def one(params, key):
        z = jax.random.normal(key, (1,) + tuple(info.shape))
        return generator(params, s.sigma_init * z, None)[0]

    def generator_params(state):
        return state.ema_params if state.ema_params is not None else state.params["gen"]

    scorer = StepCountEval(config, ev, info, "sid")
    print(f"SiD from {teacher.describe}", flush=True)

    def evaluate(state, key, workdir):
        return scorer(generator_params(state), key, workdir, int(state.step), {"1step": one})

    def eval_step(state):
        return scorer.eval_step(generator_params(state), "1step", one)

    return Task(init=init, train_step=train_step, evaluate=evaluate, eval_step=eval_step)
