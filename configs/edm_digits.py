"""EDM (Karras et al. 2022) on the scikit-learn 8x8 digits with the quickstart's UNet (CPU, a few minutes).

    python -m jaxgen.run --config configs/edm_digits.py --workdir runs/edm_digits

The quickstart (configs/quickstart.py) trained with EDM's recipe instead of DDPM's: process 'edm' (x_t = x0 +
sigma eps, sigma = 80 t), the preconditioned network D = c_skip x + c_out F(c_in x, log(sigma) / 4) (prediction
'edm', sigma_data 0.5), training noise levels log sigma ~ N(-1.2, 1.2^2) (time_sampling 'lognormal') and EDM's
loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (weighting 'edm'); t_min = 2.5e-5,
i.e. sigma down to EDM's 0.002. Same UNet, optimiser, 2000 steps of batch 64 and EMA. 297 samples with EDM's
Heun sampler at 35 network evaluations (18 noise levels, rho = 7), scored by the Fréchet distance in a small
digits classifier's features (`eval/fd`; `eval/fd_untrained` for the untrained network).
Measured (experiments/one_step.py --settings digits, which trains it as the one-step students' teacher): fd 4.32
with Heun at 35 NFE (Euler at 1 / 2 / 4 steps: 98.1 / 31.9 / 17.7), 7 min 20 s on 2 shared cores with the
evaluation; compare with the quickstart's 4.49 (DDPM, 250 ancestral steps) and its Heun variant's 3.77 at 35 NFE.
Variants: the sampling families of the PF-ODE (`:euler`, `:heun`, `:dpm2`, `:amed`; see configs/quickstart.py)
and `:smoke` (a few steps end to end, used by the tests); combine as `:amed,smoke`.
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
    c.diffusion = diffusion_config(process="edm", prediction="edm", weighting="edm", time_sampling="lognormal",
                                   sigma_data=0.5, t_min=2.5e-5)
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
    c.eval = eval_config(batch_size=100, num_samples=297, sampler="heun", sample_steps=35, clip_x0=1.0,
                         untrained_baseline=True)
    if smoke:
        c.eval.untrained_baseline = False  # exercised by quickstart / ddpm_toy2d's smoke variants
        smoke_train(c)
        c.eval.sample_steps = 4
        c.eval.classifier_steps = 2  # the quickstart / rf_digits smokes' classifier: one cache entry
        c.eval.num_samples = 16
        c.eval.batch_size = 2  # x 8 devices in the tests
        c.model.update(dict(ch=8, ch_mult=(1,), attn_resolutions=(), num_groups=4))  # compiles fast
    return c
