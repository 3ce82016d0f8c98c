"""The diffusion task: every sampling variant re-evaluates a trained workdir (no training; learned parts fitted
once and restored from the cache), every process / prediction trains and samples, evaluation in batches agrees on
1 and 8 devices with bounded memory, the Inception metric resumes, reflow and distillation train on a teacher's
pairs. Most tests run on the 2-D toy (an MLP compiles in seconds); the image path runs in the digits tests."""

import json
import os

import jax
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen.config import ConfigError
from jaxgen.diffusion import sampling
from jaxgen import task_configs
from jaxgen.tasks import _evaluation as evaluation
from jaxgen.tasks import diffusion as task_lib
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


@pytest.mark.parametrize("variant", [v for v in task_configs.SAMPLING_VARIANTS if v != "ddpm"])
def test_sampling_variant_evaluates_a_trained_workdir(trained, variant):
    workdir, step = trained
    config = config_lib.load_config(f"{TOY}:{variant},smoke")  # also samples the untrained baseline
    out = build_and_train(config, workdir)
    assert np.isfinite(out["eval/sw2"]) and np.isfinite(out["eval/mmd"])
    assert Checkpointer(os.path.join(workdir, "checkpoints"), None).latest_step == step  # evaluated, not trained
    assert os.path.exists(os.path.join(workdir, "figures", f"samples_{sampling.SamplerSpec.from_config(config.eval).tag()}.png"))
    if variant in CACHED:
        cache = os.path.join(workdir, "sampling", CACHED[variant].format(step=step))
        assert os.path.exists(cache)
    if variant in RESTORED:  # fitted on the first evaluation, restored on the second: the same samples
        stamp = os.path.getmtime(cache)
        again = build_and_train(config, workdir)
        assert again["eval/sw2"] == out["eval/sw2"]
        assert os.path.getmtime(cache) == stamp


def test_sampler_tags_name_the_setting():
    tag = lambda **kw: sampling.SamplerSpec.from_config(task_configs.eval_config(**kw)).tag()  # noqa: E731
    assert tag(sampler="ddim", sample_steps=50, eta=0.0, variance="analytic") == "ddim-K50-eta0-analytic"
    assert tag(sampler="heun", sample_steps=9) == "heun-nfe9"
    assert tag(sample_steps=0, variance="beta_tilde") == "ddpm-KT-beta_tilde"
    assert tag(sampler="flow_euler", sample_steps=4) == "flow_euler-K4" and tag(sampler="rk45") == "rk45"


def test_ode_grid_counts_evaluations():
    from jaxgen import diffusion

    schedule = diffusion.make_schedule("linear", 1000)
    for solver, nfe, intervals, afs in (("euler", 7, 7, False), ("heun", 7, 4, True), ("dpm2", 8, 4, False)):
        ts, got_afs = sampling.pf_ode_grid(schedule, nfe, solver)
        assert len(ts) == intervals + 1 and got_afs == afs
        assert diffusion.ode_nfe(solver, intervals, afs) == nfe
    sig = np.asarray(schedule.sigma_ratio(np.asarray(ts)))
    assert np.isclose(sig[0], 80.0, rtol=1e-4) and np.isclose(sig[-1], np.sqrt(1e-4 / (1 - 1e-4)), rtol=1e-3)


def test_digits_unet_with_analytic_variance_runs_end_to_end(tmp_path):
    """configs/quickstart.py:analytic,smoke: Gamma of the UNet, the pixel clip, scored by the Fréchet distance
    (SN/NPR heads share the code path with the MLP heads of the toy tests, at a much larger compile time)."""
    config = config_lib.load_config(QUICKSTART + ":analytic,smoke")
    config.eval.untrained_baseline = False  # the baseline's plain sampler runs in the toy tests
    config.model.update(dict(ch_mult=(1,), attn_resolutions=()))  # attention is tested in tests/test_nets.py
    out = build_and_train(config, str(tmp_path))
    assert np.isfinite(out["eval/fd"])
    assert os.path.exists(tmp_path / "sampling" / "gamma_step4_K5_uniform.json")
    assert os.path.exists(tmp_path / "figures" / "samples_ddpm-K5-analytic.png")


