"""DDPM (Ho et al. 2020): eps-prediction with L_simple, ancestral sampling, sample-quality evaluation.

Config keys beyond the shared ones:
  model.name: 'unet' (images) | 'mlp' (vectors), plus the network's keyword arguments
  diffusion.schedule ('linear' | 'cosine'), diffusion.num_steps (T)
  eval.num_samples; eval.sampler, eval.sample_steps (0 = T):
    'ddpm'   ancestral, K = sample_steps steps (uniform or quadratic eval.skip); eval.variance:
             'beta' | 'beta_tilde' | 'analytic' (Analytic-DPM) | 'npr' | 'sn' (Extended Analytic-DPM)
    'ddim'   K steps with eval.eta; eval.variance 'analytic' | 'npr' | 'sn' adds the optimal variance
             (Analytic-DDIM etc.; any other value keeps DDIM's own, set by eta)
    'pc'     K noise levels, each with one Langevin corrector (2K evaluations)
    'euler' | 'heun' | 'dpm2' | 'amed'   the probability-flow ODE with sample_steps = NFE evaluations
             (EDM grid, rho = 7; the 2-stage solvers use the analytical first step when NFE is odd)
  eval.clip_x0 (None or c: x0-predictions clipped to [-c, c]; Analytic-DPM's Cov clip uses the width 2c),
  eval.pixel_width (Analytic-DPM's clip of the second-to-last step, e.g. 2/255; None: off),
  eval.untrained_baseline (also score a freshly initialised network, sampled without learned parts),
  eval.classifier_steps (training steps of the feature classifier for images),
  eval.gamma_samples (training points for Analytic-DPM's Gamma), eval.head_steps (SN/NPR head training
  steps, at config.train.batch_size and config.optimizer.learning_rate), eval.amed_iters (AMED predictor steps).
The learned parts are fitted on the frozen (EMA) model at the first evaluation that needs them and cached
under workdir/sampling/ per checkpoint step and step set (Gamma as JSON, heads and AMED predictors as orbax
checkpoints). Re-running a finished workdir with other eval.* values only samples and evaluates again, e.g.
  python -m jaxgen.run --config configs/quickstart.py --workdir runs/quickstart --config.eval.sampler=ddim
      --config.eval.sample_steps=50 --config.eval.variance=analytic
Figures: figures/samples_<tag>.png, the tag naming the sampling (e.g. ddim-K50-eta0-analytic).
Images are scored by the Fréchet distance in the features of a small classifier trained on the same
dataset (`eval/fd`, with the classifier's test accuracy); 2-D data by sliced W2 and MMD against the
test split (`eval/sw2`, `eval/mmd`).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxgen import data as data_lib
from jaxgen import diffusion, metrics, paths, viz
from jaxgen.config import ConfigError
from jaxgen.optim import make_optimizer
from jaxgen.tasks import Task
from jaxgen.train.state import create_train_state, make_train_step, optimizer_updates, with_grad_accum

MODELS = ("unet", "mlp")
ODE_SAMPLERS = ("euler", "heun", "dpm2", "amed")
SAMPLERS = ("ddpm", "ddim", "pc") + ODE_SAMPLERS
VARIANCES = ("beta", "beta_tilde", "analytic", "npr", "sn")
EVAL_DEFAULTS = dict(num_samples=500, sampler="ddpm", sample_steps=0, variance="beta", eta=0.0, skip="uniform",
                     clip_x0=1.0, pixel_width=None, untrained_baseline=False, classifier_steps=500,
                     gamma_samples=2000, head_steps=1000, amed_iters=200)


def eval_config(**overrides):
    """`config.eval` for this task: every key with its default."""
    import ml_collections

    unknown = set(overrides) - set(EVAL_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown eval keys {sorted(unknown)}; accepted: {sorted(EVAL_DEFAULTS)}")
    return ml_collections.ConfigDict(dict(EVAL_DEFAULTS, **overrides))


# Config-file variants, one per sampling family, at a few-step setting where the families differ
# ('ddpm' keeps the config's own sampling). E.g. configs/quickstart.py:analytic or :amed,smoke.
SAMPLING_VARIANTS = {
    "ddpm": {},
    "ddim": dict(sampler="ddim", sample_steps=50, eta=0.0),
    "analytic": dict(sampler="ddpm", variance="analytic", sample_steps=25),
    "analytic_ddim": dict(sampler="ddim", variance="analytic", sample_steps=25, eta=0.0),
    "npr": dict(sampler="ddpm", variance="npr", sample_steps=25),
    "sn": dict(sampler="ddpm", variance="sn", sample_steps=25),
    "pc": dict(sampler="pc", sample_steps=100),
    "euler": dict(sampler="euler", sample_steps=50),
    "heun": dict(sampler="heun", sample_steps=35),
    "dpm2": dict(sampler="dpm2", sample_steps=10),
    "amed": dict(sampler="amed", sample_steps=5),
}


def config_with_variant(get_base, arg: str | None):
    """A DDPM config file's get_config: `arg` is an optional sampling variant (SAMPLING_VARIANTS) and/or
    'smoke', comma-separated; get_base(smoke) returns the file's config."""
    from jaxgen.config import parse_variant

    v = parse_variant(arg, {"sampling": tuple(SAMPLING_VARIANTS)}, {"sampling": "ddpm"})
    c = get_base(v["smoke"])
    c.eval.update(SAMPLING_VARIANTS[v["sampling"]])
    if v["smoke"] and v["sampling"] != "ddpm":
        c.eval.sample_steps = min(c.eval.sample_steps or c.diffusion.num_steps, 5)
        c.eval.update(gamma_samples=64, head_steps=5, amed_iters=5)
    return c


