"""SiD (Score identity Distillation, Zhou et al. 2024) on the 2-D gmm_grid toy: a one-step generator (CPU, minutes).

    # from the exact mixture denoiser of gmm_grid (teacher.workdir='', the default: nothing to train first)
    python -m jaxgen.run --config configs/sid_toy2d.py --workdir runs/sid_toy2d
    # from a trained diffusion workdir (the generator and fake score become copies of its MLP):
    python -m jaxgen.run --config configs/ddpm_toy2d.py --workdir runs/ddpm_toy2d
    python -m jaxgen.run --config configs/sid_toy2d.py --workdir runs/sid_ddpm_toy2d \
        --config.teacher.workdir=runs/ddpm_toy2d

Three networks: the frozen teacher, the fake score (DSM on the generator's samples) and the generator
G(z) = f(2.5 z, 2.5), alternating one update each per step (alpha = 1.2, sigma in the losses from EDM's grid with
t_max = 0.8, sigma_data = 1: the toy is normalised to unit variance); non-finite updates are skipped and counted
(gen_skipped / fake_skipped). With the oracle teacher the generator and fake score are ddpm_toy2d's MLP with EDM
preconditioning, freshly initialised. 3000 steps of batch 256, Adam 1e-4 with b1 = 0 (SiD's), generator EMA 0.999.
Evaluation: 2000 one-step samples, eval/sw2_1step and eval/mmd_1step against the test split (ddpm_toy2d's 1000-step
DDPM: sw2 0.060). Train time estimated (not measured): 2-4 min on 2 cores.
Variant `:smoke`: 4 steps end to end (used by the tests; the oracle teacher).
"""

import ml_collections

from jaxgen.config import base_config, parse_variant, smoke_train
from jaxgen.data import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {}, {})
    c = base_config()
    c.task = "sid"
    c.data = default_data_config("gmm_grid")
    c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=256, depth=3, t_embed=64))
    c.teacher = ml_collections.ConfigDict(dict(workdir=""))
    c.sid = ml_collections.ConfigDict(dict(alpha=1.2, sigma_init=2.5, t_max=0.8, sigma_data=1.0))
    c.train.num_steps = 3000
    c.train.batch_size = 256
    c.train.log_every = 250
    c.train.checkpoint_every = 1500
    c.optimizer.learning_rate = 1e-4
    c.optimizer.b1 = 0.0
    c.optimizer.grad_clip = None
    c.ema_decay = 0.999
    c.eval = ml_collections.ConfigDict(dict(num_samples=2000, batch_size=250, sample_steps=(1,),
                                            metric="classifier", fid_stats="", inception_weights="",
                                            classifier_steps=500))
    if v["smoke"]:
        smoke_train(c, batch_size=32)
        c.model.hidden = 32
        c.eval.num_samples = 64
        c.eval.batch_size = 8
    return c
