"""Quantised autoencoder on the scikit-learn 8x8 digits: FSQ, VQ or EMA-VQ (CPU, a few minutes).

    python -m jaxgen.run --config configs/fsq_digits.py --workdir runs/fsq_digits              # FSQ
    python -m jaxgen.run --config configs/fsq_digits.py:vq --workdir runs/vq_digits            # VQ-VAE
    python -m jaxgen.run --config configs/fsq_digits.py:vq_ema --workdir runs/vq_ema_digits    # EMA VQ-VAE

Variants: an optional quantizer (`fsq` (default), `vq`, `vq_ema`) and an optional `smoke`, comma-separated:
`:smoke`, `:vq,smoke`, `:vq_ema,smoke` run a few steps end to end (used by the tests).

Model: conv encoder (32, 64 channels, one stride-2 downsampling) -> a 4x4 grid of codes -> decoder.
FSQ levels (8, 5, 5, 5): an implicit codebook of 1000 codes in 4 dimensions, no auxiliary loss.
VQ: 1000 learnt 8-dimensional codes, beta = 0.25, k-means++ initialisation from the initial encoder's
outputs on 256 training images, dead codes (EMA count below 0.05, about 1/20 of a uniformly used code's
count) restarted from the batch every 100 steps; 'vq_ema' learns the codebook by EMA (decay 0.99).

Hardware: any CPU. Measured on 2 cores (lightly loaded): about 75 CPU-seconds, 1-2 minutes of wall time
for 2000 steps of batch 64, for each variant. Evaluation on the 297 held-out digits: `eval/recon_mse`
(pixels in [-1, 1]), `eval/usage` (fraction of the codebook used on the held-out split, which holds
297 * 16 = 4752 code positions, 4.75 per code), `eval/perplexity`, and on the training split
`eval/usage_train`; figures/reconstructions.png and figures/code_usage.png. Measured (seed 0):

    variant   recon_mse   usage (held-out)   perplexity   usage (train)
    fsq       0.0076      88.5 %             522          99.3 %
    vq        0.0074      91.2 %             688          100 %
    vq_ema    0.0066      92.7 %             687          100 %

Reconstructions are near copies of the digits. With init + restarts all three use their codebooks well at
this size; without them plain VQ collapses as the codebook grows (experiments/results/fsq_vs_vq.md).
"""

import ml_collections

from jaxgen.config import smoke_train
from jaxgen.task_configs import autoencoder_config, quantizer_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    quantizer, smoke = quantizer_variant(arg)
    c = autoencoder_config("digits", quantizer)
    c.model.channels = (32, 64)
    c.quantizer.levels = (8, 5, 5, 5)
    c.quantizer.num_codes = 1000
    c.quantizer.latent_dim = 8
    c.quantizer.init = "kmeans++"
    c.quantizer.restart_every = 100
    c.quantizer.dead_threshold = 0.05
    c.train.num_steps = 2000
    c.train.batch_size = 64
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.optimizer.grad_clip = 1.0
    c.eval.usage_on_train = True
    if smoke:
        smoke_train(c)
        c.model.channels = (8, 16)
        c.quantizer.levels = (5, 3, 3)
        c.quantizer.num_codes = 32
        c.quantizer.latent_dim = 4
        c.quantizer.init_examples = 16
        c.quantizer.restart_every = 2
        c.eval.num_images = 8
    return c
