"""The one-step / few-step generator tasks from their config files: consistency (CD / CT / iCT), shortcut and SiD
train a few steps and evaluate at several step counts (configs cm_toy2d.py, shortcut_toy2d.py, sid_toy2d.py, their
:smoke variants; CD and SiD smoke use the exact gmm_grid mixture as teacher), CD and SiD also from a trained
diffusion workdir; a missing or unusable teacher is a ConfigError naming config.teacher.workdir; SiD's three-network
state resumes bitwise."""

import json
import os

import jax
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen.config import ConfigError
from jaxgen.tasks import build, build_and_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CM = os.path.join(ROOT, "configs", "cm_toy2d.py")
SHORTCUT = os.path.join(ROOT, "configs", "shortcut_toy2d.py")
SID = os.path.join(ROOT, "configs", "sid_toy2d.py")
DDPM = os.path.join(ROOT, "configs", "ddpm_toy2d.py")


def load(spec, **overrides):
    config = config_lib.load_config(spec)
    config_lib.apply_overrides(config, [(k, str(v)) for k, v in overrides.items()])
    return config


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A trained (4-step) DDPM workdir on gmm_grid: the teacher of CD and SiD."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    build_and_train(load(DDPM + ":smoke", **{"eval.untrained_baseline": False, "eval.num_samples": 16,
                                             "eval.batch_size": 2}), workdir)
    return workdir


@pytest.fixture(scope="module")
def sid_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("sid"))
    return workdir, build_and_train(load(SID + ":smoke"), workdir)


@pytest.mark.parametrize("spec, name", [(CM + ":ct,smoke", "ct"), (CM + ":ict,smoke", "ict"),
                                        (SHORTCUT + ":smoke", "shortcut")])
def test_method_trains_and_evaluates_at_each_step_count(tmp_path, spec, name):
    out = build_and_train(load(spec), str(tmp_path))
    for n in (1, 2):  # the smoke variants' eval.sample_steps
        assert np.isfinite(out[f"eval/sw2_{n}step"]) and np.isfinite(out[f"eval/mmd_{n}step"])
        assert os.path.exists(tmp_path / "figures" / f"samples_{name}-{n}step.png")
    logged = rows(str(tmp_path))
    assert any(np.isfinite(r["loss"]) for r in logged if "loss" in r)
    if "cm_toy2d" in spec:  # N(k) grows for CT / iCT
        n_scales = [r["num_scales"] for r in logged if "num_scales" in r]
        assert n_scales[0] < n_scales[-1]


def test_sid_trains_with_three_networks_and_counts_skipped_updates(sid_run):
    workdir, out = sid_run
    assert np.isfinite(out["eval/sw2_1step"]) and set(out) == {"eval/sw2_1step", "eval/mmd_1step"}
    last = [r for r in rows(workdir) if "gen_loss" in r][-1]
    assert last["gen_skipped"] == 0 and last["fake_skipped"] == 0 and np.isfinite(last["fake_loss"])
    assert os.path.exists(os.path.join(workdir, "figures", "samples_sid-1step.png"))


def test_sid_resume_after_a_checkpoint_is_bitwise_the_uninterrupted_run(sid_run, tmp_path):
    workdir, out = sid_run
    build_and_train(load(SID + ":smoke", **{"train.num_steps": 2}), str(tmp_path))
    resumed = build_and_train(load(SID + ":smoke"), str(tmp_path))
    keys = ("loss", "gen_loss", "fake_loss", "gen_grad_norm", "fake_grad_norm", "param_norm")
    row = lambda d: [{k: r[k] for k in keys} for r in rows(d) if r.get("step") == 4 and "loss" in r]  # noqa: E731
    assert row(str(tmp_path)) == row(workdir) and len(row(workdir)) == 1
    assert resumed == out


@pytest.mark.parametrize("spec", [CM + ":cd,smoke", SID + ":smoke"])
def test_cd_and_sid_distil_a_trained_diffusion_workdir(teacher_dir, tmp_path, spec, capsys):
    """(CD and SiD from the gmm_grid mixture oracle: the SiD tests above and configs' defaults.)"""
    out = build_and_train(load(spec, **{"teacher.workdir": teacher_dir}), str(tmp_path))
    assert np.isfinite(out["eval/sw2_1step"])
    assert f"from {teacher_dir} (step 4, DiscreteVP, eps prediction)" in capsys.readouterr().out
    if "cm_toy2d" in spec:
        assert np.isfinite(out["eval/sw2_2step"])
        assert [r["num_scales"] for r in rows(str(tmp_path)) if "num_scales" in r] == [18.0, 18.0]


def test_a_missing_untrained_mismatched_or_impossible_teacher_is_named(teacher_dir, tmp_path):
    for spec in (CM + ":cd,smoke", SID + ":smoke"):
        with pytest.raises(ConfigError, match=r"config\.teacher\.workdir=.*is not a training workdir"):
            build(load(spec, **{"teacher.workdir": str(tmp_path / "nothing")}))
    untrained = tmp_path / "untrained"
    os.makedirs(untrained / "checkpoints")
    with open(os.path.join(teacher_dir, "config.json")) as f:
        teacher_config = json.load(f)
    (untrained / "config.json").write_text(json.dumps(teacher_config))
    with pytest.raises(ConfigError, match=r"config\.teacher\.workdir=.*has no checkpoint yet"):
        build(load(CM + ":cd,smoke", **{"teacher.workdir": str(untrained)}))
    digits = tmp_path / "digits"
    os.makedirs(digits / "checkpoints" / "4")
    teacher_config["data"]["name"] = "digits"
    (digits / "config.json").write_text(json.dumps(teacher_config))
    with pytest.raises(ConfigError, match=r"config\.teacher\.workdir=.*models data of shape \(8, 8, 1\)"):
        build(load(SID + ":smoke", **{"teacher.workdir": str(digits)}))
    with pytest.raises(ConfigError, match=r"config\.teacher\.workdir is required for consistency distillation"):
        build(load(CM + ":cd,smoke", **{"data.name": "two_moons"}))
    build(load(CM + ":ct,smoke", **{"data.name": "two_moons"}))  # CT needs no teacher


def test_online_and_target_networks_get_one_dropout_key(monkeypatch):
    """Through the task's CT loss with dropout: the online and the (EMA) target evaluation of each pair receive the
    same dropout key (the library's guarantee, not undone by the task)."""
    from jaxgen.diffusion import consistency as cm

    seen = []
    original = cm.consistency_function

    def recording(apply, params, x, sigma, key=None, spec=cm.ConsistencySpec()):
        seen.append((key, params))
        return original(apply, params, x, sigma, key, spec)

    monkeypatch.setattr(cm, "consistency_function", recording)
    config = load(CM + ":ct,smoke")
    with config.unlocked():
        config.model.dropout = 0.5
    task = build(config)
    state = jax.eval_shape(task.init, jax.random.key(0))
    batch = {"x": jax.ShapeDtypeStruct((32, 2), np.float32)}
    jax.eval_shape(task.train_step, state, batch, jax.random.key(1))
    (k_online, p_online), (k_target, p_target) = seen[:2]
    assert k_online is not None and k_online is k_target  # the very same traced key
    assert p_online is not p_target  # online params vs the target network in TrainState.extra
