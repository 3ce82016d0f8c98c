"""Consistency models on CIFAR-10 (Song et al. 2023; Song & Dhariwal 2023), for a Cloud TPU slice.

Target slice: v5e-8 (8 chips, one host; not run here). Data prepared in a bucket as for configs/ddpm_cifar10.py;
FID reference statistics as described there (eval.fid_stats). Compiled for the slice without a TPU
(`python -m jaxgen.aot --config configs/cm_cifar10.py --topology v5e-8`, experiments/results/aot_tpu.json), per chip:
the iCT train step at global batch 1024 needs 4.18 of 16 GiB, 6058 GFLOP and 51 GiB accessed, at most 15 steps/s
(memory bound; a bound, not a measurement); the one-step evaluation sampler at 256 per chip 2.04 GiB; the FID
Inception-v3 extraction 4.09 GiB.

    # iCT (default variant; no teacher)
    python -m jaxgen.run --config configs/cm_cifar10.py:ict --workdir gs://BUCKET/runs/ict_cifar10 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets \
        --config.eval.fid_stats=gs://BUCKET/cifar10_train_stats.npz
    # CT (no teacher)
    python -m jaxgen.run --config configs/cm_cifar10.py:ct --workdir gs://BUCKET/runs/ct_cifar10 ...
    # CD: first a diffusion teacher (configs/ddpm_cifar10.py, any process / prediction), then
    python -m jaxgen.run --config configs/cm_cifar10.py:cd --workdir gs://BUCKET/runs/cd_cifar10 \
        --config.teacher.workdir=gs://BUCKET/runs/ddpm_cifar10 ...

Published FIDs (50k samples, unconditional CIFAR-10), at 1 / 2 steps:
    CD (EDM teacher, LPIPS, Heun, N = 18)        3.55 / 2.93   (Song et al. 2023)
    CT (LPIPS, N(k) 2 -> 150, mu0 = 0.9)         8.70 / 5.83   (Song et al. 2023)
    iCT (pseudo-Huber, lognormal, N 10 -> 1280)  2.83 / 2.46   (Song & Dhariwal 2023, NCSN++, batch 1024)
    Shortcut models (Frans et al. 2024) report DiT-B results on CelebA-HQ and ImageNet-256 only: there is no
    CIFAR-10 number to compare configs/shortcut_toy2d.py's task with.
Differences here: the package's UNet (ddpm_cifar10's, 35.7M params) instead of NCSN++; CD / CT use the squared L2
distance (consistency.distance; LPIPS is not available), which the paper reports as clearly worse than LPIPS; the
2-step levels are the Karras grid's interior point, not the papers' tuned ones (e.g. 0.821 for CD). Expect FIDs
above the published ones. Recipes: CD / CT Adam 4e-4, batch 512, 800k steps, evaluation EMA 0.9999 (CD target
EMA 0.95); iCT Adam 1e-4, batch 1024, 400k steps, dropout 0.3, EMA 0.99993. Time not estimated.
Variants: cd | ct | ict (default), and `:smoke` (a 2-step miniature on tfds mock data; `:cd,smoke` uses a freshly
initialised network as teacher, teacher.untrained=True; used by the tests).
"""

import ml_collections

from jaxgen.config import base_config, parse_variant
from jaxgen.data import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"method": ("cd", "ct", "ict")}, {"method": "ict"})
    m = v["method"]
    c = base_config()
    c.task = "consistency"
    c.data = default_data_config("cifar10")
    c.data.random_flip = True
    c.model = ml_collections.ConfigDict(dict(
        name="unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        dropout=0.3 if m == "ict" else 0.1, num_groups=32))
    c.consistency = ml_collections.ConfigDict(dict(
        method=m, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0, num_scales=18, solver="heun",
        distance="l2", target_ema=0.95, s0=0, s1=0, mu0=0.9, p_mean=-1.1, p_std=2.0))
    c.teacher = ml_collections.ConfigDict(dict(workdir="", untrained=False))
    c.train.num_steps = 400_000 if m == "ict" else 800_000
    c.train.batch_size = 1024 if m == "ict" else 512
    c.train.log_every = 1000
    c.train.checkpoint_every = 10_000
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-4 if m == "ict" else 4e-4
    c.optimizer.grad_clip = None
    c.ema_decay = 0.99993 if m == "ict" else 0.9999
    c.eval = ml_collections.ConfigDict(dict(num_samples=50_000, batch_size=256, sample_steps=(1, 2),
                                            metric="inception", fid_stats="", inception_weights="",
                                            classifier_steps=500))
    if v["smoke"]:
        c.data.mock = True  # tfds mock data: runs before CIFAR-10 is prepared
        c.train.update(dict(num_steps=2, batch_size=8, log_every=1, checkpoint_every=2))
        c.model.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4))  # compiles fast
        c.consistency.s0, c.consistency.s1 = 10, 20  # iCT's doubling curriculum within 2 steps
        c.teacher.untrained = m == "cd"
        c.eval.update(dict(classifier_steps=2, num_samples=8, metric="classifier", batch_size=1, sample_steps=(1,)))
    return c
