"""Every config's `:smoke` variant trains, checkpoints and evaluates end to end (tfds data mocked)."""

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


@pytest.mark.parametrize("name", CONFIGS)
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
