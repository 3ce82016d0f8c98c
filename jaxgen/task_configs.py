"""Default configs of the tasks, for config files: plain ConfigDicts, importable
without the task modules (no network or flax import; the data defaults come from `jaxgen.data`).

    seq_classify_config(dataset, ssm)   task 'seq_classify' (jaxgen/tasks/seq_classify.py)
    seq_generate_config(dataset, ssm)   task 'seq_generate'
    seq_copy_config(mode, ssm)          task 'seq_copy'
    autoencoder_config(dataset, quantizer)   task 'autoencoder'
    diffusion_config(**kw), eval_config(**kw), reflow_config(**kw)   config.diffusion / .eval / .reflow of task
        'diffusion' (every key with its default), and `config_with_variant` with the SAMPLING_VARIANTS

and the pieces they share: `sequence_model_config` (config.model of a sequence task), `default_ssm_kwargs`,
`ssm_param_groups`, and the variant parsers of the config files (`ssm_variant`, `quantizer_variant`).
Each task documents its keys in its module's docstring.
"""

from __future__ import annotations

import math

import ml_collections

from jaxgen.config import base_config, parse_variant

SSMS = ("s4d", "s4", "lru")
POOLINGS = ("mean", "last")
COPY_MODES = ("copy", "selective")
QUANTIZERS = ("vq", "vq_ema", "fsq")


def _data_config(dataset: str) -> ml_collections.ConfigDict:
    from jaxgen.data import default_data_config

    return default_data_config(dataset)


# ---------------------------------------------------------------------------------------------------------
# sequence tasks


def ssm_variant(arg: str | None) -> dict:
    """`jaxgen.config.parse_variant` with the SSM group: 'lru,smoke' -> {'ssm': 'lru', 'smoke': True}."""
    return parse_variant(arg, {"ssm": SSMS}, {"ssm": "s4d"})


def default_ssm_kwargs(ssm: str) -> ml_collections.ConfigDict:
    """Keyword arguments of the SSM layer, with the usual defaults for each SSM.

    s4d: S4D-Lin init, ZOH, step log-uniform in [1e-3, 1e-1] (Gu et al. 2022);
    s4: HiPPO-LegS, same step range; lru: ring r in [0.5, 0.99], phase in [0, pi] (Orvieto et al. 2023
    use r_min 0.9 and a smaller max phase for the long LRA tasks; short sequences want faster decay).
    """
    if ssm == "s4d":
        return ml_collections.ConfigDict(dict(init="lin", method="zoh", step_min=1e-3, step_max=1e-1))
    if ssm == "s4":
        return ml_collections.ConfigDict(dict(measure="legs", step_min=1e-3, step_max=1e-1))
    if ssm == "lru":
        return ml_collections.ConfigDict(dict(r_min=0.5, r_max=0.99, max_phase=math.pi))
    raise ValueError(f"ssm must be one of {SSMS}, got {ssm!r}")


def sequence_model_config(ssm: str = "s4d", **overrides) -> ml_collections.ConfigDict:
    """`config.model` of a sequence task: ssm, d_model, n_layers, N, dropout, pooling, ssm_kwargs."""
    c = ml_collections.ConfigDict(dict(ssm=ssm, d_model=64, n_layers=4, N=64, dropout=0.1, pooling="mean",
                                       ssm_kwargs=default_ssm_kwargs(ssm)))
    for k, v in overrides.items():
        if k not in c:
            raise ValueError(f"unknown model key '{k}'; accepted: {sorted(c.keys())}")
        c[k] = v
    return c


def ssm_param_groups(lr_mult: float = 0.1) -> tuple:
    """`config.optimizer.param_groups` for SSM models: A, B, step at lr_mult x the learning rate, no weight decay."""
    from jaxgen.ssm import SSM_PARAM_PATTERN

    return ((SSM_PARAM_PATTERN, lr_mult, 0.0),)


