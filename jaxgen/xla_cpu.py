"""XLA:CPU options that `python -m jaxgen.run` sets before JAX starts its backends.

XLA:CPU (jaxlib 0.10) hands a convolution with enough channels to YNNPACK, whose weight-gradient convolution runs
far below the matmul rate: on the CIFAR-10 UNet's 3x3 layers at 32x32 and 16x16, 0.27-0.31 of the float32 matmul
rate, against 0.50-0.72 for XLA's own (Eigen) convolution, whose forward and input-gradient passes run at 0.83-1.04
(`python -m experiments.bench_conv`). Taking convolutions out of YNNPACK's fusions (YNNPACK keeps the matmuls and the
rest) makes the CIFAR-10 train step 1.3-1.8x faster on CPU (`python -m experiments.bench_train_step`).
On TPU and GPU the option does nothing.

XLA reads $XLA_FLAGS once, when JAX starts its first backend, so a program of one's own sets it before its first
JAX computation, e.g. with `set_default_flags()` at the top, or in the shell:

    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution python my_script.py
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CONVOLUTIONS_OUTSIDE_YNNPACK = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
DEFAULT_FLAGS = (CONVOLUTIONS_OUTSIDE_YNNPACK,)


def set_default_flags(environ: MutableMapping[str, str] | None = None) -> str:
    """Append each of DEFAULT_FLAGS to $XLA_FLAGS in `environ` (default os.environ) unless $XLA_FLAGS names that
    option already (a value of the user's wins); returns the new $XLA_FLAGS. Has an effect only before JAX starts
    its backends."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "").split()
    for flag in DEFAULT_FLAGS:
        name = flag.split("=", 1)[0]
        if not any(f.split("=", 1)[0] == name for f in flags):
            flags.append(flag)
    environ["XLA_FLAGS"] = " ".join(flags)
    return environ["XLA_FLAGS"]