def test_diverged_samples_score_inf_with_a_warning(capsys):
    from jaxgen import data as data_lib

    config = config_lib.load_config(TOY + ":smoke")
    info = data_lib.dataset_info(config.data)
    samples = np.zeros((64, 2), np.float32)
    samples[:16] = np.nan
    train = lambda: data_lib.load_split(config.data, config.data.split_train)  # noqa: E731
    score = evaluation.Scorer(config, config.eval, info, jax.random.key(0), train, "unused", "tag", 0)
    out, shown = score(lambda start: samples[start:start + 32], 64, 32)
    assert out["sw2"] == out["mmd"] == float("inf") and len(shown) == 64
    assert "25.0% of the samples are not finite" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, match", [
    ({"eval.sampler": "heun", "eval.variance": "analytic"}, "config.eval: variance 'analytic' needs sampler 'ddpm'"),
    ({"eval.variance": "optimal"}, "config.eval: variance must be one of"),
    ({"eval.sampler": "dpm3"}, "config.eval: sampler must be one of"),
    ({"eval.sampler": "amed", "eval.sample_steps": "1"}, "must be >= 2 for 'amed'"),
    ({"diffusion.process": "rf", "eval.sampler": "ddim"}, "sampler 'ddim' needs the discrete VP"),
    ({"diffusion.process": "ve", "eval.sampler": "heun", "eval.sample_steps": "0"}, "steps must be >= 1"),
    ({"diffusion.process": "vp-cosine"}, "config.diffusion.process must be one of"),
    ({"diffusion.prediction": "score"}, "config.diffusion.prediction must be one of"),
    ({"diffusion.weighting": "p2"}, "config.diffusion.weighting must be one of"),
    ({"diffusion.time_sampling": "beta"}, "config.diffusion.time_sampling must be one of"),
    ({"eval.metric": "inception"}, "config.eval.metric='inception' needs images"),
    ({"eval.batch_size": "0"}, "config.eval.batch_size must be >= 1"),
    ({"eval.precision_recall": "5"}, "with eval.metric='inception', got 5 with 'classifier'"),
])
def test_bad_sampling_settings_are_named(overrides, match):
    config = config_lib.load_config(TOY + ":smoke")
    config_lib.apply_overrides(config, list(overrides.items()))
    with pytest.raises(ConfigError, match=match):
        task_lib.build(config)


@pytest.mark.parametrize("overrides", [
    # continuous VP with v-prediction, Min-SNR weighting and logit-normal times, adaptive RK45 on the velocity
    # (rectified flow with the velocity and Euler: the reflow test below and the rf_digits smoke)
    {"diffusion.process": "vp", "diffusion.prediction": "v", "diffusion.weighting": "min_snr",
     "diffusion.time_sampling": "logit_normal", "eval.sampler": "rk45"},
    # EDM: its preconditioning, lognormal sigmas, its weighting and Heun (configs/edm_digits.py on the toy)
    {"diffusion.process": "edm", "diffusion.prediction": "edm", "diffusion.weighting": "edm",
     "diffusion.time_sampling": "lognormal", "eval.sampler": "heun", "eval.sample_steps": "4"},
    # VE with x0-prediction and SNR weighting, DPM-Solver-2 on the PF-ODE
    {"diffusion.process": "ve", "diffusion.prediction": "x0", "diffusion.weighting": "snr", "eval.sampler": "dpm2",
     "eval.sample_steps": "4"},
])
def test_any_process_and_prediction_trains_and_samples(tmp_path, overrides):
    config = config_lib.load_config(TOY + ":smoke")
    config_lib.apply_overrides(config, list(overrides.items()) + [("eval.untrained_baseline", "False")])
    out = build_and_train(config, str(tmp_path))
    assert np.isfinite(out["eval/sw2"]) and np.isfinite(out["eval/mmd"])


def _toy_task_and_state(**overrides):
    config = config_lib.load_config(TOY + ":smoke")
    config_lib.apply_overrides(config, list(overrides.items()))
    task = task_lib.build(config)
    return config, task, jax.jit(task.init)(jax.random.key(0))


