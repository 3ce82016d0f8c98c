"""Shortcut model (Frans et al. 2024) on the scikit-learn 8x8 digits with a small UNet (CPU, minutes on 2 cores).

    python -m jaxgen.run --config configs/shortcut_digits.py --workdir runs/shortcut_digits

One velocity network s(x_t, t, d) (configs/rf_digits.py's UNet, x_t = (1 - t) x0 + t eps, data at t = 0) with a
second time embedding of log2(1/d) / log2(M) added to its time embedding; no teacher. Each batch: flow-matching rows
at the base step d = 1/M (M = 128), target s = eps - x0, and a quarter of self-consistency rows covering every step
size 2d = 2/128 .. 1, with target sg[(s(x_t, t, d) + s(x', t - d, d)) / 2], x' = x_t - d s(x_t, t, d), from the EMA
weights (0.999); plain MSE. AdamW 1e-3 (cosine), batch 64, 1500 steps (about 5 min on 2 cores: one UNet pass with
gradients and two EMA passes on the self-consistency rows per step). Evaluation: 297 samples with 1, 2, 4 and 128
equal Euler steps of the step-conditioned field, eval/fd_1step, eval/fd_2step, eval/fd_4step, eval/fd_128step (the
Fréchet distance in the digits classifier's features; rf_digits' plain flow: fd 3.54 with RK45).
Measured (experiments/one_step.py --settings digits): fd 49.3 / 48.4 / 47.0 at 1 / 2 / 4 steps and 6.14 at 128 steps
(the large steps need a longer run; the EDM teacher edm_digits.py: 4.32 at Heun 35 NFE); 17 min on 2 shared
cores, evaluation at 128 steps included.

Published, for context: shortcut models report DiT-B numbers on CelebA-HQ-256 and ImageNet-256 only (no CIFAR-10
FID; Frans et al. 2024); the CIFAR-10 one-step references are CD 3.55, iCT 2.83, SiD 1.923 (configs/cm_cifar10.py,
configs/sid_cifar10.py).
Variant `:smoke`: 4 steps end to end with a one-level UNet (used by the tests).
"""

import ml_collections

from jaxgen.config import base_config, parse_variant, smoke_train
from jaxgen.data import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {}, {})
    c = base_config()
    c.task = "shortcut"
    c.data = default_data_config("digits")
    c.model = ml_collections.ConfigDict(dict(
        name="unet", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1, num_groups=8))
    c.shortcut = ml_collections.ConfigDict(dict(num_base_steps=128, bootstrap_fraction=0.25))
    c.train.num_steps = 1500
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.999
    c.eval = ml_collections.ConfigDict(dict(num_samples=297, batch_size=100, sample_steps=(1, 2, 4, 128),
                                            metric="classifier", fid_stats="", inception_weights="",
                                            classifier_steps=500))
    if v["smoke"]:
        smoke_train(c)
        c.model.update(dict(ch=8, ch_mult=(1,), attn_resolutions=(), num_groups=4))  # compiles fast
        c.eval.update(dict(num_samples=16, batch_size=2, sample_steps=(2,), classifier_steps=2))  # one sampler compiled
    return c
