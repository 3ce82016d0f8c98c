"""SiD (Score identity Distillation, Zhou et al. 2024) on CIFAR-10: a one-step generator, for a Cloud TPU slice.

Target slice: v5e-8 (8 chips, one host; not run here). Compiled for it without a TPU (experiments/aot_tpu.py, with an
untrained teacher of the same shapes), per chip: the train step at global batch 256 needs 3.48 of 16 GiB, 4135 GFLOP
and 63.5 GiB accessed, at most 12 steps/s (memory bound; a bound, not a measurement); the one-step generator at
256 samples per chip 2.04 GiB; the FID Inception-v3 extraction 4.09 GiB. Needs a trained
diffusion teacher (configs/ddpm_cifar10.py; the paper distils EDM's VP model):

    python -m jaxgen.run --config configs/sid_cifar10.py --workdir gs://BUCKET/runs/sid_cifar10 \
        --config.teacher.workdir=gs://BUCKET/runs/ddpm_cifar10 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets \
        --config.eval.fid_stats=gs://BUCKET/cifar10_train_stats.npz

Published: FID 1.923 at one step, unconditional CIFAR-10, alpha = 1.2 (Zhou et al. 2024, EDM teacher, whose own
FID is 1.97 at 35 NFE). Three networks of the teacher's architecture: the frozen teacher, the fake score and the
generator G(z) = f(2.5 z, 2.5), both initialised from the teacher; alternating one update each per step, Adam
1e-5 with b1 = 0, batch 256, sigma_init 2.5, t_max 0.8; non-finite updates are skipped and counted. With a DDPM
teacher (not the paper's EDM) expect a worse FID. The training state holds the teacher's weights and two optimizer
states (3 networks + 2 x Adam moments). train.num_steps = 400k here is a budget choice, not the paper's schedule
(which is counted in millions of generator images; not checked here). Time not estimated.
Variant `:smoke`: a 2-step miniature on tfds mock data with a freshly initialised network as teacher
(teacher.untrained=True; used by the tests).
"""

import ml_collections

from jaxgen.config import base_config, parse_variant
from jaxgen.data import default_data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {}, {})
    c = base_config()
    c.task = "sid"
    c.data = default_data_config("cifar10")
    c.model = ml_collections.ConfigDict(dict(  # used only by teacher.untrained (the teacher's network otherwise)
        name="unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0,
        num_groups=32))
    c.teacher = ml_collections.ConfigDict(dict(workdir="", untrained=False))
    c.sid = ml_collections.ConfigDict(dict(alpha=1.2, sigma_init=2.5, t_max=0.8, sigma_data=0.5))
    c.train.num_steps = 400_000
    c.train.batch_size = 256
    c.train.log_every = 500
    c.train.checkpoint_every = 5000
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-5
    c.optimizer.b1 = 0.0
    c.optimizer.grad_clip = None
    c.ema_decay = 0.9999
    c.eval = ml_collections.ConfigDict(dict(num_samples=50_000, batch_size=256, sample_steps=(1,),
                                            metric="inception", fid_stats="", inception_weights="",
                                            classifier_steps=500))
    if v["smoke"]:
        c.data.mock = True
        c.train.update(dict(num_steps=2, batch_size=8, log_every=1, checkpoint_every=2))
        c.model.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4))  # compiles fast
        c.teacher.untrained = True
        c.eval.update(dict(classifier_steps=2, num_samples=8, metric="classifier", batch_size=1))
    return c
