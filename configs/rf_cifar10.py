"""Rectified flow (1-RF) on CIFAR-10, for a Cloud TPU slice or a GPU host (Liu et al. 2023).

Launch on a Cloud TPU VM (v4-8 or v5e-8; one host, 8 chips), with the data prepared in a bucket
(preparing needs TensorFlow once: see README):

    pip install -e '.[tpu]'
    python -m jaxgen.run --config configs/rf_cifar10.py --workdir gs://BUCKET/runs/rf_cifar10 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets --config.eval.fid_stats=gs://BUCKET/cifar10_train_stats.npz

(the statistics file: `python -m jaxgen.metrics.fid_stats --data cifar10 --split train --out ...`, as in
configs/ddpm_cifar10.py). Process 'rf' (x_t = (1 - t) x0 + t eps), prediction 'velocity' (the network regresses
eps - x0 with plain MSE), t ~ U(t_min, 1); sampled by adaptive Dormand-Prince RK45 on dx/dt = v(x, t) from t = 1
to 0 (`eval.sampler='rk45'`, rtol = atol = 1e-5), 50,000 samples scored by Inception FID / IS (`eval/fid`,
`eval/is`). Recipe: the UNet, optimiser, batch, EMA and 800k steps of configs/ddpm_cifar10.py (Ho et al.'s
35.7M-parameter UNet); Liu et al. train score_sde's DDPM++ network instead, so expect the same direction, not
their exact number. Not run here.

Published (Liu et al. 2023, Table 1, CIFAR-10): 1-RF with the adaptive RK45 sampler FID 2.58;
2-RF + distillation at one step FID 4.85. Reflow and distillation are not yet available from the CLI: this config
trains the 1-RF only; `experiments/reflow.py` runs the library pipeline (jaxgen.diffusion.rectified_flow: pairs
from the 1-RF's ODE, the 2-RF trained on them, one-step distillation) on the Gaussian-mixture oracles.
Variant `:smoke` runs a 2-step miniature on tfds mock data (`data.mock=True`: no data needed; used by the tests).

Target slice: v5e-8 (8 chips, one host). Check that it compiles and fits without a TPU:
    python -m jaxgen.aot --config configs/rf_cifar10.py --topology v5e-8
Measured that way (experiments/results/aot_tpu.json), per chip: the train step 1.17 of 16 GiB, 569 GFLOP, 11.3 GiB
accessed, at most 68 steps/s (memory bound; a bound, not a measurement: ddpm_cifar10's step with another target);
one stage of the RK45 evaluation sampler at 256 samples per chip 2.18 GiB, 2990 GFLOP, 25.7 GiB, <= 30 stages/s;
the FID Inception-v3 extraction of 256 images per chip 4.09 GiB.

Reflow and distillation (Liu et al. 2023), each a run of its own on the previous workdir (the teacher):
    python -m jaxgen.run --config configs/rf_cifar10.py:reflow --workdir runs/rf_cifar10_2rf --config.reflow.teacher=runs/rf_cifar10
    python -m jaxgen.run --config configs/rf_cifar10.py:distill --workdir runs/rf_cifar10_distill \
        --config.reflow.teacher=runs/rf_cifar10_2rf
The teacher's (sample, noise) pairs (RK45 on its ODE, reflow.num_pairs = the training split's size by default) are
written to WORKDIR/pairs/ first; the student starts from the teacher's weights. `eval/straightness` is logged.
"""

import ml_collections

from jaxgen.config import base_config
from jaxgen.data import default_data_config
from jaxgen.task_configs import diffusion_config, eval_config, flow_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return flow_config(_config, arg)


def _config(smoke: bool) -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "diffusion"
    c.data = default_data_config("cifar10")
    c.data.random_flip = True
    c.model = ml_collections.ConfigDict(dict(
        name="unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
        num_groups=32))
    c.diffusion = diffusion_config(process="rf", prediction="velocity", weighting="uniform", time_sampling="uniform",
                                   t_min=1e-3)
    c.train.num_steps = 800_000
    c.train.batch_size = 128
    c.train.log_every = 1000
    c.train.checkpoint_every = 10_000
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 5000
    c.optimizer.grad_clip = 1.0
    c.ema_decay = 0.9999
    c.eval = eval_config(batch_size=256, num_samples=50_000, metric="inception", sampler="rk45", clip_x0=None)
    if smoke:
        c.eval.straightness_steps = 2
        c.data.mock = True  # tfds mock data: runs before CIFAR-10 is prepared
        c.train.num_steps = 2
        c.train.batch_size = 8
        c.train.log_every = 1
        c.train.checkpoint_every = 2
        c.model.update(dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_groups=4))  # compiles fast
        c.eval.sampler = "flow_euler"
        c.eval.sample_steps = 2
        c.eval.classifier_steps = 2  # the cifar10 smokes share one (cached) classifier
        c.eval.num_samples = 8
        c.eval.metric = "classifier"  # the Inception network is tested on its own (tests/test_inception.py)
        c.eval.batch_size = 1
    return c
