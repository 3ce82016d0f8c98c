"""Quantised autoencoder on MNIST (tfds): FSQ, VQ or EMA-VQ; one TPU host or GPU, minutes.

    python -m jaxgen.run --config configs/fsq_mnist.py --workdir gs://BUCKET/runs/fsq_mnist
    python -m jaxgen.run --config configs/fsq_mnist.py:vq_ema --workdir gs://BUCKET/runs/vq_ema_mnist

Data: tfds 'mnist' (prepare once with `tfds build mnist`, or point data.data_dir at a prepared copy);
28x28 images scaled to [-1, 1]. Variants as in configs/fsq_digits.py: an optional quantizer (`fsq`
(default), `vq`, `vq_ema`) and an optional `smoke`, comma-separated (`:vq,smoke` runs a few steps on
a tiny network; the tests run it on tfds mock data).

Model: encoder (32, 64, 128 channels, two stride-2 downsamplings) -> a 7x7 grid of codes -> decoder.
FSQ levels (8, 5, 5, 5) (1000 codes, the paper's 2^10 set); VQ: 1024 codes of dimension 8, k-means++ init,
dead codes restarted every 200 steps. 20k steps of batch 256 with AdamW (lr 1e-3, cosine).

Hardware: a TPU v4-8 / v5e-8 host or one GPU (data parallel over all local devices, `mesh.data = -1`);
about 10-15 minutes. Not run on the CPU machine this repo is tested on, so the following is what the
method predicts rather than a measured number: held-out `eval/usage` close to 100 % for FSQ (the 10k test
images give 490k code positions, ~490 per code), lower for plain VQ without restarts; `eval/recon_mse`
(pixels in [-1, 1]) of order 1e-2 with sharp digits in figures/reconstructions.png.

Target slice: v5e-8 (8 chips, one host). Check that it compiles and fits without a TPU:
    python -m jaxgen.aot --config configs/fsq_mnist.py --topology v5e-8
"""

import ml_collections

from jaxgen.config import smoke_train
from jaxgen.task_configs import autoencoder_config, quantizer_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    quantizer, smoke = quantizer_variant(arg)
    c = autoencoder_config("mnist", quantizer)
    c.model.channels = (32, 64, 128)
    c.model.num_res_blocks = 1
    c.quantizer.levels = (8, 5, 5, 5)
    c.quantizer.num_codes = 1024
    c.quantizer.latent_dim = 8
    c.quantizer.init = "kmeans++"
    c.quantizer.init_examples = 512
    c.quantizer.restart_every = 200
    # uniform use gives each code an EMA count of 256 * 49 / 1024 ~ 12 per step: dead below ~1/20 of it
    c.quantizer.dead_threshold = 0.6
    c.train.num_steps = 20000
    c.train.batch_size = 256
    c.train.log_every = 200
    c.train.checkpoint_every = 5000
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 500
    c.optimizer.grad_clip = 1.0
    c.eval.batch_size = 1000
    c.eval.num_images = 64
    if smoke:
        smoke_train(c)
        c.data.max_examples = 64
        c.data.mock = True  # tfds mock data: runs before MNIST is prepared
        c.model.channels = (4, 8)  # two stages: one downsampling still runs, at a third less compile
        c.quantizer.levels = (5, 3, 3)
        c.quantizer.num_codes = 32
        c.quantizer.latent_dim = 4
        c.quantizer.init_examples = 16
        c.quantizer.restart_every = 2
        c.eval.batch_size = 32
        c.eval.num_images = 8
    return c
