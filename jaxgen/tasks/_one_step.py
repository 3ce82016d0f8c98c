"""What the one-step and few-step generator tasks share (consistency, shortcut, sid): their config sections, the
teacher and the evaluation at several step counts.

Teacher (`config.teacher.workdir`): a trained diffusion workdir (task 'diffusion', any process and prediction,
e.g. configs/ddpm_toy2d.py or configs/edm_digits.py), read as an EDM denoiser D(x, sigma) = E[x0 | x0 + sigma n = x]
through `jaxgen.diffusion.consistency.edm_denoiser` with its evaluation (EMA) weights. '' on the 2-D `gmm_grid`
toy: the exact denoiser of its Gaussian mixture (`jaxgen.diffusion.oracle`), the perfect teacher, nothing to train
first (the smoke variants use it). teacher.untrained=True (smoke variants of image configs only): a freshly
initialised config.model network with EDM's preconditioning (sigma_data 0.5) stands in for the teacher, so a CD / SiD
program runs end to end without a trained workdir (its samples mean nothing). The teacher's weights are part of the training state (loaded into it at
initialisation through a host callback, so no program embeds them as constants), so a resumed run does not read
the teacher workdir again.

Evaluation (`config.eval`): eval.num_samples samples for every step count in eval.sample_steps, drawn in global
batches of eval.batch_size x devices sharded over the mesh, sample j from fold_in(eval key, j) alone, scored as the
diffusion task scores them (2-D: sliced W2 and MMD against the test split; images: the Fréchet distance in a small
classifier's features, or eval.metric 'inception': FID / IS), reported per step count, e.g. eval/sw2_1step,
eval/sw2_2step, eval/fd_1step; figures/samples_<task>-<n>step.png.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxgen import data as data_lib
from jaxgen import paths, viz
from jaxgen.config import ConfigError
from jaxgen.tasks import ALIASES, dataset_info

TEACHER_DEFAULTS = dict(workdir="", untrained=False)
EVAL_DEFAULTS = dict(num_samples=500, batch_size=128, sample_steps=(1, 2, 4), metric="classifier", fid_stats="",
                     inception_weights="", classifier_steps=500)


def section(config, name: str, defaults: dict) -> ml_collections.ConfigDict:
    """config.<name> with the defaults of the keys it lacks; ConfigError naming an unknown key."""
    given = dict(config.get(name) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown config.{name} keys {unknown}; accepted: {sorted(defaults)}")
    return ml_collections.ConfigDict(dict(defaults, **given))


def eval_section(config, info) -> ml_collections.ConfigDict:
    """config.eval with its defaults, checked."""
    ev = section(config, "eval", EVAL_DEFAULTS)
    steps = tuple(ev.sample_steps) if isinstance(ev.sample_steps, (tuple, list)) else (ev.sample_steps,)
    if not steps or any(not isinstance(n, int) or n < 1 for n in steps):
        raise ConfigError(f"config.eval.sample_steps must be a tuple of integers >= 1, got {ev.sample_steps!r}")
    ev.sample_steps = steps
    if ev.metric not in ("classifier", "inception"):
        raise ConfigError(f"config.eval.metric must be one of ('classifier', 'inception'), got '{ev.metric}'")
    if ev.metric == "inception" and (len(info.shape) != 3 or info.shape[-1] not in (1, 3)):
        raise ConfigError(f"config.eval.metric='inception' needs images (H, W, 1 or 3); '{info.name}' has shape "
                          f"{info.shape}")
    if ev.num_samples < (10 if ev.metric == "inception" and len(info.shape) == 3 else 2) or ev.batch_size < 1:
        raise ConfigError(f"config.eval.num_samples must be >= 2 (>= 10 for 'inception') and eval.batch_size >= 1, "
                          f"got {ev.num_samples}, {ev.batch_size}")
    return ev


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen denoiser: denoise(params, x, sigma [B]) = E[x0 | x0 + sigma n = x]; params: its weights (host).
    For a workdir teacher also its network (`trainable`, `param`: how its output is read) and config."""

    denoise: Callable
    params: Any
    describe: str
    trainable: Any = None
    param: Any = None
    config: Any = None

    def initial_params(self):
        """The teacher's weights as a traced value for `Task.init`: a host callback returns them, so the
        compiled init does not embed them as constants."""
        host = jax.tree.map(np.asarray, self.params)
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), host)
        return jax.pure_callback(lambda: host, shapes)


