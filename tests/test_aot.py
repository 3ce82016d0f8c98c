"""jaxgen.aot: TPU compile checks through libtpu without a TPU, and tfds smoke configs without the data.

The compile check runs for real here (libtpu is a test dependency: no skip). Small smoke configs only:
XLA:TPU takes minutes for the CIFAR-10 UNet even at smoke size.
"""

import glob
import math
import os

import jax
import jax.numpy as jnp
import libtpu  # noqa: F401  - the compile check needs it; a missing libtpu must fail, not skip
import numpy as np
import pytest

from jaxgen import aot, tasks
from jaxgen import data as data_lib
from jaxgen.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "ddpm_toy2d.py") + ":smoke"
GIB = 2**30


@pytest.mark.parametrize("name, topology", [
    ("v5e-16", "v5e:4x4"), ("v5e-8", "v5e:2x4"), ("v4-8", "v4:2x2x1"), ("v4-32", "v4:2x2x4"),
    ("v5p-8", "v5p:2x2x1"), ("v6e-8", "v6e:2x4"), ("v5litepod-16", "v5e:4x4"), ("v5e:2x2", "v5e:2x2")])
def test_slice_names_map_to_topologies(name, topology):
    # v5e / v6e slices count chips, v4 / v5p count TensorCores (2 per chip): v4-8 is 4 chips
    assert aot.parse_slice(name)[1] == topology


@pytest.mark.parametrize("bad", ["v5e-3", "v4-6", "tpu-8", "v5e:2x2x1", "v4:2x2"])
def test_bad_slice_names_are_refused_with_the_accepted_ones(bad):
    with pytest.raises(ValueError, match=f"--topology='{bad}'"):
        aot.parse_slice(bad)


def test_chip_numbers_are_the_published_ones():
    # Cloud TPU documentation: HBM per chip, peak bf16 FLOP/s, HBM bandwidth
    published = {"v5e": (16, 197e12, 819e9), "v4": (32, 275e12, 1.2e12), "v5p": (95, 459e12, 2.765e12),
                 "v6e": (32, 918e12, 1.64e12)}
    for family, (hbm_gib, peak, bw) in published.items():
        chip = aot.CHIPS[family]
        assert (chip.hbm_bytes, chip.peak_flops, chip.hbm_bandwidth) == (hbm_gib * GIB, peak, bw)


@pytest.fixture(scope="module")
def toy_report():
    config = load_config(SMOKE)
    return config, aot.compile_report(config, "v5e:2x2")


def test_report_compiles_train_and_eval_steps_with_every_field(toy_report):
    config, rows = toy_report
    assert [r["step"] for r in rows] == ["train", "eval"]
    for r in rows:
        assert (r["chip"], r["topology"], r["devices"], r["chips"], r["mesh"]) == ("TPU v5e", "v5e:2x2", 4, 4,
                                                                                   "data=4, fsdp=1")
        for key in ("argument_bytes", "output_bytes", "temp_bytes", "code_bytes", "total_bytes", "flops",
                    "bytes_accessed", "compile_s"):
            assert r[key] > 0, key
        assert r["total_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"] + r["temp_bytes"]
                                    + r["code_bytes"])
        assert r["fits"] and r["total_bytes"] < r["hbm_bytes"] == 16 * GIB and r["compile_error"] is None
        # the roofline bound, recomputed from the chip's published numbers
        bound = max(r["flops"] / 197e12, r["bytes_accessed"] / 819e9)
        assert r["bound_s"] == pytest.approx(bound, rel=1e-12)
        assert r["bound_steps_per_s"] == pytest.approx(1 / bound, rel=1e-12)
        assert r["bound_by"] == ("compute" if r["flops"] / 197e12 > r["bytes_accessed"] / 819e9 else "memory")
        assert r["sharding"].startswith("P(): ")  # pure data parallel: every leaf replicated
    train, ev = rows
    assert "global batch 32" in train["what"] and f"batch {config.eval.batch_size} per device" in ev["what"]
    assert ev["loop_bodies_counted_once"] and not train["loop_bodies_counted_once"]  # the sampler is a loop
    # the donated train state is aliased, and every chip holds all of it (replicated), at least its raw bytes
    state = jax.eval_shape(tasks.build(config).init, jax.random.key(0))
    state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert train["argument_bytes"] >= train["alias_bytes"] >= state_bytes
    assert train["params"] == sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))


