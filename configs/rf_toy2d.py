"""Rectified flow on a 2-D toy distribution with an MLP velocity network (CPU, about a minute).

    python -m jaxgen.run --config configs/rf_toy2d.py --workdir runs/rf_toy2d

The same data, network and training budget as configs/ddpm_toy2d.py, trained as a rectified flow (Liu et al.
2023): process 'rf' (x_t = (1 - t) x0 + t eps), prediction 'velocity' (the network regresses eps - x0, plain
MSE), times t ~ U(t_min, 1). Sampled by integrating dx/dt = v(x, t) from t = 1 to 0 with adaptive Dormand-Prince
RK45 (`eval.sampler='rk45'`; `--config.eval.sampler=flow_euler --config.eval.sample_steps=K` for K Euler steps).
Scored by sliced Wasserstein-2 (`eval/sw2`) and MMD (`eval/mmd`) between 2000 samples and the test split.
Measured (this config, seed 0): sw2 0.078, mmd 0.020 with RK45; the untrained network scores sw2 0.195. configs/ddpm_toy2d.py's DDPM reaches sw2 0.060 (DDPM(beta_tilde)
on all 1000 steps) with the same network and budget. The whole command took 4 min 29 s of wall time on a 2-core
CPU shared with other jobs (load average 6-14; 105 s of CPU time), so expect about 1-2 min on an idle one.
Variant `:smoke` runs a few steps end to end (used by the tests).

Reflow and distillation (Liu et al. 2023), each a run of its own on the previous workdir (the teacher):
    python -m jaxgen.run --config configs/rf_toy2d.py:reflow --workdir runs/rf_toy2d_2rf --config.reflow.teacher=runs/rf_toy2d
    python -m jaxgen.run --config configs/rf_toy2d.py:distill --workdir runs/rf_toy2d_distill \
        --config.reflow.teacher=runs/rf_toy2d_2rf
The teacher's (sample, noise) pairs (RK45 on its ODE, reflow.num_pairs = the training split's size by default) are
written to WORKDIR/pairs/ first; the student starts from the teacher's weights. `eval/straightness` is logged.
"""

import ml_collections

from jaxgen.config import base_config, smoke_train
from jaxgen.data import default_data_config
from jaxgen.task_configs import diffusion_config, eval_config, flow_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return flow_config(_config, arg)


def _config(smoke: bool) -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "diffusion"
    c.data = default_data_config("gmm_grid")
    c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=256, depth=3, t_embed=64))
    c.diffusion = diffusion_config(process="rf", prediction="velocity", weighting="uniform", time_sampling="uniform",
                                   t_min=1e-3)
    c.train.num_steps = 5000
    c.train.batch_size = 256
    c.train.log_every = 250
    c.train.checkpoint_every = 2500
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 100
    c.ema_decay = 0.995
    c.eval = eval_config(batch_size=500, num_samples=2000, sampler="rk45", clip_x0=None, untrained_baseline=True)
    if smoke:
        c.eval.straightness_steps = 2
        c.eval.untrained_baseline = False  # exercised by quickstart / ddpm_toy2d's smoke variants
        smoke_train(c, batch_size=32)
        c.eval.num_samples = 64
        c.eval.batch_size = 8
        c.model.hidden = 32
    return c