def sampler_tag(ev) -> str:
    """A short name of the sampling setting in `ev` (config.eval), e.g. 'ddim-K50-eta0' or 'heun-nfe9'."""
    K = ev.sample_steps
    if ev.sampler in ODE_SAMPLERS:
        return f"{ev.sampler}-nfe{K or 'T'}"
    tag = f"{ev.sampler}-K{K or 'T'}"
    if ev.sampler == "ddim":
        tag += f"-eta{ev.eta:g}"
    if ev.sampler == "ddpm" or (ev.sampler == "ddim" and ev.variance in ("analytic", "npr", "sn")):
        tag += f"-{ev.variance}"
    return tag + ("-quadratic" if ev.skip == "quadratic" and ev.sampler != "pc" else "")


def ode_grid(schedule, nfe: int, solver: str) -> tuple[np.ndarray, bool]:
    """(times, afs) for `nfe` evaluations: Euler takes nfe intervals, the 2-stage solvers ceil(nfe / 2), with
    the analytical first step when nfe is odd. EDM grid (rho = 7) from sigma / alpha = 80 (or its value at
    t = 1 if smaller) down to its value at the first training step t = 1 / T."""
    n = nfe if solver == "euler" else -(-nfe // 2)
    with jax.ensure_compile_time_eval():  # a host-side grid, also when called under jit
        sigma_min = float(schedule.sigma_ratio(schedule.step_to_time(jnp.asarray(1))))
    return diffusion.time_grid(schedule, n, sigma_min=sigma_min), solver != "euler" and nfe % 2 == 1


def _eta(ev) -> float:
    return 1.0 if ev.sampler == "ddpm" else float(ev.eta)


def _data_range(ev):
    """Width of the data interval for the Analytic-DPM clip: [-clip_x0, clip_x0], or unbounded."""
    return None if ev.clip_x0 is None else 2.0 * ev.clip_x0


def sample(eps_fn, schedule, shape, key, ev, *, variances=None, cov_fn=None, rc_fn=None):
    """Draw samples with the sampler named in `ev` (config.eval).

    variances: Analytic-DPM's per-step variances (ev.variance = 'analytic'); cov_fn: an SN/NPR head's
    diagonal Cov[x0 | x_t] (ev.variance = 'sn' / 'npr'); rc_fn: the trained AMED predictor (ev.sampler = 'amed').
    """
    K = ev.sample_steps or schedule.num_steps
    if ev.sampler in ODE_SAMPLERS:
        ts, afs = ode_grid(schedule, K, ev.sampler)
        x_init = schedule.sigma(jnp.asarray(ts[0], jnp.float32)) * jax.random.normal(key, shape)
        denoise = diffusion.denoiser_from_eps(eps_fn, schedule, ev.clip_x0)
        return diffusion.ode_sample(denoise, schedule, x_init, ts, ev.sampler, afs=afs, rc_fn=rc_fn)
    if ev.sampler == "pc":
        return diffusion.pc_sample(eps_fn, schedule, shape, key, K, skip=ev.skip)
    if ev.variance in ("analytic", "npr", "sn"):
        ts = diffusion.skip_timesteps(schedule.num_steps, K, ev.skip)
        return diffusion.vp_sample(eps_fn, schedule, shape, key, ts, eta=_eta(ev),
                                   variance="lambda" if variances is None else variances,
                                   cov_fn=cov_fn, clip_x0=ev.clip_x0)
    if ev.sampler == "ddpm":
        if K == schedule.num_steps:
            return diffusion.ddpm_sample(eps_fn, schedule, shape, key, variance=ev.variance, clip_x0=ev.clip_x0)
        return diffusion.ddpm_skip_sample(eps_fn, schedule, shape, key, K, variance=ev.variance, skip=ev.skip,
                                          clip_x0=ev.clip_x0)
    return diffusion.ddim_sample(eps_fn, schedule, shape, key, K, eta=ev.eta, skip=ev.skip, clip_x0=ev.clip_x0)


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
    ev = config.eval
    if ev.variance not in VARIANCES:
        raise ConfigError(f"config.eval.variance must be one of {VARIANCES}, got '{ev.variance}'")
    if ev.variance in ("analytic", "npr", "sn") and ev.sampler not in ("ddpm", "ddim"):
        raise ConfigError(f"config.eval.variance='{ev.variance}' needs config.eval.sampler 'ddpm' or 'ddim', "
                          f"got '{ev.sampler}'")
    if ev.sampler in ODE_SAMPLERS and ev.sample_steps == 1 and ev.sampler != "euler":
        raise ConfigError(f"config.eval.sample_steps (the NFE) must be >= 2 for '{ev.sampler}' (or 0 = T)")
    for name in ("gamma_samples", "head_steps", "amed_iters"):
        if ev[name] < 1:
            raise ConfigError(f"config.eval.{name} must be >= 1, got {ev[name]}")
    if config.eval.num_samples < 2:
        raise ConfigError(f"config.eval.num_samples must be >= 2, got {config.eval.num_samples}")


def build(config) -> Task:
    _validate(config)
    try:
        info = data_lib.dataset_info(config.data)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    tx_builder, lr_schedule = make_optimizer(config.optimizer, optimizer_updates(config.train))

    def new_model(key):
        return make_model(config.model, info, nnx.Rngs(params=key), remat=config.train.get("remat", False))

    graphdef, abstract_params = nnx.split(nnx.eval_shape(lambda: new_model(jax.random.key(0))), nnx.Param)
    tx = with_grad_accum(tx_builder(abstract_params), config.train)

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

    ev = config.eval
    n = ev.num_samples
    sample_shape = (n,) + tuple(info.shape)
    K = ev.sample_steps or schedule.num_steps
    amed_graphdef, amed_abstract = nnx.split(nnx.eval_shape(lambda: diffusion.AMEDPredictor(rngs=nnx.Rngs(0))))

    def head_fn(head_params):  # SN/NPR heads share the model's architecture, with a softplus output
        return lambda x, t: jax.nn.softplus(eps_fn(head_params)(x, t))

    def learned_inputs(params, key, cache_dir, step):
        """(static, aux) inputs of the learned samplers: Analytic-DPM's variances, an SN/NPR head, the
        AMED predictor. Fitted on the frozen model once per checkpoint step and step set, then cached."""
        if ev.sampler in ("ddpm", "ddim") and ev.variance == "analytic":
            ts = diffusion.skip_timesteps(schedule.num_steps, K, ev.skip)
            gamma = _cached_gamma(os.path.join(cache_dir, f"gamma_step{step}_K{K}_{ev.skip}.json"), ts, lambda: (
                diffusion.estimate_gamma(eps_fn(params), schedule, train_split()["x"][:ev.gamma_samples], key, ts,
                                         batch_size=min(ev.gamma_samples, 500))))
            var = diffusion.analytic_variance(schedule, ts, gamma, _eta(ev), _data_range(ev), ev.pixel_width)
            return dict(variances=var), {}
        if ev.sampler in ("ddpm", "ddim") and ev.variance in ("npr", "sn"):
            def fit():
                head_init = nnx.split(new_model(jax.random.fold_in(key, 1)), nnx.Param)[1]
                fitted, _, loss = diffusion.fit_cov_head(
                    ev.variance, lambda p, x, t: eps_fn(p)(x, t), head_init, eps_fn(params), schedule,
                    train_split()["x"], key, ev.head_steps, config.train.batch_size, config.optimizer.learning_rate)
                print(f"{ev.variance.upper()} head: {ev.head_steps} steps, final loss {loss:.4g}", flush=True)
                return fitted

            return {}, dict(head=_cached_pytree(os.path.join(cache_dir, f"{ev.variance}_head_step{step}"),
                                                abstract_params, fit))
        if ev.sampler == "amed":
            def fit():
                ts, afs = ode_grid(schedule, K, "amed")
                sigma0 = schedule.sigma(jnp.asarray(ts[0], jnp.float32))
                _, fit_info = diffusion.fit_amed(
                    diffusion.denoiser_from_eps(eps_fn(params), schedule, ev.clip_x0), schedule, ts,
                    lambda k, m: sigma0 * jax.random.normal(k, (m,) + tuple(info.shape)), key, afs=afs,
                    num_train=512, batch_size=64, num_iters=ev.amed_iters)
                print(f"AMED predictor: {ev.amed_iters} steps, loss {fit_info['losses'][0]:.4g} -> "
                      f"{fit_info['losses'][-1]:.4g}, mean r per step {np.round(fit_info['r'], 3)}", flush=True)
                return fit_info["state"]

            return {}, dict(amed=_cached_pytree(os.path.join(cache_dir, f"amed_step{step}_nfe{K}"), amed_abstract,
                                                fit))
        return {}, {}

    @functools.cache
    def train_split():  # loaded once, for the learned sampler parts and the image classifier
        return data_lib.load_split(config.data, config.data.split_train)

    def make_draw(sampling, static):
        @jax.jit
        def draw(params, aux, key):
            cov_fn = rc_fn = None
            if "head" in aux:
                make_cov = diffusion.npr_cov_fn if sampling.variance == "npr" else diffusion.sn_cov_fn
                cov_fn = make_cov(head_fn(aux["head"]), schedule, _data_range(sampling))
            if "amed" in aux:
                rc_fn = diffusion.make_rc_fn(amed_graphdef, aux["amed"])
            return sample(eps_fn(params), schedule, sample_shape, key, sampling, cov_fn=cov_fn, rc_fn=rc_fn,
                          **static)

        return draw

    # jitted once here, so periodic evaluations do not recompile (learned variances are baked in per step)
    draw_default, draw_untrained = make_draw(ev, {}), make_draw(_without_learned_inputs(ev), {})

    def evaluate(state, key, workdir):
        k_sample, k_metric, k_untrained, k_fit = jax.random.split(key, 4)
        test = data_lib.load_split(config.data, config.data.split_test)
        params = state.ema_params if state.ema_params is not None else state.params
        static, aux = learned_inputs(params, k_fit, os.path.join(workdir, "sampling"), int(state.step))
        aux = jax.device_put(aux, _replicated_like(params))  # restored or fitted on one device
        draw = make_draw(ev, static) if static else draw_default
        generated = np.asarray(jax.device_get(draw(params, aux, k_sample)))
        score = _scorer(config, info, test, k_metric, train_split)
        out = score(generated)
        if ev.untrained_baseline:  # the same sampler without its learned inputs
            untrained = init(k_untrained).params
            generated_untrained = np.asarray(draw_untrained(untrained, {}, k_sample))
            out.update({f"{k}_untrained": v for k, v in score(generated_untrained).items()
                        if not k.startswith("classifier")})
        tag = sampler_tag(ev)
        if jax.process_index() == 0:
            viz.save_samples_figure(os.path.join(workdir, "figures", f"samples_{tag}.png"), generated,
                                    test["x"][:n], title=tag + ": " + ", ".join(
                                        f"{k}={v:.3g}" for k, v in out.items()))
        print(f"sampled with {tag}: figures/samples_{tag}.png", flush=True)
        return out

    def eval_step(state):
        """The sampler evaluate() runs, with its learned inputs at their shapes (Gamma = 0 for Analytic-DPM)."""
        params = state.ema_params if state.ema_params is not None else state.params
        static, aux = {}, {}
        if ev.sampler in ("ddpm", "ddim") and ev.variance == "analytic":
            ts = diffusion.skip_timesteps(schedule.num_steps, K, ev.skip)
            static = dict(variances=diffusion.analytic_variance(schedule, ts, np.zeros(len(ts)), _eta(ev),
                                                                _data_range(ev), ev.pixel_width))
        elif ev.sampler in ("ddpm", "ddim") and ev.variance in ("npr", "sn"):
            aux = dict(head=abstract_params)
        elif ev.sampler == "amed":
            aux = dict(amed=amed_abstract)
        aux = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), aux)
        key = jax.eval_shape(lambda: jax.random.key(0))
        return (make_draw(ev, static) if static else draw_default), (params, aux, key), \
            f"{sampler_tag(ev)} sampler, {n} samples"

    return Task(init=init, train_step=train_step, evaluate=evaluate, eval_step=eval_step)


