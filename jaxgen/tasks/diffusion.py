"""Diffusion and flow models of any process: one loss, any sampler, sample-quality evaluation in batches.

Config keys beyond the shared ones (`diffusion_config()` / `eval_config()` give every key with its default):
  model.name: 'unet' (images) | 'mlp' (vectors), plus the network's keyword arguments
  diffusion.process: 'ddpm' (DDPM's discrete VP: diffusion.schedule 'linear' | 'cosine', diffusion.num_steps T),
    'vp' (continuous VP SDE, diffusion.schedule 'linear' | 'cosine'), 've', 'edm', 'rf' (rectified flow)
  diffusion.prediction: 'eps' | 'x0' | 'v' | 'velocity' | 'edm' (EDM's preconditioned F, diffusion.sigma_data);
  diffusion.weighting: 'uniform' | 'snr' | 'min_snr' (diffusion.min_snr_gamma) | 'edm';
  diffusion.time_sampling: 'uniform' | 'lognormal' | 'logit_normal' | 'end' (t = 1: one-step distillation)
    (diffusion.time_mean / time_std; None: the
    kind's default, EDM's -1.2 / 1.2 or 0 / 1), diffusion.t_min (continuous processes' smallest training time).
    The loss and these choices: jaxgen.diffusion.objectives; DDPM's L_simple is process 'ddpm', 'eps', 'uniform'.
  eval.num_samples, eval.batch_size (per device: samples are drawn in global batches of batch_size x devices,
    sharded over the mesh; sample j depends only on (the eval key, j), so any device count gives the same samples);
  eval.sampler, eval.sample_steps, eval.variance, eval.eta, eval.skip, eval.clip_x0, eval.pixel_width: the sampler
    (jaxgen.diffusion.sampling; e.g. 'ddpm' with 'analytic' variance, 'ddim', 'heun', 'amed', 'flow_euler', 'rk45');
  eval.metric: images are scored by the Fréchet distance in the features of a small classifier trained on the
    same dataset ('classifier': eval/fd) or of the FID Inception-v3 ('inception': eval/fid and eval/is, against
    eval.fid_stats, an .npz of (mu, sigma), else the test split's statistics; eval.inception_weights, default:
    the published file, downloaded once; eval.precision_recall = N > 0 adds precision and recall, k = 3, against the
    first N test images: eval/precision, eval/recall); 2-D data by sliced W2 and MMD against the test split (eval/sw2, eval/mmd);
  eval.untrained_baseline (also score a freshly initialised network), eval.classifier_steps, eval.gamma_samples
    (Analytic-DPM's Gamma), eval.head_steps (SN/NPR heads), eval.amed_iters (AMED predictor);
  eval.likelihood (default False): also the test split's negative log-likelihood in bits/dim, on the first
    eval.likelihood_samples (256) test examples in batches of eval.batch_size per device: `eval/ode_bpd` (every
    process: the probability-flow ODE from t_min (1/T for 'ddpm') with a Hutchinson trace; images uniformly
    dequantised in bins of 2/255, i.e. as 8-bit data in [-1, 1]; vectors as densities) and for 'ddpm'
    `eval/vb_bpd`, the variational bound with the sampler's reverse variance (eval.variance 'beta' / 'beta_tilde';
    'analytic': Analytic-DPM's, from Gamma on all T steps; 'npr' / 'sn': beta_tilde) and the discretised decoder
    (images) or a Gaussian one (vectors). jaxgen.diffusion.likelihood.dataset_vb_bpd / dataset_ode_bpd.
Reflow and distillation (Liu et al. 2023): `reflow.teacher=WORKDIR` (a trained diffusion workdir) first generates
reflow.num_pairs (0: the training split's size) (sample, noise) pairs with the teacher's ODE (reflow.sampler /
reflow.sample_steps, a deterministic sampler), sharded over the mesh in batches of reflow.batch_size per device,
written as shards to WORKDIR/pairs/ (resumed at the first missing shard), then trains on them instead of the data:
the (k+1)-RF with diffusion.time_sampling 'uniform', the one-step generator with 'end' (t = 1). The student starts
from the teacher's weights (reflow.init_from_teacher). Processes 'rf' also log eval/straightness,
E_t |(x1 - x0) - v(x_t, t)|^2 along the student's own ODE trajectories (0 for straight paths; Heun on
2 eval.straightness_steps intervals, 0 = off).
The learned sampler parts are fitted on the frozen (EMA) model at the first evaluation that needs them and cached
under workdir/sampling/ per checkpoint step and step set. An Inception evaluation saves its running statistics
after every batch (workdir/eval/), so an interrupted 50,000-sample evaluation resumes from its last batch.
Re-running a finished workdir with other eval.* values only samples and evaluates again, e.g.
  python -m jaxgen.run --config configs/quickstart.py --workdir runs/quickstart --config.eval.sampler=ddim
      --config.eval.sample_steps=50 --config.eval.variance=analytic
Figures: figures/samples_<tag>.png, the tag naming the sampling (e.g. ddim-K50-eta0-analytic).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxgen import data as data_lib
from jaxgen import diffusion, paths, viz
from jaxgen.config import ConfigError
from jaxgen.diffusion import likelihood, objectives, sampling
from jaxgen.task_configs import DIFFUSION_DEFAULTS, REFLOW_DEFAULTS, eval_config
from jaxgen.tasks import ALIASES, Task, dataset_info
from jaxgen.tasks._evaluation import (InceptionRefs, Scorer, batch_sharding_like, cached_gamma, cached_pytree,
                                      local_devices_like, replicated_like, to_host)
from jaxgen.train import workdir as workdir_lib
from jaxgen.train.state import eval_params, trainable

MODELS = ("unet", "mlp")
PROCESSES = ("ddpm", "vp", "ve", "edm", "rf")
METRICS = ("classifier", "inception")
# Workdirs written before these keys existed (or with config.task='ddpm') resume under today's configs.
workdir_lib.register_defaults("diffusion", DIFFUSION_DEFAULTS)
workdir_lib.register_defaults("reflow", REFLOW_DEFAULTS)
workdir_lib.RENAMED_VALUES["task"] = {"ddpm": "diffusion"}


def settings(config) -> ml_collections.ConfigDict:
    """config.diffusion with the defaults of keys it lacks (configs written before they existed)."""
    return ml_collections.ConfigDict(dict(DIFFUSION_DEFAULTS, **config.diffusion))


def make_process(d) -> diffusion.Process:
    """The process of `settings(config)`."""
    if d.process == "ddpm":
        return diffusion.make_schedule(d.schedule, d.num_steps)
    if d.process == "vp":
        return diffusion.ContinuousVP(d.schedule)
    return diffusion.make_process(d.process)


def make_model(model_config, info, rngs: nnx.Rngs, remat: bool = False) -> nnx.Module:
    """The network of config.model (its keys are the network's arguments); remat: config.train.remat."""
    kwargs = {k: v for k, v in model_config.items() if k != "name"}
    if model_config.name == "unet":
        from jaxgen.nets.unet import UNet

        if len(info.shape) != 3:
            raise ConfigError(f"config.model.name='unet' needs image data (H, W, C); '{info.name}' has shape {info.shape}")
        try:
            return UNet(in_channels=info.shape[-1], image_size=info.shape[0], remat=remat, rngs=rngs, **kwargs)
        except (ValueError, TypeError) as e:  # the network's own argument checks name the key
            raise ConfigError(f"config.model: {e}") from None
    if model_config.name == "mlp":
        from jaxgen.nets.mlp import MLPDenoiser

        if len(info.shape) != 1:
            raise ConfigError(f"config.model.name='mlp' needs vector data (D,); '{info.name}' has shape {info.shape}")
        if remat:
            raise ConfigError("config.train.remat=True is not supported by the MLP denoiser (only by "
                              "config.model.name='unet'); set it to False")
        try:
            return MLPDenoiser(dim=info.shape[0], rngs=rngs, **kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config.model: {e}") from None
    raise ConfigError(f"config.model.name must be one of {MODELS}, got '{model_config.name}'")


def _one_of(key, value, accepted):
    if value not in accepted:
        raise ConfigError(f"config.{key} must be one of {accepted}, got '{value}'")


def _validate(config, d, info) -> None:
    _one_of("diffusion.process", d.process, PROCESSES)
    if d.process in ("ddpm", "vp"):
        _one_of("diffusion.schedule", d.schedule, ("linear", "cosine"))
    if d.num_steps < 1:
        raise ConfigError(f"config.diffusion.num_steps must be >= 1, got {d.num_steps}")
    _one_of("diffusion.prediction", d.prediction, objectives.PREDICTIONS)
    _one_of("diffusion.weighting", d.weighting, objectives.WEIGHTINGS)
    _one_of("diffusion.time_sampling", d.time_sampling, objectives.TIME_SAMPLINGS)
    if not 0 <= d.t_min < 1:
        raise ConfigError(f"config.diffusion.t_min must be in [0, 1), got {d.t_min}")
    if d.prediction in ("eps", "v", "edm") and d.process == "rf" and d.time_sampling == "uniform" and d.t_min == 0:
        raise ConfigError("config.diffusion.t_min must be > 0 for rectified flow with prediction "
                          f"'{d.prediction}' (sigma / alpha is 0 at t = 0)")
    ev = config.eval
    _one_of("eval.metric", ev.get("metric", "classifier"), METRICS)
    if ev.get("metric", "classifier") == "inception" and (len(info.shape) != 3 or info.shape[-1] not in (1, 3)):
        raise ConfigError(f"config.eval.metric='inception' needs images (H, W, 1 or 3); '{info.name}' has shape "
                          f"{info.shape}")
    if ev.get("metric", "classifier") == "inception" and ev.num_samples < 10:
        raise ConfigError(f"config.eval.num_samples must be >= 10 for eval.metric='inception' (the Inception Score "
                          f"averages 10 splits), got {ev.num_samples}")
    try:
        sampling.SamplerSpec.from_config(ev).check(make_process(d))
    except ValueError as e:
        raise ConfigError(f"config.eval: {e}") from None
    if ev.get("precision_recall", 0) and (ev.get("precision_recall", 0) < 4 or ev.get("metric") != "inception"):
        raise ConfigError(f"config.eval.precision_recall (test images to compare with, k = 3) must be 0 or >= 4 "
                          f"with eval.metric='inception', got {ev.precision_recall} with '{ev.get('metric')}'")
    if ev.get("straightness_steps", 0) < 0:
        raise ConfigError(f"config.eval.straightness_steps must be >= 0 (0 = off), got {ev.straightness_steps}")
    for name in ("gamma_samples", "head_steps", "amed_iters", "batch_size"):
        if ev.get(name, 1) < 1:
            raise ConfigError(f"config.eval.{name} must be >= 1, got {ev[name]}")
    if ev.num_samples < 2:
        raise ConfigError(f"config.eval.num_samples must be >= 2, got {ev.num_samples}")
    if not isinstance(ev.get("likelihood", False), bool):
        raise ConfigError(f"config.eval.likelihood must be True or False, got {ev.likelihood!r}")
    if ev.get("likelihood_samples", 1) < 1:
        raise ConfigError(f"config.eval.likelihood_samples must be >= 1, got {ev.likelihood_samples}")


def build(config) -> Task:
    info = dataset_info(config)
    d = settings(config)
    _validate(config, d, info)
    ev = eval_config(**config.eval)
    process = make_process(d)
    param = objectives.Parameterization(process, d.prediction, d.sigma_data)
    spec = sampling.SamplerSpec.from_config(ev)
    t = trainable(config, lambda key: make_model(config.model, info, nnx.Rngs(params=key),
                                                 remat=config.train.get("remat", False)))
    loss_kwargs = dict(weighting=d.weighting, time_sampling=d.time_sampling, t_min=d.t_min, time_mean=d.time_mean,
                       time_std=d.time_std, min_snr_gamma=d.min_snr_gamma)

    def net(params, key=None):
        model = t.module(params)
        return lambda x, tt: model(x, tt, key=key)

    def loss_fn(params, extra, batch, key):
        k_drop, k_loss = jax.random.split(key)
        loss = objectives.diffusion_loss(net(params, k_drop), param, batch["x"], k_loss, eps=batch.get("noise"),
                                         **loss_kwargs)
        return loss, ({}, extra)

    rf = ml_collections.ConfigDict(dict(REFLOW_DEFAULTS, **config.get("reflow", {})))
    if "reflow" in config and not rf.teacher:
        raise ConfigError("config.reflow.teacher is empty: reflow and distillation train on a teacher's pairs; give "
                          "the teacher's workdir with --config.reflow.teacher=WORKDIR")
    teacher = _Teacher(rf, config, info) if rf.teacher else None

    def prepare(workdir, mesh):
        """Reflow / distillation: the teacher's pairs in WORKDIR/pairs, and its weights to start from."""
        if teacher is None:
            return {}
        pairs_dir = paths.join(workdir, "pairs")
        params = teacher.generate_pairs(pairs_dir, mesh, rf.num_pairs or info.num_train,
                                        jax.random.fold_in(jax.random.key(config.seed), 0x7E1))
        data = ml_collections.ConfigDict(dict(config.data, pairs=pairs_dir))
        return dict(data=data, params=params) if rf.init_from_teacher else dict(data=data)

    @functools.cache
    def straightness(sharding, batch):  # noise drawn split over the devices: each traces only its share
        def mean_straightness(params, key):
            x1 = jax.lax.with_sharding_constraint(jax.random.normal(key, (batch,) + tuple(info.shape)), sharding)
            fns = objectives.model_fns(net(params), param)
            return jnp.mean(diffusion.straightness(fns.velocity, x1, num_steps=ev.straightness_steps))

        return jax.jit(mean_straightness)

    @functools.cache
    def inception_refs(devices):  # the network and the real data's features: once per run, not per evaluation
        return InceptionRefs(config, ev, list(devices))

    @functools.cache
    def train_split():  # loaded once, for the learned sampler parts and the image classifier
        return data_lib.load_split(config.data, config.data.split_train)

    learned = _LearnedParts(spec, process, param, net, t, info, ev, config, train_split)
    draw = _BatchSampler(spec, process, param, net, learned, info.shape, ev.batch_size, d.t_min)

    def evaluate(state, key, workdir):
        k_sample, k_metric, k_untrained, k_fit = jax.random.split(key, 4)
        params = eval_params(state)
        aux = learned.inputs(params, k_fit, paths.join(workdir, "sampling"), int(state.step))
        tag = spec.tag()
        inception = inception_refs(tuple(local_devices_like(params))) if ev.metric == "inception" else None
        score = Scorer(config, ev, info, k_metric, train_split, workdir, tag, int(state.step), inception)
        B = draw.global_batch(params)
        out, shown = score(lambda start: draw(params, aux, k_sample, start), ev.num_samples, B)
        if d.process == "rf" and ev.straightness_steps:
            out["straightness"] = float(straightness(batch_sharding_like(params), B)(params, k_fit))
        if ev.untrained_baseline:  # the same sampler without its learned inputs
            plain = draw.without_learned()
            untrained = jax.device_put(t.init(k_untrained).params, replicated_like(params))
            baseline, _ = score(lambda start: plain(untrained, {}, k_sample, start), ev.num_samples, B,
                                resumable=False)
            out.update({f"{k}_untrained": v for k, v in baseline.items() if not k.startswith("classifier")})
        if ev.likelihood:
            x = data_lib.load_split(config.data, config.data.split_test)["x"][:ev.likelihood_samples]
            out.update(_likelihood_bpd(x, process, d, objectives.model_fns(net(params), param), info, B,
                                       batch_sharding_like(params), jax.random.fold_in(key, 1), learned.vb_variance(
                                           params, k_fit, paths.join(workdir, "sampling"), int(state.step))))
        if jax.process_index() == 0:
            real = data_lib.load_split(config.data, config.data.split_test)["x"][:len(shown)]
            viz.save_samples_figure(paths.join(workdir, "figures", f"samples_{tag}.png"), shown, real,
                                    title=tag + ": " + ", ".join(f"{k}={v:.3g}" for k, v in out.items()))
        print(f"sampled with {tag}: figures/samples_{tag}.png", flush=True)
        return out

    def eval_step(state):
        """One batch of the sampler evaluate() runs, with its learned inputs at their shapes (Gamma = 0)."""
        params = eval_params(state)
        fn, aux = draw.compiled_for(params, learned.abstract_inputs())
        key = jax.eval_shape(lambda: jax.random.key(0))
        start = jax.ShapeDtypeStruct((), jnp.int32)
        return fn, (params, aux, key, start), f"{spec.tag()} sampler, batch {ev.batch_size} per device"

    return Task(init=t.init, train_step=t.train_step(loss_fn), evaluate=evaluate, eval_step=eval_step,
                prepare=prepare)


class _Teacher:
    """A trained diffusion workdir as a reflow / distillation teacher (Liu et al. 2023), validated at build."""

    def __init__(self, rf, config, info):
        self.workdir, self.rf = rf.teacher, rf
        self.config = load_workdir_config(rf.teacher, "config.reflow.teacher")
        if ALIASES.get(self.config.task, self.config.task) != "diffusion":
            raise ConfigError(f"config.reflow.teacher={rf.teacher!r} trained task '{self.config.task}', not a "
                              f"diffusion model")
        if not any(n.isdigit() for n in paths.listdir(paths.join(rf.teacher, "checkpoints"))):
            raise ConfigError(f"config.reflow.teacher={rf.teacher!r} has no checkpoint yet; train it first")
        shape = dataset_info(self.config).shape
        if tuple(shape) != tuple(info.shape):
            raise ConfigError(f"config.reflow.teacher={rf.teacher!r} models data of shape {tuple(shape)}, this run's "
                              f"data has shape {tuple(info.shape)}")
        if rf.init_from_teacher and (_config_from_json(json.dumps(config.model.to_dict())).to_dict()
                                     != self.config.model.to_dict()):
            raise ConfigError(f"config.reflow.init_from_teacher=True needs the teacher's config.model "
                              f"({self.config.model.to_dict()}); set the same model or reflow.init_from_teacher=False")
        self.process = make_process(settings(self.config))
        self.spec = sampling.SamplerSpec(rf.sampler, rf.sample_steps, clip_x0=None)
        if rf.batch_size < 1 or rf.num_pairs < 0:
            raise ConfigError(f"config.reflow.batch_size must be >= 1 and num_pairs >= 0, got {rf.batch_size}, "
                              f"{rf.num_pairs}")
        try:
            self.spec.check(self.process)
            sampling.start_scale(self.process, self.spec)
        except ValueError as e:
            raise ConfigError(f"config.reflow: {e}") from None

    def generate_pairs(self, directory, mesh, num_pairs: int, key):
        """Write the teacher's (x0, x1) pairs as shards of reflow.batch_size x devices (skipping finished shards);
        returns the teacher's evaluation weights (host arrays)."""
        from jaxgen.data import pairs as pairs_lib

        t, params, param, _ = restore_trained(self.config, self.workdir)
        replicated = NamedSharding(mesh, P())
        batch_sharding = NamedSharding(mesh, P(mesh.axis_names))
        B = self.rf.batch_size * mesh.size
        num = -(-num_pairs // B)
        done = pairs_lib.num_shards(directory)
        if done < num:
            spec, process, shape = self.spec, self.process, tuple(dataset_info(self.config).shape)

            @functools.partial(jax.jit, out_shardings=(batch_sharding, batch_sharding))
            def generate(params, start):
                keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(start + jnp.arange(B))
                keys = jax.lax.with_sharding_constraint(keys, batch_sharding)
                model = t.module(params)
                fns = objectives.model_fns(lambda x, tt: model(x, tt), param)
                one = lambda k: jax.tree.map(lambda a: a[0], sampling.sample_pair(fns, process, (1,) + shape, k,  # noqa: E731
                                                                                   spec))
                return jax.vmap(one)(keys)

            on_mesh = jax.device_put(params, replicated)
            from tqdm import tqdm

            for i in tqdm(range(done, num), initial=done, total=num, desc="reflow pairs", unit="shard",
                          disable=jax.process_index() != 0):
                x0, x1 = (to_host(a)[:num_pairs - i * B] for a in generate(on_mesh, jnp.int32(i * B)))
                if jax.process_index() == 0:
                    pairs_lib.write_shard(directory, i, x0, x1)
            print(f"reflow pairs: {num_pairs} in {directory} ({num - done} shards generated)", flush=True)
        return jax.device_get(params)


class _LearnedParts:
    """The learned inputs of a sampler (Analytic-DPM's variances, an SN/NPR head, an AMED predictor): fitted on
    the frozen model once per checkpoint step and step set, then cached under workdir/sampling/."""

    def __init__(self, spec, process, param, net, t, info, ev, config, train_split):
        self.spec, self.process, self.param, self.net, self.t = spec, process, param, net, t
        self.info, self.ev, self.config, self.train_split = info, ev, config, train_split
        self.amed_graphdef, self.amed_abstract = nnx.split(
            nnx.eval_shape(lambda: diffusion.AMEDPredictor(rngs=nnx.Rngs(0))))

    def _timesteps(self):
        return diffusion.skip_timesteps(self.process.num_steps, self.spec.steps or self.process.num_steps,
                                        self.spec.skip)

    def variances(self, gamma):
        s = self.spec
        return diffusion.analytic_variance(self.process, self._timesteps(), gamma, s.eta_value, s.data_range,
                                           s.pixel_width)

    def vb_variance(self, params, key, cache_dir, step):
        """The variational bound's reverse variance for eval.variance: 'beta' / 'beta_tilde', Analytic-DPM's
        [T] (Gamma on all T steps, cached as inputs() caches it) or 'beta_tilde' for 'npr' / 'sn'; None if the
        process is not the discrete VP."""
        if not isinstance(self.process, diffusion.DiscreteVP):
            return None
        if self.spec.variance != "analytic":
            return self.spec.variance if self.spec.variance in ("beta", "beta_tilde") else "beta_tilde"
        T, n = self.process.num_steps, self.ev.gamma_samples
        ts = np.arange(1, T + 1)
        eps = objectives.model_fns(self.net(params), self.param).eps
        gamma = cached_gamma(paths.join(cache_dir, f"gamma_step{step}_K{T}_uniform.json"), ts, lambda: (
            diffusion.estimate_gamma(eps, self.process, self.train_split()["x"][:n], key, ts, batch_size=min(n, 500))))
        return likelihood.analytic_vb_variance(self.process, gamma, self.spec.data_range)

    def inputs(self, params, key, cache_dir, step) -> dict:
        """{'variances' | 'head' | 'amed': ...} for the sampler, fitted or read from the cache."""
        s, ev = self.spec, self.ev
        fns = objectives.model_fns(self.net(params), self.param)
        if s.learned == "analytic":
            ts = self._timesteps()
            gamma = cached_gamma(paths.join(cache_dir, f"gamma_step{step}_K{len(ts)}_{s.skip}.json"), ts, lambda: (
                diffusion.estimate_gamma(fns.eps, self.process, self.train_split()["x"][:ev.gamma_samples], key, ts,
                                         batch_size=min(ev.gamma_samples, 500))))
            return dict(variances=np.asarray(self.variances(gamma)))  # baked into the sampler (NumPy)
        if s.learned in ("npr", "sn"):
            def fit():
                head_init = self.t.init(jax.random.fold_in(key, 1)).params
                fitted, _, loss = diffusion.fit_cov_head(
                    s.variance, lambda p, x, tt: self.net(p)(x, tt), head_init, fns.eps, self.process,
                    self.train_split()["x"], key, ev.head_steps, self.config.train.batch_size,
                    self.config.optimizer.learning_rate)
                print(f"{s.variance.upper()} head: {ev.head_steps} steps, final loss {loss:.4g}", flush=True)
                return fitted

            head = cached_pytree(paths.join(cache_dir, f"{s.variance}_head_step{step}"), self.t.abstract_params, fit)
            return dict(head=jax.device_put(head, replicated_like(params)))
        if s.learned == "amed":
            def fit():
                K = s.steps or self.process.num_steps
                ts, afs = sampling.pf_ode_grid(self.process, K, "amed")
                sigma0 = self.process.sigma(jnp.asarray(ts[0], jnp.float32))
                denoise = lambda x, tt: jnp.clip(fns.denoise(x, tt), -s.clip_x0, s.clip_x0) \
                    if s.clip_x0 is not None else fns.denoise(x, tt)  # noqa: E731
                _, fit_info = diffusion.fit_amed(
                    denoise, self.process, ts, lambda k, m: sigma0 * jax.random.normal(k, (m,) + tuple(self.info.shape)),
                    key, afs=afs, num_train=512, batch_size=64, num_iters=ev.amed_iters)
                print(f"AMED predictor: {ev.amed_iters} steps, loss {fit_info['losses'][0]:.4g} -> "
                      f"{fit_info['losses'][-1]:.4g}, mean r per step {np.round(fit_info['r'], 3)}", flush=True)
                return fit_info["state"]

            amed = cached_pytree(paths.join(cache_dir, f"amed_step{step}_nfe{s.steps}"), self.amed_abstract, fit)
            return dict(amed=jax.device_put(amed, replicated_like(params)))
        return {}

    def abstract_inputs(self) -> dict:
        """inputs() as ShapeDtypeStructs (for compile checks; Analytic-DPM's variances at Gamma = 0)."""
        s = self.spec
        if s.learned == "analytic":
            return dict(variances=np.asarray(self.variances(np.zeros(len(self._timesteps())))))
        shapes = {"npr": ("head", self.t.abstract_params), "sn": ("head", self.t.abstract_params),
                  "amed": ("amed", self.amed_abstract)}
        if s.learned in shapes:
            name, tree = shapes[s.learned]
            return {name: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)}
        return {}

    def sampler_kwargs(self, aux) -> dict:
        """`sampling.sample` keyword arguments from inputs()."""
        s = self.spec
        if "variances" in aux:
            return dict(variances=aux["variances"])
        if "head" in aux:
            make_cov = diffusion.npr_cov_fn if s.variance == "npr" else diffusion.sn_cov_fn
            return dict(cov_fn=make_cov(lambda x, tt: jax.nn.softplus(self.net(aux["head"])(x, tt)), self.process,
                                        s.data_range))
        if "amed" in aux:
            return dict(rc_fn=diffusion.make_rc_fn(self.amed_graphdef, aux["amed"]))
        return {}


class _BatchSampler:
    """draw(params, aux, key, start) -> samples start .. start + B - 1 (B = batch_size x devices of the params'
    mesh) as a NumPy array on every process; sample j drawn from fold_in(key, j) alone. The jitted sampler
    is sharded over the batch and compiled once per mesh."""

    def __init__(self, spec, process, param, net, learned, shape, batch_size, t_min):
        self.spec, self.process, self.param, self.net, self.learned = spec, process, param, net, learned
        self.shape, self.batch_size, self.t_min = tuple(shape), int(batch_size), t_min
        self._compiled = {}

    def without_learned(self) -> "_BatchSampler":
        return _BatchSampler(self.spec.without_learned(), self.process, self.param, self.net, self.learned,
                             self.shape, self.batch_size, self.t_min)

    def global_batch(self, params) -> int:
        sharding = batch_sharding_like(params)
        return self.batch_size * (sharding.mesh.size if isinstance(sharding, NamedSharding) else 1)

    def compiled_for(self, params, aux):
        """(the jitted sampler, its aux argument) for the mesh holding `params`. Analytic-DPM's variances are
        host constants of the sampler: one compilation per set of variances."""
        aux = dict(aux)
        variances = aux.pop("variances", None)
        batch_sharding = batch_sharding_like(params)
        key = (getattr(batch_sharding, "mesh", None), tuple(sorted(aux)),
               None if variances is None else variances.tobytes())
        if key not in self._compiled:
            B = self.global_batch(params)
            spec, process, param, learned, shape, t_min = (self.spec, self.process, self.param, self.learned,
                                                           self.shape, self.t_min)
            static = {} if variances is None else dict(variances=variances)

            def draw(params, aux, key, start):
                keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(start + jnp.arange(B))
                keys = jax.lax.with_sharding_constraint(keys, batch_sharding)
                fns = objectives.model_fns(self.net(params), param)
                return sampling.sample_per_example(fns, process, shape, keys, spec, t_min=t_min,
                                                   **learned.sampler_kwargs(dict(aux, **static)))

            self._compiled[key] = jax.jit(draw, out_shardings=batch_sharding)
        return self._compiled[key], aux

    def __call__(self, params, aux, key, start: int) -> np.ndarray:
        fn, aux = self.compiled_for(params, aux)
        return to_host(fn(params, aux, key, jnp.int32(start)))


def load_workdir_config(workdir: str, key: str = "teacher") -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its config.json); ConfigError naming `key` when there is none."""
    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        raise ConfigError(f"{key}={workdir!r} is not a training workdir (no config.json); give the workdir of a "
                          f"trained diffusion run")
    return _config_from_json(paths.read_text(path))


def _config_from_json(text: str) -> ml_collections.ConfigDict:
    """A config written as JSON (a workdir's config.json), its lists back as tuples."""
    def tuples(v):
        if isinstance(v, list):
            return tuple(tuples(e) for e in v)
        return {k: tuples(e) for k, e in v.items()} if isinstance(v, dict) else v

    return ml_collections.ConfigDict(tuples(json.loads(text)))


def _likelihood_bpd(x, process, d, fns, info, batch, sharding, key, vb_variance) -> dict:
    """eval/ode_bpd and, for the discrete VP, eval/vb_bpd: means over the examples x (module docstring)."""
    images, discrete = len(info.shape) == 3, isinstance(process, diffusion.DiscreteVP)
    k_vb, k_ode = jax.random.split(key)
    kw = dict(batch_size=batch, sharding=sharding)
    out = {"ode_bpd": float(np.mean(likelihood.dataset_ode_bpd(
        fns.denoise, process, x, k_ode, t_min=1 / process.num_steps if discrete else d.t_min,
        bin_width=2 / 255 if images else None, **kw)))}
    if discrete:
        out["vb_bpd"] = float(np.mean(likelihood.dataset_vb_bpd(
            fns.eps, process, x, k_vb, variance=vb_variance, decoder="discretized" if images else "gaussian", **kw)))
    print(f"likelihood of {len(x)} test examples (bits/dim): " + ", ".join(f"{k} {v:.4g}" for k, v in out.items()),
          flush=True)
    return out


def restore_trained(config, workdir: str):
    """(Trainable, evaluation params on one device, Parameterization, step) of `workdir`'s latest checkpoint, with
    `config` that workdir's config (`load_workdir_config`): a teacher for reflow, distillation or consistency."""
    from jaxgen.train.checkpoint import Checkpointer

    info = dataset_info(config)
    d = settings(config)
    t = trainable(config, lambda key: make_model(config.model, info, nnx.Rngs(params=key)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            jax.eval_shape(t.init, jax.random.key(0)))
    ckpt = Checkpointer(paths.join(workdir, "checkpoints"), keep=None)  # read only: never prunes
    try:
        step = ckpt.latest_step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first (python -m jaxgen.run ...)")
        state = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    return t, eval_params(state), objectives.Parameterization(make_process(d), d.prediction, d.sigma_data), step


def load_trained(config, workdir: str):
    """(ModelFns, process, step) of the model in `workdir`'s latest checkpoint (the EMA weights when the config
    keeps them), on one device: for analyses outside the training loop."""
    t, params, param, step = restore_trained(config, workdir)
    model = t.module(params)
    return objectives.model_fns(lambda x, tt: model(x, tt), param), param.process, step