def denoiser_of(net_fn: Callable, param) -> Callable:
    """(params, x, sigma [B], key) -> EDM denoiser of the network net_fn(params, key) -> (x, t) -> output, read
    through `param` (a diffusion Parameterization) and converted to sigma by `edm_denoiser`."""
    from jaxgen.diffusion import consistency, objectives

    def denoise(params, x, sigma, key=None):
        fns = objectives.model_fns(net_fn(params, key), param)
        return consistency.edm_denoiser(fns.denoise, param.process)(x, sigma)

    return denoise


def load_teacher(config, info, purpose: str) -> Teacher:
    """The teacher of config.teacher.workdir (module docstring); ConfigError naming the key when it is missing,
    untrained, not a diffusion run or of another data shape, or '' on data without a known mixture."""
    from jaxgen.tasks import diffusion as diffusion_task

    key = "config.teacher.workdir"
    tc = section(config, "teacher", TEACHER_DEFAULTS)
    workdir = tc.workdir
    if tc.untrained and not workdir:
        from jaxgen.diffusion import objectives
        from jaxgen.diffusion.processes import make_process
        from jaxgen.train.state import trainable

        t = trainable(config, network(config.model, info))
        param = objectives.Parameterization(make_process("edm"), "edm", 0.5)

        def untrained_net(p, key=None):
            model = t.module(p)
            return lambda x, tt: model(x, tt, key=key)

        params = jax.device_get(t.initial_params(jax.random.key(0)))
        return Teacher(denoiser_of(untrained_net, param), params,
                       "a freshly initialised network (teacher.untrained=True: a smoke test, not a teacher)", t, param,
                       config)
    if not workdir:
        if config.data.get("name") == "gmm_grid":
            from jaxgen.diffusion.oracle import GaussianMixture

            w, m, s = (np.asarray(a, np.float32) for a in data_lib.gmm_grid_params())
            return Teacher(lambda p, x, sigma, key=None: GaussianMixture(**p).denoise(x, 1.0, sigma),
                           dict(weights=w, means=m, stds=s), "the exact gmm_grid mixture denoiser (oracle)")
        raise ConfigError(f"{key} is required for {purpose}: give the workdir of a trained diffusion run (e.g. "
                          f"configs/ddpm_toy2d.py, configs/edm_digits.py); '' means the exact mixture denoiser, "
                          f"which exists only for data.name='gmm_grid'")
    tconfig = diffusion_task.load_workdir_config(workdir, key)
    if ALIASES.get(tconfig.task, tconfig.task) != "diffusion":
        raise ConfigError(f"{key}={workdir!r} trained task '{tconfig.task}', not a diffusion model")
    ckpts = paths.join(workdir, "checkpoints")
    if not paths.exists(ckpts) or not any(n.isdigit() for n in paths.listdir(ckpts)):
        raise ConfigError(f"{key}={workdir!r} has no checkpoint yet; train it first")
    shape = tuple(dataset_info(tconfig).shape)
    if shape != tuple(info.shape):
        raise ConfigError(f"{key}={workdir!r} models data of shape {shape}, this run's data has shape "
                          f"{tuple(info.shape)}")
    t, params, param, step = diffusion_task.restore_trained(tconfig, workdir)

    def net_fn(p, key=None):
        model = t.module(p)
        return lambda x, tt: model(x, tt, key=key)

    return Teacher(denoiser_of(net_fn, param), jax.device_get(params),
                   f"{workdir} (step {step}, {param.process.__class__.__name__}, {param.prediction} prediction)",
                   t, param, tconfig)


