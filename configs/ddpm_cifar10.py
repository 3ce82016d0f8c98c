"""DDPM on CIFAR-10 with the paper's recipe (Ho et al. 2020), for a Cloud TPU slice or a GPU host.

Launch on a Cloud TPU VM (v4-8 or v5e-8; one host, 8 chips), with the data prepared in a bucket
(preparing needs TensorFlow once: see README):

    pip install -e '.[tpu]'
    python -m jaxgen.run --config configs/ddpm_cifar10.py --workdir gs://BUCKET/runs/ddpm_cifar10 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

On a multi-host slice run the same command on every host (`gcloud compute tpus tpu-vm ssh NAME
--worker=all --command=...`); jax.distributed initialises itself and each host reads its shard.
Recipe: UNet ch 128, mult (1,2,2,2), 2 res blocks, attention at 16x16, dropout 0.1 (35.7M params);
Adam 2e-4, batch 128, warmup 5000, grad clip 1, EMA 0.9999, random flip; T = 1000 linear betas;
800k steps: the paper reports 21 steps/s on a TPU v3-8 (10.6 h to completion); expect about that on a v4-8.
Expected: FID 3.17, IS 9.46 (paper; 3.24 in score_sde's JAX port) with 50k samples and Inception
features, which is what the evaluation computes (`eval/fid`, `eval/is`: eval.metric='inception', 50,000 samples
in batches of 256 per chip). Write the reference statistics of the training set once and pass them:
    python -m jaxgen.metrics.fid_stats --data cifar10 --split train --out gs://BUCKET/cifar10_train_stats.npz
    ... --config.eval.fid_stats=gs://BUCKET/cifar10_train_stats.npz
(without eval.fid_stats the test split's statistics are computed at the first evaluation: not the papers' FID).
The Inception weights are downloaded once (pytorch-fid's published file); on an offline host put them at the path
the error message names, or pass --config.eval.inception_weights=PATH.

Sampling families (variants; re-run the finished workdir with `--config configs/ddpm_cifar10.py:VARIANT` to
only sample and evaluate). Published CIFAR-10 FIDs for this model family (from the papers cited; some recalled):
    ddpm            1000 steps, beta                    3.17 (Ho et al.)
    ddim            50 steps, eta 0                     4.67 (Song et al.; 13.36 / 6.84 / 4.16 at 10 / 20 / 100)
    analytic        Analytic-DDPM, 25 steps             11.60 vs 21.83 for DDPM(beta_tilde) (Bao et al.; K = 10: 34.26)
    analytic_ddim   Analytic-DDIM, 25 steps, eta 0      5.81 vs 10.70 for DDIM (K = 10: 14.00 vs 21.31)
    npr, sn         NPR-/SN-DDPM heads, 25 steps        below Analytic-DDPM (Bao et al. 2022b; no number recorded)
    amed            AMED, 5 NFE                         6.61 (Zhou et al., on EDM's model, not this one)
    pc, euler, heun, dpm2                               no published number for this model recorded
Variant `:smoke` runs a 2-step miniature on tfds mock data (`data.mock=True`: no data needed; used by the tests).

Target slice: v5e-8 (8 chips, one host). Check that it compiles and fits without a TPU:
    python -m jaxgen.aot --config configs/ddpm_cifar10.py --topology v5e-8
Measured that way (experiments/results/aot_tpu.json): per chip the train step (batch 16 per chip) needs 1.17 of
16 GiB of HBM, 569 GFLOP and 11.3 GiB accessed, a roofline bound of at most 68 steps/s (memory bound; a bound,
not a measurement). The evaluation sampler draws one batch of eval.batch_size = 256 samples per chip at a time
(its memory does not depend on eval.num_samples): 2.12 GiB per chip, 2988 GFLOP and 25.2 GiB accessed per sampler
step, at most 30 steps/s (memory bound), so 50,000 samples x 1000 steps take at least ~14 min on v5e-8.
Scoring them (eval.metric='inception'): the FID Inception-v3 on 256 images per chip takes 4.09 GiB, 2826 GFLOP
and 32.4 GiB accessed per batch, at most 23.6 batches/s (memory bound): about 1 s for the 50,000 samples.
The sampling variants' steps at 256 samples per chip: 2.12 GiB (:ddim, :analytic, :analytic_ddim) to 2.56 GiB (:amed),
at most 30 (one network evaluation per loop step) to 7.7 (:dpm2) loop steps/s; experiments/results/aot_tpu.json.
--config.mesh.shard_update=True splits the optimizer state and EMA over the 8 chips (weight-update sharding): the
TPU compiler's estimate of the train step goes 10.91 -> 9.98 ms per chip, not counting the parameters' all-gather
over the interconnect it adds (experiments/aot_breakdown.py; README).
"""

import ml_collections

from jaxgen.config import base_config
from jaxgen.data import default_data_config
from jaxgen.task_configs import config_with_variant, diffusion_config, eval_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_with_variant(_config, arg)


def _config(smoke: bool) -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "diffusion"
    c.data = default_data_config("cifar10")
    c.data.random_flip = True
    c.model = ml_collections.ConfigDict(dict(
        name="unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
        num_groups=32))
    c.diffusion = diffusion_config(process="ddpm", schedule="linear", num_steps=1000)
    c.train.num_steps = 800_000
    c.train.batch_size = 128
    c.train.log_every = 1000
    c.train.checkpoint_every = 10_000
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 5000
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.9999
    c.eval = eval_config(batch_size=256, num_samples=50_000, metric="inception", variance="beta", clip_x0=1.0,
                         pixel_width=2 / 255)
    if smoke:
        c.data.mock = True  # tfds mock data: runs before CIFAR-10 is prepared
        c.train.num_steps = 2
        c.train.batch_size = 8
        c.train.log_every = 1
        c.train.checkpoint_every = 2
        c.diffusion.num_steps = 10
        c.model.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4))  # compiles fast
        c.eval.classifier_steps = 2  # the cifar10 smokes share one (cached) classifier
        c.eval.num_samples = 8
        c.eval.metric = "classifier"  # the Inception network is tested on its own (tests/test_inception.py)
        c.eval.batch_size = 1
    return c
