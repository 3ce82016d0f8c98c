"""DDPM on the scikit-learn 8x8 digits: the quickstart, a few minutes on a 2-core CPU.

    python -m jaxgen.run --config configs/quickstart.py --workdir runs/quickstart

Hardware: any CPU (2 cores: 3 min 7 s measured; fd 4.49 vs 55.7 untrained; 5.52 / 56.0 with the earlier
per-batch sample draw, same training). Trains a small UNet (eps-prediction,
L_simple, linear beta schedule, T = 1000) on 1500 training digits, then draws 297 samples (the test split's size)
by ancestral sampling on 250 of the 1000 steps (uniform respacing) with the EMA weights and scores them by the
Fréchet distance in the features of a small digits classifier (`eval/fd`; the untrained network's score is
`eval/fd_untrained` for reference). Expect recognisable digits in figures/samples_ddpm-K250-beta.png and fd far
below fd_untrained (see README).

Sampling families (variants; `--config configs/quickstart.py:VARIANT` on the finished workdir only samples and
evaluates, 30-60 s each, plus the fitting of learned parts). Measured fd on the model above (one draw of 297 samples, so
small differences may be sampling noise):
    ddim            50 steps, eta 0                       4.02
    analytic        Analytic-DDPM, 25 steps               6.10   (DDPM(beta_tilde) at 25 steps: 5.79)
    analytic_ddim   Analytic-DDIM, 25 steps, eta 0        4.88
    npr / sn        NPR- / SN-DDPM, 25 steps              6.31 / 6.51 (UNet heads, 1000 steps each, ~4 min)
    pc              100 levels + Langevin (200 NFE)       2.91
    euler / heun    50 / 35 NFE                           4.02 / 3.77
    dpm2            DPM-Solver-2, 10 NFE                  3.87
    amed            AMED, 5 NFE                           6.88
experiments/sampler_nfe.py and analytic_dpm.py compare the families at equal NFE on this model.
Variant `:smoke` runs a few steps end to end (used by the tests); combine as `:amed,smoke`.
"""

import ml_collections

from jaxgen.config import base_config, smoke_train
from jaxgen.data import default_data_config
from jaxgen.task_configs import config_with_variant, diffusion_config, eval_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_with_variant(_config, arg)


def _config(smoke: bool) -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "diffusion"
    c.data = default_data_config("digits")
    c.model = ml_collections.ConfigDict(dict(
        name="unet", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1, num_groups=8))
    c.diffusion = diffusion_config(process="ddpm", schedule="linear", num_steps=1000)
    c.train.num_steps = 2000
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.995
    c.eval = eval_config(batch_size=100, num_samples=297, sample_steps=250, variance="beta", clip_x0=1.0, pixel_width=2 / 16,
                         untrained_baseline=True)
    if smoke:
        smoke_train(c)
        c.diffusion.num_steps = 20
        c.eval.sample_steps = 0
        c.eval.classifier_steps = 2  # the digits smokes share one (cached) classifier
        c.eval.num_samples = 16
        c.eval.batch_size = 2  # x 8 devices in the tests
        c.model.ch = 8
        c.model.num_groups = 4
    return c
