"""Every config's `:smoke` variant trains, checkpoints and evaluates end to end (tfds data mocked), or, where other
smokes already run its task, network, data and evaluation end to end, builds and lowers its train and evaluation steps
(every config error and shape mismatch shows there, in a fraction of the time)."""

import json
import os

import pytest
import tensorflow_datasets as tfds

from jaxgen import config as config_lib
from jaxgen.data import KNOWN_TFDS
from jaxgen.tasks import build_and_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
# Configs whose smoke variants a task's own test file already runs (through the CLI, with more variants).
_OTHERS = "".join(open(os.path.join(TESTS, f)).read()
                  for f in ("test_autoencoder_task.py", "test_seq_tasks.py", "test_diffusion_task.py",
                            "test_one_step_tasks.py"))
CONFIGS = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py") and f not in _OTHERS)
# config -> the configs whose smokes run its task, network, data and evaluation end to end (in this file, or in a
# task's own test file): the consistency and SiD tasks on the 2-D toys (tests/test_one_step_tasks.py), the one-step
# evaluation of images (shortcut_digits), the diffusion task on CIFAR-10's tfds pipeline (ddpm_cifar10), rectified
# flow on images with its straightness (rf_digits) and on the toy (tests/test_diffusion_task.py's reflow test), EDM's
# process and sampler on the toy (tests/test_diffusion_task.py) with the digits UNet (quickstart).
LOWERED_ONLY = {"cm_cifar10.py": ("cm_toy2d.py", "shortcut_digits.py", "ddpm_cifar10.py"),
                "cm_digits.py": ("cm_toy2d.py", "shortcut_digits.py"),
                "sid_cifar10.py": ("sid_toy2d.py", "shortcut_digits.py", "ddpm_cifar10.py"),
                "sid_digits.py": ("sid_toy2d.py", "shortcut_digits.py"),
                "rf_cifar10.py": ("rf_digits.py", "ddpm_cifar10.py"),
                "rf_toy2d.py": ("rf_digits.py", "ddpm_toy2d.py"),
                "edm_digits.py": ("ddpm_toy2d.py", "quickstart.py")}


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in LOWERED_ONLY])
def test_smoke_config_runs_end_to_end(name, tmp_path):
    config = config_lib.load_config(os.path.join(ROOT, "configs", name) + ":smoke")
    config_lib.validate(config)
    workdir = str(tmp_path / "run")
    if config.data.get("name") in KNOWN_TFDS:
        with tfds.testing.mock_data(num_examples=64):
            final = build_and_train(config, workdir)
    else:
        final = build_and_train(config, workdir)
    assert final, "evaluation returned no metrics"
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert any("loss" in r for r in rows)
    assert os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.parametrize("name", sorted(LOWERED_ONLY))
def test_smoke_config_lowers_its_train_and_evaluation_steps(name):
    import jax

    from jaxgen import aot

    for other in LOWERED_ONLY[name]:  # each runs end to end: a smoke here, or a config a task's test file runs
        assert other not in LOWERED_ONLY and (other in CONFIGS or other in _OTHERS), other
    config = config_lib.load_config(os.path.join(ROOT, "configs", name) + ":smoke")
    config_lib.validate(config)
    _, _, _, _, lowered = aot.lower_steps(config, jax.devices())
    assert [step for step, *_ in lowered] == ["train", "eval"]
