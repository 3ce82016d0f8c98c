"""Consistency models on the 2-D gmm_grid toy with ddpm_toy2d's MLP: CD, CT and iCT (CPU, minutes).

    # CT / iCT: no teacher
    python -m jaxgen.run --config configs/cm_toy2d.py:ct --workdir runs/ct_toy2d
    python -m jaxgen.run --config configs/cm_toy2d.py:ict --workdir runs/ict_toy2d
    # CD from a trained diffusion workdir (any process / prediction; here DDPM eps-prediction, about a minute):
    python -m jaxgen.run --config configs/ddpm_toy2d.py --workdir runs/ddpm_toy2d
    python -m jaxgen.run --config configs/cm_toy2d.py:cd --workdir runs/cd_toy2d \
        --config.teacher.workdir=runs/ddpm_toy2d
    # CD from the exact mixture denoiser of gmm_grid (the perfect teacher; teacher.workdir='', the default):
    python -m jaxgen.run --config configs/cm_toy2d.py:cd --workdir runs/cd_oracle_toy2d

Hardware: 2 CPU cores. The data is normalised to unit variance per coordinate, so sigma_data = 1 (not CIFAR's 0.5);
sigma in [0.002, 80], rho = 7. CD: N = 18, Heun, target EMA 0.95, squared L2 (the papers use LPIPS on images);
CT: N(k) from 2 to 150, mu0 = 0.9; iCT: N(k) doubling from 10 to 1280, pseudo-Huber, lognormal pairs. 4000 steps of
batch 256, Adam 1e-3 (cosine), evaluation EMA 0.999. Evaluation: 2000 samples at 1, 2 and 4 steps (multistep
consistency sampling), sliced W2 and MMD against the test split: eval/sw2_1step, eval/sw2_2step, eval/sw2_4step.
Expected: all 25 modes at 1 step with CD, sw2 above ddpm_toy2d's 0.060 (1000 steps); CT / iCT blurrier at one
step, better at 2-4. Train time estimated (not measured): 1-3 min per method on 2 cores (a CT/iCT step is two MLP
passes, a Heun CD step four), plus the teacher's minute for CD from a workdir.
Variants: cd | ct (default) | ict, and `:smoke` (4 steps end to end; smoke CD uses the exact mixture denoiser, so
no teacher run is needed), e.g. `:cd,smoke`.
"""

import ml_collections

from jaxgen.config import base_config, parse_variant, smoke_train
from jaxgen.data import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"method": ("cd", "ct", "ict")}, {"method": "ct"})
    c = base_config()
    c.task = "consistency"
    c.data = default_data_config("gmm_grid")
    c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=256, depth=3, t_embed=64))
    c.consistency = ml_collections.ConfigDict(dict(
        method=v["method"], sigma_min=0.002, sigma_max=80.0, sigma_data=1.0, rho=7.0, num_scales=18, solver="heun",
        distance="l2", target_ema=0.95, s0=0, s1=0, mu0=0.9, p_mean=-1.1, p_std=2.0))
    c.teacher = ml_collections.ConfigDict(dict(workdir=""))
    c.train.num_steps = 4000
    c.train.batch_size = 256
    c.train.log_every = 250
    c.train.checkpoint_every = 2000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.ema_decay = 0.999
    c.eval = ml_collections.ConfigDict(dict(num_samples=2000, batch_size=250, sample_steps=(1, 2, 4),
                                            metric="classifier", fid_stats="", inception_weights="",
                                            classifier_steps=500))
    if v["smoke"]:
        smoke_train(c, batch_size=32)
        c.model.hidden = 32
        c.eval.num_samples = 64
        c.eval.batch_size = 8
        c.eval.sample_steps = (1, 2)
        if v["method"] == "ict":
            c.consistency.s0, c.consistency.s1 = 10, 20  # the doubling curriculum needs K >= log2(s1/s0) + 1
    return c
