"""The DDPM task's sampling families on a trained workdir: every sampling variant re-evaluates the same
checkpoint (no training); learned parts are fitted once and restored from the cache. The variants run on the
2-D toy (an MLP compiles in seconds); the image path (UNet heads, Fréchet distance) runs in the digits test."""

import os

import jax
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen.config import ConfigError
from jaxgen.tasks import ddpm
from jaxgen.train.checkpoint import Checkpointer
from jaxgen.tasks import build_and_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")
TOY = os.path.join(ROOT, "configs", "ddpm_toy2d.py")
CACHED = {"analytic": "gamma_step{step}_K5_uniform.json", "npr": "npr_head_step{step}", "amed": "amed_step{step}_nfe5"}
RESTORED = ("analytic", "npr")  # a JSON and an orbax cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy"))
    config = config_lib.load_config(TOY + ":smoke")
    config.eval.untrained_baseline = False
    build_and_train(config, workdir)
    return workdir, config.train.num_steps


@pytest.mark.parametrize("variant", [v for v in ddpm.SAMPLING_VARIANTS if v != "ddpm"])
def test_sampling_variant_evaluates_a_trained_workdir(trained, variant):
    workdir, step = trained
    config = config_lib.load_config(f"{TOY}:{variant},smoke")  # also samples the untrained baseline
    out = build_and_train(config, workdir)
    assert np.isfinite(out["eval/sw2"]) and np.isfinite(out["eval/mmd"])
    assert Checkpointer(os.path.join(workdir, "checkpoints"), None).latest_step == step  # evaluated, not trained
    assert os.path.exists(os.path.join(workdir, "figures", f"samples_{ddpm.sampler_tag(config.eval)}.png"))
    if variant in CACHED:
        cache = os.path.join(workdir, "sampling", CACHED[variant].format(step=step))
        assert os.path.exists(cache)
    if variant in RESTORED:  # fitted on the first evaluation, restored on the second: the same samples
        stamp = os.path.getmtime(cache)
        again = build_and_train(config, workdir)
        assert again["eval/sw2"] == out["eval/sw2"]
        assert os.path.getmtime(cache) == stamp


def test_sampler_tags_name_the_setting():
    ev = ddpm.eval_config(sampler="ddim", sample_steps=50, eta=0.0, variance="analytic")
    assert ddpm.sampler_tag(ev) == "ddim-K50-eta0-analytic"
    assert ddpm.sampler_tag(ddpm.eval_config(sampler="heun", sample_steps=9)) == "heun-nfe9"
    assert ddpm.sampler_tag(ddpm.eval_config(sample_steps=0, variance="beta_tilde")) == "ddpm-KT-beta_tilde"


def test_ode_grid_counts_evaluations():
    schedule = ddpm.diffusion.make_schedule("linear", 1000)
    for solver, nfe, intervals, afs in (("euler", 7, 7, False), ("heun", 7, 4, True), ("dpm2", 8, 4, False)):
        ts, got_afs = ddpm.ode_grid(schedule, nfe, solver)
        assert len(ts) == intervals + 1 and got_afs == afs
        assert ddpm.diffusion.ode_nfe(solver, intervals, afs) == nfe
    sig = np.asarray(schedule.sigma_ratio(np.asarray(ts)))
    assert np.isclose(sig[0], 80.0, rtol=1e-4) and np.isclose(sig[-1], np.sqrt(1e-4 / (1 - 1e-4)), rtol=1e-3)


def test_digits_unet_with_analytic_variance_runs_end_to_end(tmp_path):
    """configs/quickstart.py:analytic,smoke: Gamma of the UNet, the pixel clip, scored by the Fréchet distance
    (SN/NPR heads share the code path with the MLP heads of the toy tests, at a much larger compile time)."""
    config = config_lib.load_config(QUICKSTART + ":analytic,smoke")
    config.eval.untrained_baseline = False  # the baseline's plain sampler runs in the toy tests
    out = build_and_train(config, str(tmp_path))
    assert np.isfinite(out["eval/fd"])
    assert os.path.exists(tmp_path / "sampling" / "gamma_step4_K5_uniform.json")
    assert os.path.exists(tmp_path / "figures" / "samples_ddpm-K5-analytic.png")


def test_diverged_samples_score_inf_with_a_warning(capsys):
    config = config_lib.load_config(TOY + ":smoke")
    info = ddpm.data_lib.dataset_info(config.data)
    test = ddpm.data_lib.load_split(config.data, config.data.split_test)
    samples = np.zeros((64, 2), np.float32)
    samples[:16] = np.nan
    train = lambda: ddpm.data_lib.load_split(config.data, config.data.split_train)  # noqa: E731
    out = ddpm._scorer(config, info, test, jax.random.key(0), train)(samples)
    assert out["sw2"] == out["mmd"] == float("inf")
    assert "25.0% of the samples are not finite" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, match", [
    ({"eval.sampler": "heun", "eval.variance": "analytic"}, "needs config.eval.sampler 'ddpm' or 'ddim'"),
    ({"eval.variance": "optimal"}, "config.eval.variance must be one of"),
    ({"eval.sampler": "dpm3"}, "config.eval.sampler must be one of"),
    ({"eval.sampler": "amed", "eval.sample_steps": "1"}, "must be >= 2 for 'amed'"),
])
def test_bad_sampling_settings_are_named(overrides, match):
    config = config_lib.load_config(QUICKSTART + ":smoke")
    config_lib.apply_overrides(config, list(overrides.items()))
    with pytest.raises(ConfigError, match=match):
        ddpm.build(config)