def test_per_chip_flops_match_one_device_running_its_share_of_the_batch(toy_report):
    """Data parallel over 4 chips: each chip runs the step on B / 4 examples. XLA's count for the same
    step compiled for one CPU device at batch B / 4 must agree (the all-reduce adds few FLOPs)."""
    from jaxgen.train.loop import sharded_train_step

    config, rows = toy_report
    task = tasks.build(config)
    state = jax.eval_shape(task.init, jax.random.key(0))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    step = sharded_train_step(task, jax.tree.map(lambda _: device, state), device, jax.random.key(1))
    batch = {"x": jax.ShapeDtypeStruct((config.train.batch_size // 4, 2), jnp.float32),
             "label": jax.ShapeDtypeStruct((config.train.batch_size // 4,), jnp.int32)}
    cost = step.lower(state, batch, jax.ShapeDtypeStruct((), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert rows[0]["flops"] == pytest.approx(cost["flops"], rel=0.25)


@pytest.mark.filterwarnings("error")  # run twice: an executable compiled without a device is not read back from jax's cache
def test_cli_prints_the_table_and_appends_json(toy_report, tmp_path, capsys):
    out = tmp_path / "aot.json"
    # --steps eval: the train step was compiled above; the CLI path is what is tested here
    assert aot.main(["--config", SMOKE, "--topology", "v5e:2x2", "--steps", "eval", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| eval |" in text and "a bound, not a measurement" in text and "P(): " in text
    assert aot.main(["--config", SMOKE, "--topology", "v5e:2x2", "--steps", "eval", "--json", str(out)]) == 0
    import json

    rows = json.loads(out.read_text())
    assert len(rows) == 2 and rows[0]["config"] == SMOKE and rows[0]["slice"] == "v5e:2x2"


def test_config_that_does_not_fit_exits_2_with_one_line(capsys):
    # 2^28 points: XLA:TPU refuses to compile the train step, naming the temporaries it would need
    code = aot.main(["--config", SMOKE, "--topology", "v5e:2x2", "--steps", "train",
                     "--config.train.batch_size=268435456"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "does not fit on v5e:2x2" in err[0] and "TPU v5e chip, which has 16.00 GiB" in err[0]
    need = float(err[0].split("needs at least ")[1].split(" GiB")[0])
    assert need > 16


@pytest.mark.parametrize("argv, match", [
    (["--config", SMOKE, "--topology", "v5e-3"], "--topology='v5e-3'"),
    (["--config", SMOKE], "--topology is required"),
    (["--config", SMOKE, "--topology", "v5e:2x2", "--steps", "train,sample"], "--steps"),
    (["--config", SMOKE, "--topology", "v5e:2x2", "--config.train.batch_sise=4"], "batch_size"),
])
def test_bad_arguments_exit_2_naming_them(argv, match, capsys):
    assert aot.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_libtpu_leaves_the_default_backend_alone(toy_report):
    # after compiling for TPU, JAX itself still runs on the 8 emulated CPU devices of the test setup
    assert jax.default_backend() == "cpu" and jax.device_count() == 8
    assert float(jax.jit(lambda x: x.sum())(jnp.ones(8))) == 8.0


# ------------------------------------------------------------------ data.mock: tfds smoke runs without the data


def test_mock_tfds_data_needs_no_files(tmp_path):
    cfg = data_lib.default_data_config("cifar10")
    cfg.data_dir = str(tmp_path)  # empty: nothing prepared here
    with pytest.raises(data_lib.DatasetNotPreparedError):
        data_lib.dataset_info(cfg)
    cfg.mock = True
    info = data_lib.dataset_info(cfg)
    assert (info.shape, info.num_classes) == ((32, 32, 3), 10)
    batch = next(data_lib.make_train_iterator(cfg, global_batch_size=8, seed=0, process_index=0, process_count=1))
    assert batch["x"].shape == (8, 32, 32, 3) and batch["x"].dtype == np.float32
    assert -1 <= batch["x"].min() and batch["x"].max() <= 1 and batch["x"].std() > 0.1
    assert batch["label"].dtype == np.int32 and np.all((0 <= batch["label"]) & (batch["label"] < 10))
    assert os.listdir(tmp_path) == []
    cfg.data_dir = "gs://no-such-bucket/tfds"  # mock data never reads (or stages) the data dir
    assert data_lib.dataset_info(cfg).shape == (32, 32, 3)


def test_mock_is_refused_for_bundled_data():
    cfg = data_lib.default_data_config("digits")
    cfg.mock = True
    with pytest.raises(ValueError, match="data.mock"):
        data_lib.dataset_info(cfg)


def test_every_tfds_smoke_variant_mocks_its_data_and_no_full_config_does():
    checked = 0
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        full, smoke = load_config(path), load_config(path + ":smoke")
        tfds_data = smoke.data.name not in ("digits",) + data_lib.TOY_NAMES
        assert smoke.data.get("mock", False) == tfds_data, path
        assert not full.data.get("mock", False), path
        checked += tfds_data
    assert checked == 9  # ddpm_, rf_, cm_, sid_cifar10, s4_smnist, s4_psmnist, s4_scifar, fsq_mnist, fsq_cifar10


@pytest.mark.parametrize("config_file", ["fsq_digits.py", "s4_seq_digits.py", "s4_copying.py", "s4_generate_digits.py"])
def test_every_task_exposes_an_eval_step_that_lowers(config_file):
    # one config per task (the DDPM task is compiled above); lowering checks the arguments fit the function
    config = load_config(os.path.join(ROOT, "configs", config_file) + ":smoke")
    task = tasks.build(config)
    fn, args, what = task.eval_step(jax.eval_shape(task.init, jax.random.key(0)))
    assert fn.lower(*args).out_info is not None and what


def test_inception_extraction_is_a_default_step_only_where_evaluation_scores_with_it():
    from jaxgen.config import load_config

    cifar = os.path.join(ROOT, "configs", "ddpm_cifar10.py")
    assert aot.default_steps(load_config(cifar)) == ("train", "eval", "inception")
    assert aot.default_steps(load_config(cifar + ":smoke")) == ("train", "eval")  # its classifier metric
    assert aot.parse_args(["--config", SMOKE, "--topology", "v5e:2x2"])["steps"] is None
    assert aot.parse_args(["--config", SMOKE, "--topology", "v5e:2x2", "--steps", "inception"])["steps"] == (
        "inception",)


def test_breakdown_sums_the_compilers_estimated_cycles_by_category():
    """experiments/aot_breakdown.py on a hand-written XLA:TPU entry computation: only the entry's operations that
    carry an estimate count, each under its op, fusion kind and JAX primitive, grouped into the table's shares."""
    from experiments import aot_breakdown

    hlo = "\n".join([
        "%fused_computation.1 (p: f32[4]) -> f32[4] {",
        '  %x = f32[4]{0} add(%p, %p), backend_config={"estimated_cycles":"999"}',  # not in the entry
        "}",
        "",
        "ENTRY %main.1 (a: f32[8,8]) -> f32[8] {",
        '  %a = f32[8,8]{1,0} parameter(0), metadata={op_name="a"}',
        '  %conv.1 = f32[8,8]{1,0} fusion(%a), kind=kOutput, calls=%f1, metadata={op_name="jit(f)/conv_general_dilated"}, '
        'backend_config={"window_config":{},"estimated_cycles":"600"}',
        '  %dot.2 = f32[8,8]{1,0} fusion(%conv.1), kind=kOutput, calls=%f2, metadata={op_name="jit(f)/dot_general[x]"}, '
        'backend_config={"estimated_cycles":"200"}',
        '  %red.3 = f32[8]{0} fusion(%dot.2), kind=kLoop, calls=%f3, metadata={op_name="jit(f)/reduce_sum"}, '
        'backend_config={"estimated_cycles":"150"}',
        '  ROOT %copy.4 = f32[8]{0} copy(%red.3), backend_config={"estimated_cycles":"50"}',
        "}",
    ])
    total, by = aot_breakdown.estimated_cycles(hlo)
    assert total == 1000.0
    assert by == {"fusion:Output conv_general_dilated": 600, "fusion:Output dot_general": 200,
                  "fusion:Loop reduce_sum": 150, "copy": 50}
    assert aot_breakdown.grouped_shares(by) == pytest.approx({"mxu": 0.8, "reductions": 0.15, "rng": 0.0, "other": 0.05})


def test_groupnorm_with_a_written_out_backward_pass_equals_flax():
    """experiments/aot_groupnorm.py compares flax's GroupNorm with one whose backward pass is written out: both
    must compute the same values and gradients (flax's through autodiff), or the comparison means nothing."""
    from flax import nnx

    from experiments import aot_groupnorm

    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8)) * 3.0 + 1.0
    scale, bias = jax.random.normal(jax.random.key(1), (8,)), jax.random.normal(jax.random.key(2), (8,))
    w = jax.random.normal(jax.random.key(3), x.shape)
    custom = aot_groupnorm.group_norm_custom_vjp()

    def flax_loss(x, s, b):
        gn = nnx.GroupNorm(8, num_groups=4, epsilon=1e-6, rngs=nnx.Rngs(0))
        gn.scale.value, gn.bias.value = s, b
        return jnp.sum(jnp.tanh(gn(x)) * w)

    def custom_loss(x, s, b):
        return jnp.sum(jnp.tanh(custom(x, s, b, 4)) * w)

    ref = jax.value_and_grad(flax_loss, argnums=(0, 1, 2))(x, scale, bias)
    got = jax.value_and_grad(custom_loss, argnums=(0, 1, 2))(x, scale, bias)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    for g, r in zip(got[1], ref[1]):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
