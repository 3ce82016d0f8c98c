"""Shortcut model (Frans et al. 2024) on the 2-D gmm_grid toy with ddpm_toy2d's MLP (CPU, minutes).

    python -m jaxgen.run --config configs/shortcut_toy2d.py --workdir runs/shortcut_toy2d

One velocity network s(x_t, t, d) conditioned on its step size d (a second time embedding of log2(1/d), added to
the MLP's time embedding), trained on flow-matching rows (base step 1/128) and self-consistency rows (every step
size 2d = 1 .. 2/128 in every batch, targets from the EMA weights, 0.999), no teacher. 4000 steps of batch 256,
Adam 1e-3 (cosine). Evaluation: 2000 samples at 1, 2, 4 and 128 equal steps, sliced W2 and MMD against the test
split: eval/sw2_1step, eval/sw2_2step, eval/sw2_4step, eval/sw2_128step (ddpm_toy2d: 0.060 at 1000 steps).
Expected: all 25 modes from 4 steps on, one-step samples blurrier. Train time estimated (not measured): about
2 min on 2 cores (three MLP passes per step).
Variant `:smoke`: 4 steps end to end (used by the tests).
"""

import ml_collections

from jaxgen.config import base_config, parse_variant, smoke_train
from jaxgen.data import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {}, {})
    c = base_config()
    c.task = "shortcut"
    c.data = default_data_config("gmm_grid")
    c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=256, depth=3, t_embed=64))
    c.shortcut = ml_collections.ConfigDict(dict(num_base_steps=128, bootstrap_fraction=0.25))
    c.train.num_steps = 4000
    c.train.batch_size = 256
    c.train.log_every = 250
    c.train.checkpoint_every = 2000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.ema_decay = 0.999
    c.eval = ml_collections.ConfigDict(dict(num_samples=2000, batch_size=250, sample_steps=(1, 2, 4, 128),
                                            metric="classifier", fid_stats="", inception_weights="",
                                            classifier_steps=500))
    if v["smoke"]:
        smoke_train(c, batch_size=32)
        c.model.hidden = 32
        c.eval.num_samples = 64
        c.eval.batch_size = 8
        c.eval.sample_steps = (1, 2)
    return c
