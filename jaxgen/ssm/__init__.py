"""State space models: HiPPO matrices, discretisation, S4/S4D kernels, S4/S4D/LRU layers.

`jaxgen.ssm.hippo.legs(N)`, `jaxgen.ssm.hippo.legt(N, theta)` and `jaxgen.ssm.discretize(A, B, step, method)`
are the stable public API.
"""
from jaxgen.ssm import hippo, kernels, layers, lru
from jaxgen.ssm.discretize import discretize, discretize_diag, discretize_legs, legs_step
from jaxgen.ssm.layers import S4, S4D, SSM_PARAM_PATTERN, SequenceModel, SSMBlock
from jaxgen.ssm.lru import LRU

# SSM_PARAM_PATTERN: parameters that want a lower learning rate and no weight decay (matched on
# the end of the parameter path by the optimizer factory); see jaxgen.ssm.layers.

__all__ = [
    "SSM_PARAM_PATTERN",
    "discretize",
    "discretize_diag",
    "discretize_legs",
    "legs_step",
    "hippo",
    "kernels",
    "layers",
    "lru",
    "S4",
    "S4D",
    "LRU",
    "SSMBlock",
    "SequenceModel",
]
