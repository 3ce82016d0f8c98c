"""The diffusion task's eval.likelihood: eval/vb_bpd (DDPM, here with Analytic-DPM's variance, from Gamma on all T
steps) and eval/ode_bpd are reported and finite; bad values of the keys are ConfigErrors naming them."""
import json
import os

import ml_collections
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen.config import ConfigError
from jaxgen.tasks import build_and_train
from jaxgen.tasks import diffusion as task_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "configs", "ddpm_toy2d.py")


def test_likelihood_is_reported_with_the_analytic_variance(tmp_path):
    config = config_lib.load_config(TOY + ":analytic,smoke")
    config.eval.untrained_baseline = False
    config.eval.likelihood = True
    config.eval.likelihood_samples = 10  # not a multiple of the global batch (8 x 8 devices): one padded batch
    out = build_and_train(config, str(tmp_path))
    assert np.isfinite(out["eval/vb_bpd"]) and np.isfinite(out["eval/ode_bpd"]) and np.isfinite(out["eval/sw2"])
    # the bound's variance came from Gamma at every step t = 1..T (the sampler's own Gamma: its 5 steps)
    T, step = config.diffusion.num_steps, config.train.num_steps
    with open(os.path.join(tmp_path, "sampling", f"gamma_step{step}_K{T}_uniform.json")) as f:
        assert json.load(f)["timesteps"] == list(range(1, T + 1))
    assert os.path.exists(os.path.join(tmp_path, "sampling", f"gamma_step{step}_K5_uniform.json"))


@pytest.mark.parametrize("key,value", [("likelihood", "yes"), ("likelihood_samples", 0)])
def test_bad_likelihood_keys_are_config_errors(key, value):
    config = config_lib.load_config(TOY + ":smoke")
    config.eval = ml_collections.ConfigDict(dict(config.eval, **{key: value}))  # untyped, as a hand-written config
    with pytest.raises(ConfigError, match=f"eval.{key}"):
        task_lib.build(config)
