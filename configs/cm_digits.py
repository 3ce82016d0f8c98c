"""Consistency models on the scikit-learn 8x8 digits with a small UNet: CD, CT and iCT (CPU, minutes on 2 cores).

    # CT / iCT: no teacher
    python -m jaxgen.run --config configs/cm_digits.py:ct --workdir runs/ct_digits
    python -m jaxgen.run --config configs/cm_digits.py:ict --workdir runs/ict_digits
    # CD: first a diffusion teacher (any process / prediction; EDM here, a few minutes), then
    python -m jaxgen.run --config configs/edm_digits.py --workdir runs/edm_digits
    python -m jaxgen.run --config configs/cm_digits.py:cd --workdir runs/cd_digits \
        --config.teacher.workdir=runs/edm_digits

f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, log(sigma) / 4) with c_skip = sigma_data^2 /
((sigma - sigma_min)^2 + sigma_data^2), c_out = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2), so
f(x, sigma_min) = x; F is configs/edm_digits.py's UNet (ch 32, ch_mult (1, 2), attention at 4x4), sigma in
[0.002, 80], rho = 7, sigma_data = 0.5 (the digits are scaled to [-1, 1]). CD: N = 18 Karras levels, one Heun step
of the teacher's PF-ODE dx/dsigma = (x - D(x, sigma)) / sigma between adjacent levels, target EMA mu = 0.95, squared
L2 distance (the papers use LPIPS); CT: N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 from 2 to 150,
mu(k) = exp(s0 log(mu0) / N(k)), mu0 = 0.9; iCT: N(k) = min(s0 2^floor(k / K'), s1) + 1 from 10 to 1280
(K' = floor(K / (log2(s1 / s0) + 1))), pseudo-Huber d(x, y) = sqrt(|x - y|^2 + c^2) - c, c = 0.00054 sqrt(dim),
lognormal pairs (P_mean -1.1, P_std 2.0), weight 1 / (sigma_{i+1} - sigma_i), no EMA target. AdamW 1e-3 (cosine),
batch 64, evaluation EMA 0.995; train.num_steps per method so that training fits in about 5 min on 2 cores
(teacher excluded): CT / iCT 1500 steps (two UNet passes per step, one with gradients), CD 1000 (four: two for the
teacher's Heun step, the target, the online network). Evaluation: 297 samples (the test split's size) at 1, 2 and
4 steps of multistep consistency sampling (re-noising to the Karras grid's interior levels), scored by the Fréchet
distance in a small digits classifier's features: eval/fd_1step, eval/fd_2step, eval/fd_4step (the same classifier
as the diffusion digits configs: quickstart's DDPM fd 5.52 at 250 steps, rf_digits 3.54 with RK45).
Measured (experiments/one_step.py --settings digits; fd at 1 / 2 / 4 steps, teacher edm_digits.py at fd 4.32 with
Heun 35 NFE and 98.1 with one Euler step): CD 7.97 / 8.68 / 8.26, CT 60.7 / 48.1 / 45.6 (collapsed: CT needs far
more steps), iCT 5.59 / 6.44 / 6.96; 6.5-9 min each on 2 shared cores, evaluation included.

Published FIDs (CIFAR-10, 50k samples) at 1 / 2 steps, for context: CD 3.55 / 2.93, CT 8.70 / 5.83 (Song et al.
2023); iCT 2.83 / 2.46 (Song & Dhariwal 2023). See configs/cm_cifar10.py.
Variants: cd | ct (default) | ict, and `:smoke` (4 steps end to end with a one-level UNet; `:cd,smoke` uses a freshly
initialised network as teacher, teacher.untrained=True, so no teacher run is needed), e.g. `:cd,smoke`.
"""

import ml_collections

from jaxgen.config import base_config, parse_variant, smoke_train
from jaxgen.data import default_data_config

STEPS = {"cd": 1000, "ct": 1500, "ict": 1500}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"method": ("cd", "ct", "ict")}, {"method": "ct"})
    m = v["method"]
    c = base_config()
    c.task = "consistency"
    c.data = default_data_config("digits")
    c.model = ml_collections.ConfigDict(dict(
        name="unet", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1, num_groups=8))
    c.consistency = ml_collections.ConfigDict(dict(
        method=m, sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0, num_scales=18, solver="heun",
        distance="l2", target_ema=0.95, s0=0, s1=0, mu0=0.9, p_mean=-1.1, p_std=2.0))
    c.teacher = ml_collections.ConfigDict(dict(workdir="", untrained=False))
    c.train.num_steps = STEPS[m]
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.995
    c.eval = ml_collections.ConfigDict(dict(num_samples=297, batch_size=100, sample_steps=(1, 2, 4),
                                            metric="classifier", fid_stats="", inception_weights="",
                                            classifier_steps=500))
    if v["smoke"]:
        smoke_train(c)
        c.model.update(dict(ch=8, ch_mult=(1,), attn_resolutions=(), num_groups=4))  # compiles fast
        c.consistency.s0, c.consistency.s1 = 10, 20  # iCT's doubling curriculum within 4 steps
        c.teacher.untrained = m == "cd"
        c.eval.update(dict(num_samples=16, batch_size=2, sample_steps=(2,), classifier_steps=2))  # one sampler compiled
    return c
