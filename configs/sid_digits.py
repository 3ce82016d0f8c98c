"""SiD (Score identity Distillation, Zhou et al. 2024) on the scikit-learn 8x8 digits: a one-step generator
distilled from a trained diffusion workdir (CPU, minutes on 2 cores; the teacher is required).

    python -m jaxgen.run --config configs/edm_digits.py --workdir runs/edm_digits     # the teacher, a few minutes
    python -m jaxgen.run --config configs/sid_digits.py --workdir runs/sid_digits \
        --config.teacher.workdir=runs/edm_digits

Three networks of the teacher's architecture (edm_digits: the quickstart's UNet with EDM preconditioning), read
through the teacher's own process and prediction as EDM denoisers D(x, sigma): the frozen teacher f_phi, the fake
score f_psi and the generator x_g = G(z) = f_theta(sigma_init z, sigma_init), z ~ N(0, I), sigma_init = 2.5; the
fake score and the generator both start from the teacher's weights. Each step: one fake-score update by DSM on
generator samples (EDM weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2), then one generator update with
SiD's loss at x_t = x_g + sigma n, sigma from EDM's grid with t_max = 0.8 (sigma >= 0.085):
    L_G = (f_phi(x_t) - f_psi(x_t))^T [(f_phi(x_t) - x_g) - alpha (f_phi(x_t) - f_psi(x_t))] / w,
    w = sg(mean_j |x_g - f_phi(x_t)|_j),  alpha = 1.2; updates whose loss or gradients are
not finite are skipped and counted (gen_skipped / fake_skipped). Adam with b1 = 0 (SiD's), 5e-5 here (the paper's
1e-5 is for batch 256 over millions of images), batch 64, 600 steps (about 5 min on 2 cores: a step is about three
teacher-sized forward-backward passes), generator EMA 0.99. Evaluation: 297 one-step samples, eval/fd_1step
(the Fréchet distance in the digits classifier's features, as the diffusion digits configs report eval/fd).
Measured (experiments/one_step.py --settings digits): fd 3.71 at one step, better than its teacher's 4.32 with Heun at
35 NFE (edm_digits.py; 98.1 with one Euler step); 6.5 min on 2 shared cores, evaluation included.

Published (CIFAR-10, 50k samples), for context: FID 1.923 at one step, alpha = 1.2, from EDM's teacher (FID 1.97
at 35 NFE) (Zhou et al. 2024); see configs/sid_cifar10.py.
Without --config.teacher.workdir the run stops with exit 2 naming the key. Variant `:smoke`: 4 steps end to end with
a freshly initialised one-level UNet as teacher (teacher.untrained=True; used by the tests).
"""

import ml_collections

from jaxgen.config import base_config, parse_variant, smoke_train
from jaxgen.data import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {}, {})
    c = base_config()
    c.task = "sid"
    c.data = default_data_config("digits")
    c.model = ml_collections.ConfigDict(dict(  # used only by teacher.untrained (the teacher's network otherwise)
        name="unet", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, num_groups=8))
    c.teacher = ml_collections.ConfigDict(dict(workdir="", untrained=False))
    c.sid = ml_collections.ConfigDict(dict(alpha=1.2, sigma_init=2.5, t_max=0.8, sigma_data=0.5))
    c.train.num_steps = 600
    c.train.batch_size = 64
    c.train.log_every = 50
    c.train.checkpoint_every = 300
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 5e-5
    c.optimizer.b1 = 0.0
    c.optimizer.grad_clip = None
    c.ema_decay = 0.99
    c.eval = ml_collections.ConfigDict(dict(num_samples=297, batch_size=100, sample_steps=(1,),
                                            metric="classifier", fid_stats="", inception_weights="",
                                            classifier_steps=500))
    if v["smoke"]:
        smoke_train(c)
        c.model.update(dict(ch=8, ch_mult=(1,), attn_resolutions=(), num_groups=4))  # compiles fast
        c.teacher.untrained = True
        c.eval.update(dict(num_samples=16, batch_size=2, classifier_steps=2))
    return c