def test_evaluation_is_the_same_on_1_and_8_devices(tmp_path):
    """Sample j depends only on (key, j): 8 samples per device on 1 or 8 devices give the same samples, so the
    same metrics (up to float reassociation in the sharded network)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    _, task, state = _toy_task_and_state(**{"eval.num_samples": "64", "eval.batch_size": "8",
                                           "eval.untrained_baseline": "False"})
    outs = []
    for n in (1, 8):
        mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
        placed = jax.device_put(state, NamedSharding(mesh, P()))
        outs.append(task.evaluate(placed, jax.random.key(1), str(tmp_path / str(n))))
    np.testing.assert_allclose(outs[0]["sw2"], outs[1]["sw2"], rtol=1e-4)
    np.testing.assert_allclose(outs[0]["mmd"], outs[1]["mmd"], rtol=1e-4, atol=1e-7)


def test_sampling_peak_memory_does_not_grow_with_num_samples():
    """The compiled evaluation step draws one batch: XLA's memory analysis is the same for 10k and 50k samples."""
    sizes = []
    for n in ("10000", "50000"):
        _, task, _ = _toy_task_and_state(**{"eval.num_samples": n, "eval.batch_size": "16"})
        state = jax.eval_shape(task.init, jax.random.key(0))
        fn, args, _ = task.eval_step(state)
        m = fn.lower(*args).compile().memory_analysis()
        sizes.append((m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes))
    assert sizes[0] == sizes[1]
    assert sizes[0][2] == 16 * 2 * 4  # one batch of 16 two-dimensional float32 samples


def test_inception_metric_scores_and_resumes_from_its_saved_state(tmp_path, random_inception_weights):
    """eval.metric='inception' on the digits (random Inception weights written as torch writes the published file,
    random reference statistics): FID and IS are reported, the running statistics saved after every batch, and an
    evaluation that finds finished statistics reads them instead of sampling again."""
    from jaxgen.metrics import fid

    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 64)) / 8
    fid.save_stats(str(tmp_path / "ref.npz"), rng.normal(size=2048), a @ a.T + np.eye(2048))
    config = config_lib.load_config(QUICKSTART + ":smoke")
    config_lib.apply_overrides(config, [("eval.metric", "inception"), ("eval.inception_weights", str(random_inception_weights[0])),
                                        ("eval.fid_stats", str(tmp_path / "ref.npz")), ("eval.num_samples", "10"),
                                        ("eval.batch_size", "5"), ("eval.untrained_baseline", "False"),
                                        ("eval.precision_recall", "4"), ("model.ch_mult", "(1,)"),
                                        ("model.attn_resolutions", "()")])  # the sampler's network is not the point
    task = task_lib.build(config)
    state = jax.jit(task.init)(jax.random.key(0))
    workdir = str(tmp_path / "run")
    out = task.evaluate(state, jax.random.key(1), workdir)
    assert np.isfinite(out["fid"]) and out["fid"] > 0 and out["is"] >= 1.0
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    saved = os.path.join(workdir, "eval", "inception_ddpm-KT-beta_step0.npz")
    with np.load(saved) as f:
        assert int(f["batch"]) == 2 and int(f["global_batch"]) == 5  # 10 samples: two batches of 5 on 1 device
    again = task.evaluate(state, jax.random.key(1), workdir)
    assert again == out


RF_TOY = [("diffusion.process", "rf"), ("diffusion.prediction", "velocity"), ("eval.sampler", "flow_euler"),
          ("eval.sample_steps", "4"), ("eval.untrained_baseline", "False"), ("eval.straightness_steps", "4")]


