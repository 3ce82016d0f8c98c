"""Permuted sequential MNIST (psMNIST): sMNIST with one fixed random permutation of the 784 positions.

    python -m jaxgen.run --config configs/s4_psmnist.py --workdir gs://BUCKET/runs/s4_psmnist
    python -m jaxgen.run --config configs/s4_psmnist.py:lru --workdir gs://BUCKET/runs/lru_psmnist

The permutation is `np.random.default_rng(sequence.permutation_seed).permutation(784)` (seed 0), applied
to the row-major pixel sequence of every image, train and test alike; it destroys the locality that
makes sMNIST easy, so the model must integrate information over the whole 784 steps.

Data, model, optimiser and schedule: as configs/s4_smnist.py (tfds 'mnist', 4 blocks of d_model 256,
N = 64, dropout 0.1, AdamW 1e-2 / 1e-3 for A, B, step, 100 epochs of batch 64). Task `seq_classify`.

Hardware: one TPU v4-8 / v5e-8 host or one GPU; a few hours. Not run on the CPU machine this repo is
tested on. Published result to compare against (Gu et al. 2022, S4): 98.70 % test accuracy on psMNIST
(`eval/test_accuracy`); the block here is the S4 family's standard one, not the paper's exact recipe,
so expect the same range (~98 %), not the last digit.

Variants, comma-separated in any order: one SSM (`s4d` default, `s4`, `lru`) and `smoke` (tests: a
few steps on tfds mock data), e.g. `:lru,smoke`.

Target slice: v5e-8 (8 chips, one host). Check that it compiles and fits without a TPU:
    python -m jaxgen.aot --config configs/s4_psmnist.py --topology v5e-8
Measured that way (experiments/results/aot_tpu.json): as s4_smnist (the permutation is one gather): 0.47 GiB
per chip for the train step, 2.0 GiB for the evaluation forward of batch 1000 split over the chips.
"""

import importlib.util
import os

import ml_collections


def _smnist():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "s4_smnist.py")
    spec = importlib.util.spec_from_file_location("_jaxgen_config_s4_smnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return _smnist().sequential_image_config("mnist", arg, permute=True)
