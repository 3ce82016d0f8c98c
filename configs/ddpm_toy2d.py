"""DDPM on a 2-D toy distribution with an MLP denoiser (CPU, about a minute).

    python -m jaxgen.run --config configs/ddpm_toy2d.py --workdir runs/ddpm_toy2d
    python -m jaxgen.run --config configs/ddpm_toy2d.py --workdir runs/moons --config.data.name=two_moons

Data: `gmm_grid` (a 5x5 grid of Gaussians; also two_moons, checkerboard, swiss_roll). Scored by
sliced Wasserstein-2 (`eval/sw2`) and MMD (`eval/mmd`) between 2000 samples and the test split;
expect sw2 well below the untrained network's `eval/sw2_untrained`, and all 25 modes in
figures/samples_<tag>.png. Measured on 2 cores: 5000 steps in about 1 min, sw2 0.060 with DDPM(beta_tilde)
on all 1000 steps (untrained: 203).

Sampling families (variants; `--config configs/ddpm_toy2d.py:VARIANT` on the finished workdir only samples
and evaluates). Measured sw2 on the gmm_grid model above (one seed, one draw):
    ddim            50 steps, eta 0                 0.064
    analytic        Analytic-DDPM, 25 steps         0.074   (DDPM(beta_tilde) at 25 steps: 0.096)
    analytic_ddim   Analytic-DDIM, 25 steps         0.064
    npr / sn        NPR- / SN-DDPM, 25 steps        0.068 / 0.068 (MLP heads, 1000 steps each)
    pc              100 levels + Langevin (200 NFE) 0.061
    euler / heun    50 / 35 NFE                     0.065 / 0.079
    dpm2            DPM-Solver-2, 10 NFE            0.305
    amed            AMED, 5 NFE                     0.078
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
    c.data = default_data_config("gmm_grid")
    c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=256, depth=3, t_embed=64))
    c.diffusion = diffusion_config(process="ddpm", schedule="linear", num_steps=1000)
    c.train.num_steps = 5000
    c.train.batch_size = 256
    c.train.log_every = 250
    c.train.checkpoint_every = 2500
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.ema_decay = 0.995
    c.eval = eval_config(batch_size=500, num_samples=2000, variance="beta_tilde", clip_x0=None, untrained_baseline=True)
    if smoke:
        smoke_train(c, batch_size=32)
        c.diffusion.num_steps = 20
        c.eval.num_samples = 64
        c.eval.batch_size = 8
        c.model.hidden = 32
    return c