def load_trained(config, workdir: str):
    """(eps_fn(x, t), schedule, step) of the model in `workdir`'s latest checkpoint (the EMA weights when
    the config keeps them), on one device: for analyses outside the training loop."""
    from jaxgen.train.checkpoint import Checkpointer

    info = data_lib.dataset_info(config.data)
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    graphdef, abstract_params = nnx.split(
        nnx.eval_shape(lambda: make_model(config.model, info, nnx.Rngs(params=jax.random.key(0)))), nnx.Param)
    tx = with_grad_accum(make_optimizer(config.optimizer, optimizer_updates(config.train))[0](abstract_params),
                         config.train)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            jax.eval_shape(lambda p: create_train_state(p, tx, config.ema_decay), abstract_params))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=None)  # read only: never prunes
    try:
        step = ckpt.latest_step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt.directory}; train first (python -m jaxgen.run ...)")
        state = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, state.ema_params if state.ema_params is not None else state.params)
    return (lambda x, t: model(x, t)), schedule, step


def _without_learned_inputs(ev):
    """`ev` with the learned parts replaced by their plain counterparts (Analytic/SN/NPR -> beta_tilde,
    AMED -> DPM-Solver-2: AMED with r = 1/2, c = 1)."""
    plain = ev.copy_and_resolve_references()
    if plain.variance in ("analytic", "npr", "sn"):
        plain.variance = "beta_tilde"
    if plain.sampler == "amed":
        plain.sampler = "dpm2"
    return plain