def _sequence_config(task: str, data: str, model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c = base_config()
    c.task = task
    c.data = _data_config(data)
    c.model = model
    c.optimizer.param_groups = ssm_param_groups(0.1)
    return c


def seq_classify_config(dataset: str = "digits", ssm: str = "s4d") -> ml_collections.ConfigDict:
    """Shared keys plus seq_classify's model / sequence / eval blocks (digits-sized defaults)."""
    c = _sequence_config("seq_classify", dataset, sequence_model_config(ssm))
    c.data.random_flip = False  # a flipped row is another sequence; S4's sequential benchmarks use no augmentation
    c.sequence = ml_collections.ConfigDict(dict(permute=False, permutation_seed=0))
    c.eval = ml_collections.ConfigDict(dict(batch_size=500))
    return c


def seq_generate_config(dataset: str = "digits", ssm: str = "s4d") -> ml_collections.ConfigDict:
    """Shared keys plus seq_generate's model / sequence / eval blocks (digits: 17 levels, class-conditional)."""
    c = _sequence_config("seq_generate", dataset, sequence_model_config(ssm, dropout=0.0))
    c.data.random_flip = False
    c.sequence = ml_collections.ConfigDict(dict(levels=17, class_conditional=True))
    c.eval = ml_collections.ConfigDict(dict(batch_size=500, num_samples=100, temperature=1.0, score_samples=True))
    return c


def seq_copy_config(mode: str = "copy", ssm: str = "s4d") -> ml_collections.ConfigDict:
    """Shared keys plus seq_copy's model / copy / eval blocks."""
    # config.data only sets the batch size; the examples are synthetic
    c = _sequence_config("seq_copy", "digits", sequence_model_config(ssm, dropout=0.0))
    c.copy = ml_collections.ConfigDict(dict(mode=mode, num_tokens=8, vocab_size=8, lag=48))
    c.eval = ml_collections.ConfigDict(dict(num_examples=1024, batch_size=256, test_seed=12345))
    return c


# ---------------------------------------------------------------------------------------------------------
# quantised autoencoder


def quantizer_variant(arg: str | None) -> tuple[str, bool]:
    """'vq_ema,smoke' -> ('vq_ema', True): an optional quantizer name and an optional 'smoke', comma-separated."""
    v = parse_variant(arg, {"quantizer": QUANTIZERS}, {"quantizer": "fsq"})
    return v["quantizer"], v["smoke"]


def autoencoder_config(dataset: str, quantizer: str = "fsq") -> ml_collections.ConfigDict:
    """The shared keys plus the autoencoder's model / quantizer / eval blocks, with defaults (digits-sized)."""
    c = base_config()
    c.task = "autoencoder"
    c.data = _data_config(dataset)
    c.model = ml_collections.ConfigDict(dict(channels=(32, 64), num_res_blocks=1, dropout=0.0))
    c.quantizer = ml_collections.ConfigDict(dict(
        name=quantizer, levels=(8, 5, 5, 5), num_codes=1000, latent_dim=8, beta=0.25, decay=0.99, eps=1e-5,
        cosine=False, dead_threshold=0.0, restart_every=0, init="kmeans++", init_examples=256))
    c.eval = ml_collections.ConfigDict(dict(batch_size=500, num_images=32, usage_on_train=False))
    return c


# ---------------------------------------------------------------------------------------------------------
# diffusion task (jaxgen/tasks/diffusion.py documents every key)

DIFFUSION_DEFAULTS = dict(process="ddpm", schedule="linear", num_steps=1000, prediction="eps", weighting="uniform",
                          time_sampling="uniform", time_mean=None, time_std=None, t_min=1e-3, sigma_data=0.5,
                          min_snr_gamma=5.0)
EVAL_DEFAULTS = dict(num_samples=500, batch_size=128, sampler="ddpm", sample_steps=0, variance="beta", eta=0.0,
                     skip="uniform", clip_x0=1.0, pixel_width=None, metric="classifier", fid_stats="",
                     inception_weights="", untrained_baseline=False, classifier_steps=500, gamma_samples=2000,
                     head_steps=1000, amed_iters=200, likelihood=False, likelihood_samples=256,
                     precision_recall=0, straightness_steps=64)


REFLOW_DEFAULTS = dict(teacher="", num_pairs=0, sampler="rk45", sample_steps=0, batch_size=64, init_from_teacher=True)


def _section(defaults, name, overrides):
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {name} keys {sorted(unknown)}; accepted: {sorted(defaults)}")
    return ml_collections.ConfigDict(dict(defaults, **overrides))


def diffusion_config(**overrides) -> ml_collections.ConfigDict:
    """`config.diffusion` of the diffusion task: every key with its default."""
    return _section(DIFFUSION_DEFAULTS, "diffusion", overrides)


def reflow_config(**overrides) -> ml_collections.ConfigDict:
    """`config.reflow` of the diffusion task: every key with its default (teacher '' = train on the data)."""
    return _section(REFLOW_DEFAULTS, "reflow", overrides)


def eval_config(**overrides) -> ml_collections.ConfigDict:
    """`config.eval` of the diffusion task: every key with its default."""
    return _section(EVAL_DEFAULTS, "eval", overrides)


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
    """A diffusion config file's get_config: `arg` is an optional sampling variant (SAMPLING_VARIANTS) and/or
    'smoke', comma-separated; get_base(smoke) returns the file's config."""
    from jaxgen.config import parse_variant

    v = parse_variant(arg, {"sampling": tuple(SAMPLING_VARIANTS)}, {"sampling": "ddpm"})
    c = get_base(v["smoke"])
    c.eval.update(SAMPLING_VARIANTS[v["sampling"]])
    if v["smoke"] and v["sampling"] != "ddpm":
        c.eval.sample_steps = min(c.eval.sample_steps or c.diffusion.num_steps, 5)
        c.eval.update(gamma_samples=64, head_steps=5, amed_iters=5)
    return c


FLOW_VARIANTS = ("train", "reflow", "distill")


def flow_config(get_base, arg: str | None):
    """A rectified-flow config file's get_config: `arg` names 'reflow' or 'distill' (Liu et al. 2023) and/or
    'smoke'; get_base(smoke) returns the file's config. Both variants need the teacher's workdir:
    `--config.reflow.teacher=WORKDIR` (the k-RF); 'reflow' trains the (k+1)-RF on its pairs, 'distill' the one-step
    generator (t = 1 only, sampled with one Euler step)."""
    v = parse_variant(arg, {"stage": FLOW_VARIANTS}, {"stage": "train"})
    c = get_base(v["smoke"])
    if v["stage"] != "train":
        c.reflow = reflow_config(sampler="flow_euler" if v["smoke"] else "rk45", sample_steps=3 if v["smoke"] else 0)
        if v["smoke"]:
            c.reflow.update(num_pairs=64, batch_size=2)
    if v["stage"] == "distill":
        c.diffusion.time_sampling = "end"
        c.eval.update(sampler="flow_euler", sample_steps=1)
    return c
