"""Config loading and overrides as a library (the CLI's error contract is tests/test_cli.py)."""

import os

import ml_collections
import pytest

from jaxgen import config as config_lib
from jaxgen.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart():
    return config_lib.load_config(os.path.join(ROOT, "configs/quickstart.py"))


def test_overrides_keep_types():
    c = _quickstart()
    config_lib.apply_overrides(c, [("train.num_steps", "7"), ("optimizer.learning_rate", "3e-4"),
                                   ("model.ch_mult", "(1, 2, 4)"), ("eval.untrained_baseline", "false"),
                                   ("eval.clip_x0", "None")])
    assert c.train.num_steps == 7 and isinstance(c.train.num_steps, int)
    assert c.optimizer.learning_rate == pytest.approx(3e-4)
    assert c.model.ch_mult == (1, 2, 4)
    assert c.eval.untrained_baseline is False
    assert c.eval.clip_x0 is None


def test_typo_names_nearest_key():
    c = _quickstart()
    with pytest.raises(ConfigError, match=r"config\.train\.num_stepz.*did you mean 'config\.train\.num_steps'"):
        config_lib.apply_overrides(c, [("train.num_stepz", "3")])


@pytest.mark.parametrize("key,value,match", [
    ("train.batch_size", "-4", "batch_size must be a positive integer"),
    ("train.num_steps", "abc", "must be an integer"),
    ("ema_decay", "1.5", r"ema_decay must be in \[0, 1\)"),
    ("optimizer.learning_rate", "0", "learning_rate must be a finite number > 0"),
])
def test_invalid_values(key, value, match):
    c = _quickstart()
    with pytest.raises(ConfigError, match=match):
        config_lib.apply_overrides(c, [(key, value)])
        config_lib.validate(c)


def test_unknown_variant_and_missing_file():
    with pytest.raises(ConfigError, match="unknown variant"):
        config_lib.load_config(os.path.join(ROOT, "configs/quickstart.py:nope"))
    with pytest.raises(ConfigError, match="config file not found"):
        config_lib.load_config("configs/does_not_exist.py")


def test_every_config_loads_and_validates():
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.endswith(".py"):
            for spec in (name, name + ":smoke"):
                c = config_lib.load_config(os.path.join(ROOT, "configs", spec))
                assert isinstance(c, ml_collections.ConfigDict)
                config_lib.validate(c)