def network(model_config, info, remat: bool = False) -> Callable[[jax.Array], nnx.Module]:
    """new_model(key) for `jaxgen.train.state.trainable`: the diffusion task's networks (config.model)."""
    from jaxgen.tasks.diffusion import make_model

    nnx.eval_shape(lambda: make_model(model_config, info, nnx.Rngs(0), remat))  # ConfigErrors now, at build
    return lambda key: make_model(model_config, info, nnx.Rngs(params=key), remat)


class StepCountEval:
    """evaluate(params, key, workdir, step, draws) -> metrics: `draws` maps a label ('1step') to
    one(params, key) -> one sample; each is drawn (module docstring) and scored, keys suffixed with the label."""

    def __init__(self, config, ev, info, name: str):
        self.config, self.ev, self.info, self.name = config, ev, info, name
        self.train_split = functools.cache(lambda: data_lib.load_split(config.data, config.data.split_train))
        self._compiled, self._refs = {}, None

    def compiled(self, label, one, params):
        """(jitted draw(params, key, start) -> global batch sharded over the mesh, the global batch size)."""
        from jaxgen.tasks._evaluation import batch_sharding_like

        sharding = batch_sharding_like(params)
        B = self.ev.batch_size * (sharding.mesh.size if isinstance(sharding, jax.sharding.NamedSharding) else 1)
        cache_key = (label, getattr(sharding, "mesh", None))
        if cache_key not in self._compiled:
            def draw(params, key, start):
                keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(start + jnp.arange(B))
                keys = jax.lax.with_sharding_constraint(keys, sharding)
                return jax.vmap(lambda k: one(params, k))(keys)

            self._compiled[cache_key] = jax.jit(draw, out_shardings=sharding)
        return self._compiled[cache_key], B

    def __call__(self, params, key, workdir: str, step: int, draws: dict) -> dict:
        from jaxgen.tasks._evaluation import Scorer, to_host

        k_sample, k_metric = jax.random.split(key)
        out = {}
        for label, one in draws.items():
            fn, B = self.compiled(label, one, params)
            tag = f"{self.name}-{label}"
            score = Scorer(self.config, self.ev, self.info, k_metric, self.train_split, workdir, tag, step,
                           **self._inception(params))
            metrics, shown = score(lambda start: to_host(fn(params, k_sample, jnp.int32(start))), self.ev.num_samples,
                                   B)
            out.update({f"{k}_{label}": v for k, v in metrics.items()})
            if jax.process_index() == 0:
                real = data_lib.load_split(self.config.data, self.config.data.split_test)["x"][:len(shown)]
                viz.save_samples_figure(paths.join(workdir, "figures", f"samples_{tag}.png"), shown, real,
                                        title=tag + ": " + ", ".join(f"{k}={v:.3g}" for k, v in metrics.items()))
        return out

    def _inception(self, params) -> dict:
        """The Scorer's Inception argument for eval.metric 'inception': the network and reference statistics,
        built once per run (as the diffusion task keeps them)."""
        from jaxgen.tasks import _evaluation as evaluation

        if self.ev.metric != "inception":
            return {}
        if self._refs is None:
            devices = list(evaluation.local_devices_like(params))
            self._refs = evaluation.InceptionRefs(self.config, self.ev, devices)
        return dict(inception=self._refs)

    def eval_step(self, params, label, one):
        """(jitted draw, its arguments as ShapeDtypeStructs, description) for compile checks."""
        fn, B = self.compiled(label, one, params)
        key = jax.eval_shape(lambda: jax.random.key(0))
        return fn, (params, key, jax.ShapeDtypeStruct((), jnp.int32)), f"{self.name} {label} sampler, batch {B}"