def test_reflow_generates_teacher_pairs_resumably_and_trains_on_them(tmp_path, capsys):
    """A 1-RF teacher's pairs are its own ODE solutions from the stored noise; generation resumes at the first
    missing shard with the same pairs; the 2-RF (init from the teacher) and the one-step distillation train on them."""
    from jaxgen import diffusion
    from jaxgen.data import pairs as pairs_lib
    from jaxgen.diffusion import objectives

    teacher_dir = str(tmp_path / "teacher")
    teacher = config_lib.load_config(TOY + ":smoke")
    config_lib.apply_overrides(teacher, RF_TOY)
    build_and_train(teacher, teacher_dir)

    def student(workdir, **overrides):
        config = config_lib.load_config(TOY + ":smoke")
        config_lib.apply_overrides(config, RF_TOY + list(overrides.items()))
        with config.unlocked():
            config.reflow = task_configs.reflow_config(teacher=teacher_dir, num_pairs=100, sampler="flow_euler",
                                                   sample_steps=3, batch_size=4)  # shards of 4 x 8 devices
        return build_and_train(config, workdir)

    workdir = str(tmp_path / "reflow")
    out = student(workdir)
    assert np.isfinite(out["eval/straightness"]) and out["eval/straightness"] >= 0
    pairs_dir = os.path.join(workdir, "pairs")
    assert pairs_lib.num_shards(pairs_dir) == 4  # 100 pairs in shards of 32
    split = pairs_lib.PairSplit(pairs_dir)
    assert len(split) == 100 and split.shape == (2,)
    got = split.load(np.arange(100))
    fns, process, _ = task_lib.load_trained(teacher, teacher_dir)
    direct = diffusion.flow_solve(fns.velocity, jax.numpy.asarray(got["noise"]), diffusion.uniform_grid(3), "euler")
    np.testing.assert_allclose(got["x"], direct, rtol=1e-5, atol=1e-5)

    first = np.load(pairs_lib.shard_path(pairs_dir, 1))
    os.remove(pairs_lib.shard_path(pairs_dir, 1))  # an interrupted generation: shards 1.. missing
    os.remove(pairs_lib.shard_path(pairs_dir, 3))
    os.remove(pairs_lib.shard_path(pairs_dir, 2))
    student(workdir)  # trains nothing more; regenerates shards 1-3
    np.testing.assert_array_equal(np.load(pairs_lib.shard_path(pairs_dir, 1)), first)
    assert "3 shards generated" in capsys.readouterr().out

    distilled = student(str(tmp_path / "distill"), **{"diffusion.time_sampling": "end", "eval.sample_steps": "1"})
    assert np.isfinite(distilled["eval/sw2"])
    assert objectives.sample_times(jax.random.key(0), process, 3, "end").tolist() == [1.0, 1.0, 1.0]


def test_a_missing_or_mismatched_teacher_is_named(tmp_path):
    config = config_lib.load_config(TOY + ":smoke")
    with config.unlocked():
        config.reflow = task_configs.reflow_config(teacher=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="is not a training workdir"):
        task_lib.build(config)


def test_a_workdir_of_the_ddpm_task_resumes_under_the_diffusion_task():
    """config.json written before the diffusion keys existed, with config.task='ddpm': no difference to refuse;
    a changed value of a new key still is one."""
    from jaxgen.train import workdir as workdir_lib

    new = json.loads(config_lib.load_config(QUICKSTART).to_json_best_effort())
    old = json.loads(json.dumps(new))
    old["task"] = "ddpm"
    old["diffusion"] = {"schedule": "linear", "num_steps": 1000}
    assert workdir_lib.config_differences(old, new) == []
    new["diffusion"]["prediction"] = "x0"
    assert workdir_lib.config_differences(old, new) == [("diffusion.prediction", workdir_lib._ABSENT, "x0")]


def test_compiled_sampler_runs_every_step_on_device_without_host_round_trips():
    """The evaluation sampler is one program: its steps in a while loop, no host callback / infeed / outfeed /
    send / recv in the optimised HLO (a per-step progress callback, say, would show as one), and its call makes no
    implicit host transfer. The counter itself is checked on a loop with a callback."""
    from experiments import bench_sampling

    _, task, state = _toy_task_and_state()
    fn, args, _ = task.eval_step(state)
    args = bench_sampling.concrete_args(args, jax.random.key(1))
    compiled = fn.lower(*args).compile()
    traffic = bench_sampling.host_traffic(compiled.as_text())
    assert traffic["while"] >= 1 and not any(traffic[k] for k in bench_sampling.HOST_OPS), traffic
    with jax.transfer_guard("disallow"):
        jax.block_until_ready(compiled(*args))

    def with_callback(x):
        return jax.lax.fori_loop(0, 3, lambda i, x: (jax.debug.callback(lambda v: None, x), 2 * x)[1], x)

    assert bench_sampling.host_traffic(jax.jit(with_callback).lower(np.ones(2)).compile().as_text())["callback"] == 1
