"""Sequential CIFAR-10 (sCIFAR): 32x32 colour images read pixel by pixel, 1024 steps x 3 channels.

    python -m jaxgen.run --config configs/s4_scifar.py --workdir gs://BUCKET/runs/s4_scifar
    python -m jaxgen.run --config configs/s4_scifar.py:lru --workdir gs://BUCKET/runs/lru_scifar

Data: tfds 'cifar10' (prepare once with `tfds build cifar10`, or set data.data_dir), pixels in [-1, 1],
read row-major with the 3 channels of a pixel as one input vector; no augmentation (no flips: a flipped
row is another sequence). Task `seq_classify`.

Model (the state-spaces sCIFAR size): 6 pre-norm residual SSM blocks, d_model 512, N = 64, GELU + GLU,
dropout 0.1, mean pooling. AdamW lr 1e-2 (cosine, 1 epoch of warmup), weight decay 0.05, A, B, step
at 1e-3 (0.1x) without weight decay; 200 epochs of batch 64 (156k steps). Variant `lru`: the LRU
with its long-sequence ring init r in [0.9, 0.999], phase in [0, 2 pi] (Orvieto et al. 2023), A, B, step
-> nu, theta, gamma, B at 0.1x.

Hardware: a TPU v4-8 / v5e-8 host or one or more GPUs (data parallel over the local devices, `mesh.data
= -1`); the better part of a day on one host. Not run on the CPU machine this repo is tested on.
Published results to compare against: S4 91.13 % (Gu et al. 2022) and LRU 89.0 % (Orvieto et al. 2023)
test accuracy (`eval/test_accuracy`). The block here is the S4 family's standard one, not either
paper's exact recipe (S4 used a larger, post-norm network; the LRU batch norm), so expect the high 80s
rather than the last digit.

Variants, comma-separated in any order: one SSM (`s4d` default, `s4`, `lru`) and `smoke` (tests: a few
steps of a tiny network on tfds mock data), e.g. `:lru,smoke`.

Target slice: v5e-8 (8 chips, one host). Check that it compiles and fits without a TPU:
    python -m jaxgen.aot --config configs/s4_scifar.py --topology v5e-8
Measured that way (experiments/results/aot_tpu.json): per chip the train step needs 1.49 of 16 GiB of HBM,
345 GFLOP and 43.4 GiB accessed, at most 17.6 steps/s (memory bound; a bound, not a measurement); the evaluation
forward of eval.batch_size 1000 split over the chips 3.55 GiB (27.4 GiB, more than a v5e chip has, when every chip
ran the whole batch).
"""

import ml_collections

from jaxgen.config import smoke_train
from jaxgen.task_configs import seq_classify_config, ssm_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = ssm_variant(arg)
    c = seq_classify_config("cifar10", v["ssm"])
    c.data.random_flip = False
    c.model.d_model = 512
    c.model.n_layers = 6
    c.model.N = 64
    c.model.dropout = 0.1
    c.model.pooling = "mean"
    if v["ssm"] == "lru":
        c.model.ssm_kwargs.r_min = 0.9
        c.model.ssm_kwargs.r_max = 0.999
        c.model.ssm_kwargs.max_phase = 6.283185307179586
    steps_per_epoch = 50000 // 64
    c.train.num_steps = 200 * steps_per_epoch
    c.train.batch_size = 64
    c.train.log_every = 200
    c.train.checkpoint_every = 5000
    c.train.eval_every = 10 * steps_per_epoch
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-2
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = steps_per_epoch
    c.optimizer.weight_decay = 0.05
    c.optimizer.grad_clip = 1.0
    c.eval.batch_size = 1000
    if v["smoke"]:
        smoke_train(c)
        c.optimizer.warmup_steps = 2
        c.data.max_examples = 64
        c.data.mock = True  # tfds mock data: runs before CIFAR-10 is prepared
        c.model.d_model = 8
        c.model.n_layers = 1
        c.model.N = 4
        c.eval.batch_size = 32
    return c