def _replicated_like(tree):
    """A sharding that replicates over the devices holding `tree`'s first leaf."""
    sharding = jax.tree.leaves(tree)[0].sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return sharding


def _cached_gamma(path, timesteps, estimate):
    """Gamma at `timesteps` from the JSON cache at `path`, or estimated and written there."""
    if paths.exists(path):
        cached = json.loads(paths.read_text(path))
        if cached["timesteps"] == [int(t) for t in timesteps]:
            return np.asarray(cached["gamma"])
    gamma = estimate()
    if jax.process_index() == 0:
        paths.write_text(path, json.dumps({"timesteps": [int(t) for t in timesteps],
                                           "gamma": [float(g) for g in gamma]}))
    return gamma


def _cached_pytree(path, abstract, fit):
    """The pytree orbax-saved at `path` (restored onto `abstract`'s structure), or fit() saved there."""
    path = paths.absolute(path)  # orbax wants an absolute local path; a URL stays a URL
    with ocp.StandardCheckpointer() as checkpointer:
        if paths.exists(path):
            return checkpointer.restore(path, abstract)
        value = fit()
        checkpointer.save(path, value)
        checkpointer.wait_until_finished()
    return value


def _scorer(config, info, test, key, train_split):
    """A function generated -> {metric: value} against the test split (inf for samples that diverged)."""
    score = _finite_scorer(config, info, test, key, train_split)

    def checked(generated):
        if np.all(np.isfinite(generated)):
            return score(generated)
        bad = np.mean(~np.all(np.isfinite(generated.reshape(len(generated), -1)), 1))
        print(f"warning: {bad:.1%} of the samples are not finite (the sampler diverged)", flush=True)
        return dict.fromkeys(("sw2", "mmd") if len(info.shape) == 1 else ("fd",), float("inf"))

    return checked


def _finite_scorer(config, info, test, key, train_split):
    if len(info.shape) == 1:
        real = jnp.asarray(test["x"][:config.eval.num_samples])  # equal sizes; MMD is quadratic in memory

        def score(generated):
            g = jnp.asarray(generated)
            return {"sw2": float(metrics.sliced_wasserstein(g, real, key)), "mmd": float(metrics.mmd(g, real))}

        return score
    train = train_split()
    extract, accuracy = metrics.classifier_features(info.name, train["x"], train["label"], test["x"], test["label"],
                                                      num_steps=config.eval.classifier_steps)
    real_features = np.asarray(extract(test["x"]))

    def score(generated):
        fd = metrics.frechet_distance_from_features(np.asarray(extract(generated)), real_features)
        return {"fd": float(fd), "classifier_test_accuracy": float(accuracy)}

    return score
