"""DDPM (Ho et al. 2020): eps-prediction with L_simple, ancestral sampling, sample-quality evaluation.

Config keys beyond the shared ones:
  model.name: 'unet' (images) | 'mlp' (vectors), plus the network's keyword arguments
  diffusion.schedule ('linear' | 'cosine'), diffusion.num_steps (T)
  eval.num_samples, eval.sampler ('ddpm' | 'ddim' | 'pc'), eval.sample_steps (K; 0 = all T steps),
  eval.variance ('beta' | 'beta_tilde', for ddpm), eval.eta (ddim), eval.skip ('uniform' | 'quadratic'),
  eval.clip_x0 (None or c), eval.untrained_baseline (also score a freshly initialised network),
  eval.classifier_steps (training steps of the feature classifier for images)
Re-running a finished workdir with other eval.* values only samples and evaluates again, e.g.
  python -m jaxgen.run --config configs/quickstart.py --workdir runs/quickstart --config.eval.sampler=ddim
      --config.eval.sample_steps=50
Images are scored by the Fréchet distance in the features of a small classifier trained on the same
dataset (`eval/fd`, with the classifier's test accuracy); 2-D data by sliced W2 and MMD against the
test split (`eval/sw2`, `eval/mmd`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxgen import data as data_lib
from jaxgen import diffusion, metrics, viz
from jaxgen.config import ConfigError
from jaxgen.optim import make_optimizer
from jaxgen.tasks import Task
from jaxgen.train.state import create_train_state, make_train_step

MODELS = ("unet", "mlp")
SAMPLERS = ("ddpm", "ddim", "pc")
EVAL_DEFAULTS = dict(num_samples=500, sampler="ddpm", sample_steps=0, variance="beta", eta=0.0, skip="uniform",
                     clip_x0=1.0, untrained_baseline=False, classifier_steps=500)


def eval_config(**overrides):
    """`config.eval` for this task: every key with its default."""
    import ml_collections

    unknown = set(overrides) - set(EVAL_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown eval keys {sorted(unknown)}; accepted: {sorted(EVAL_DEFAULTS)}")
    return ml_collections.ConfigDict(dict(EVAL_DEFAULTS, **overrides))


def sample(eps_fn, schedule, shape, key, ev):
    """Draw samples with the sampler named in `ev` (config.eval)."""
    K = ev.sample_steps or schedule.num_steps
    if ev.sampler == "ddpm":
        if K == schedule.num_steps:
            return diffusion.ddpm_sample(eps_fn, schedule, shape, key, variance=ev.variance, clip_x0=ev.clip_x0)
        return diffusion.ddpm_skip_sample(eps_fn, schedule, shape, key, K, variance=ev.variance, skip=ev.skip,
                                          clip_x0=ev.clip_x0)
    if ev.sampler == "ddim":
        return diffusion.ddim_sample(eps_fn, schedule, shape, key, K, eta=ev.eta, skip=ev.skip, clip_x0=ev.clip_x0)
    return diffusion.pc_sample(eps_fn, schedule, shape, key, K, skip=ev.skip)


def make_model(model_config, info, rngs: nnx.Rngs) -> nnx.Module:
    kwargs = {k: v for k, v in model_config.items() if k != "name"}
    if model_config.name == "unet":
        from jaxgen.nets.unet import UNet

        if len(info.shape) != 3:
            raise ConfigError(f"config.model.name='unet' needs image data (H, W, C); '{info.name}' has shape {info.shape}")
        return UNet(in_channels=info.shape[-1], image_size=info.shape[0], rngs=rngs, **kwargs)
    if model_config.name == "mlp":
        from jaxgen.nets.mlp import MLPDenoiser

        if len(info.shape) != 1:
            raise ConfigError(f"config.model.name='mlp' needs vector data (D,); '{info.name}' has shape {info.shape}")
        return MLPDenoiser(dim=info.shape[0], rngs=rngs, **kwargs)
    raise ConfigError(f"config.model.name must be one of {MODELS}, got '{model_config.name}'")


def _validate(config) -> None:
    if config.diffusion.schedule not in ("linear", "cosine"):
        raise ConfigError(f"config.diffusion.schedule must be 'linear' or 'cosine', got '{config.diffusion.schedule}'")
    if config.diffusion.num_steps < 1:
        raise ConfigError(f"config.diffusion.num_steps must be >= 1, got {config.diffusion.num_steps}")
    if config.eval.sampler not in SAMPLERS:
        raise ConfigError(f"config.eval.sampler must be one of {SAMPLERS}, got '{config.eval.sampler}'")
    if not 0 <= config.eval.sample_steps <= config.diffusion.num_steps:
        raise ConfigError(f"config.eval.sample_steps must be in [0, {config.diffusion.num_steps}] "
                          f"(0 = all steps), got {config.eval.sample_steps}")
    if config.eval.variance not in ("beta", "beta_tilde"):
        raise ConfigError(f"config.eval.variance must be 'beta' or 'beta_tilde', got '{config.eval.variance}'")
    if config.eval.num_samples < 2:
        raise ConfigError(f"config.eval.num_samples must be >= 2, got {config.eval.num_samples}")


def build(config) -> Task:
    _validate(config)
    try:
        info = data_lib.dataset_info(config.data)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    tx_builder, lr_schedule = make_optimizer(config.optimizer, config.train.num_steps)

    def new_model(key):
        return make_model(config.model, info, nnx.Rngs(params=key))

    graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: new_model(jax.random.key(0))), nnx.Param)
    tx = tx_builder(abstract_params)

    def eps_fn(params, key=None):
        model = nnx.merge(graphdef, params)
        return lambda x, t: model(x, t, key=key)

    def init(key):
        _, params = nnx.split(new_model(key), nnx.Param)
        return create_train_state(params, tx, config.ema_decay)

    def loss_fn(params, extra, batch, key):
        k_drop, k_loss = jax.random.split(key)
        loss = diffusion.ddpm_loss(eps_fn(params, k_drop), schedule, batch["x"], k_loss)
        return loss, ({}, extra)

    train_step = make_train_step(loss_fn, tx, lr_schedule, config.ema_decay)

    n = config.eval.num_samples
    sample_shape = (n,) + tuple(info.shape)

    @jax.jit
    def draw(params, key):
        return sample(eps_fn(params), schedule, sample_shape, key, config.eval)

    def evaluate(state, key, workdir):
        k_sample, k_metric, k_untrained = jax.random.split(key, 3)
        test = data_lib.load_split(config.data, config.data.split_test)
        params = state.ema_params if state.ema_params is not None else state.params
        generated = np.asarray(jax.device_get(draw(params, k_sample)))
        score = _scorer(config, info, test, k_metric)
        out = score(generated)
        if config.eval.untrained_baseline:
            untrained = init(k_untrained).params
            out.update({f"{k}_untrained": v for k, v in score(np.asarray(draw(untrained, k_sample))).items()
                        if not k.startswith("classifier")})
        if jax.process_index() == 0:
            viz.save_samples_figure(os.path.join(workdir, "figures", "samples.png"), generated, test["x"][:n],
                                    title=", ".join(f"{k}={v:.3g}" for k, v in out.items()))
        return out

    return Task(init=init, train_step=train_step, evaluate=evaluate)


def _scorer(config, info, test, key):
    """A function generated -> {metric: value} against the test split."""
    if len(info.shape) == 1:
        real = jnp.asarray(test["x"][:config.eval.num_samples])  # equal sizes; MMD is quadratic in memory

        def score(generated):
            g = jnp.asarray(generated)
            return {"sw2": float(metrics.sliced_wasserstein(g, real, key)), "mmd": float(metrics.mmd(g, real))}

        return score
    train = data_lib.load_split(config.data, config.data.split_train)
    extract, accuracy = metrics.classifier_features(info.name, train["x"], train["label"], test["x"], test["label"],
                                                      num_steps=config.eval.classifier_steps)
    real_features = np.asarray(extract(test["x"]))

    def score(generated):
        fd = metrics.frechet_distance_from_features(np.asarray(extract(generated)), real_features)
        return {"fd": float(fd), "classifier_test_accuracy": float(accuracy)}

    return score
