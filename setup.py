from setuptools import find_packages, setup

# Pinned to the versions the test suite runs on (see README).
JAX = "0.10.2"
install_requires = [
    f"jax=={JAX}",
    f"jaxlib=={JAX}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "ml_collections==1.1.0",
    "tensorflow-datasets==4.9.10",
    "grain==0.2.18",
    "tensorboardX==2.6.5",
    "diffrax==0.7.2",
    "numpy>=2.0",
    "scipy>=1.13",
    "scikit-learn>=1.5",
    "matplotlib>=3.9",
    "tqdm>=4.66",
    "absl-py>=2.1",
    # gs:// workdirs, data dirs and experiment outputs (etils.epath -> gcsfs; tensorboardX -> google-cloud-storage)
    "etils[epath]>=1.7",
    "gcsfs>=2024.6",
    "google-cloud-storage>=2.16",
]

# The test extra installs what the suite checks against: a real GCS API on localhost, deviceless TPU
# compilation through libtpu, and the reference FID implementation (torch on CPU).
test_requires = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "gcp-storage-emulator>=2024.8",
    f"jax[tpu]=={JAX}",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "pytorch-fid==0.3.0",
]

setup(
    name="jaxgen",
    version="0.1.0",
    description="Diffusion, state space models, FSQ/VQ and Lion in JAX, every formula checked numerically",
    packages=find_packages(include=["jaxgen", "jaxgen.*"]),
    python_requires=">=3.11",
    install_requires=install_requires,
    extras_require={
        "test": test_requires,
        "tpu": [f"jax[tpu]=={JAX}"],
        "cuda": [f"jax[cuda12]=={JAX}"],
    },
)
