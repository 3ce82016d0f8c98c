"""Sequential MNIST (sMNIST): 28x28 digits read pixel by pixel, 784 steps x 1 channel, classified by an SSM.

    python -m jaxgen.run --config configs/s4_smnist.py --workdir gs://BUCKET/runs/s4_smnist
    python -m jaxgen.run --config configs/s4_smnist.py:lru --workdir gs://BUCKET/runs/lru_smnist

Data: tfds 'mnist' (prepare once with `tfds build mnist`, or set data.data_dir to a prepared copy),
pixels scaled to [-1, 1], read row-major; no augmentation. Task `seq_classify`.

Model: 4 pre-norm residual SSM blocks, d_model 256, N = 64 (32 complex modes), GELU + GLU, dropout 0.1,
mean pooling. AdamW lr 1e-2 (cosine, 1 epoch of warmup), weight decay 0.01, A, B, step at 1e-3 (0.1x)
without weight decay; 100 epochs of batch 64 (93.8k steps).

Hardware: one TPU v4-8 / v5e-8 host or one GPU (data parallel over the local devices, `mesh.data = -1`);
a few hours. Not run on the CPU machine this repo is tested on. Published result to compare against
(Gu et al. 2022, S4): 99.63 % test accuracy on sMNIST (`eval/test_accuracy`); the network here is the
S4 family's standard block, not a replica of the paper's exact training recipe, so expect the same
range (>= 99 %), not the last digit.

Variants, comma-separated in any order: one SSM (`s4d` default, `s4`, `lru`) and `smoke` (a few steps
of a tiny network on 64 examples; the tests run it on tfds mock data), e.g. `:s4,smoke`.

Target slice: v5e-8 (8 chips, one host). Check that it compiles and fits without a TPU:
    python -m jaxgen.aot --config configs/s4_smnist.py --topology v5e-8
Measured that way (experiments/results/aot_tpu.json): per chip the train step needs 0.47 of 16 GiB of HBM,
54 GFLOP and 10.5 GiB accessed, a roofline bound of at most 73 steps/s (memory bound; a bound, not a
measurement); the evaluation forward (eval.batch_size 1000, split over the chips) needs 2.0 GiB.
"""

import ml_collections

from jaxgen.config import smoke_train
from jaxgen.task_configs import seq_classify_config, ssm_variant


def sequential_image_config(dataset: str, arg: str | None, *, permute: bool = False) -> ml_collections.ConfigDict:
    """The sMNIST recipe, shared with configs/s4_psmnist.py (which sets permute=True)."""
    v = ssm_variant(arg)
    c = seq_classify_config(dataset, v["ssm"])
    c.sequence.permute = permute
    c.sequence.permutation_seed = 0
    c.model.d_model = 256
    c.model.n_layers = 4
    c.model.N = 64
    c.model.dropout = 0.1
    c.model.pooling = "mean"
    steps_per_epoch = 60000 // 64
    c.train.num_steps = 100 * steps_per_epoch
    c.train.batch_size = 64
    c.train.log_every = 200
    c.train.checkpoint_every = 5000
    c.train.eval_every = 10 * steps_per_epoch
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-2
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = steps_per_epoch
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip = 1.0
    c.eval.batch_size = 1000
    if v["smoke"]:
        smoke_train(c)
        c.optimizer.warmup_steps = 2
        c.data.max_examples = 64
        c.data.mock = True  # tfds mock data: runs before the data set is prepared
        c.model.d_model = 8
        c.model.n_layers = 1
        c.model.N = 4
        c.eval.batch_size = 32
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sequential_image_config("mnist", arg)
