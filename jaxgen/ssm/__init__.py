"""State space models: HiPPO matrices, discretisation, S4/S4D kernels, S4/S4D/LRU layers.

`jaxgen.ssm.hippo.legs(N)`, `jaxgen.ssm.hippo.legt(N, theta)` and `jaxgen.ssm.discretize(A, B, step, method)`
are the stable public API (see DESIGN.md).
"""
from jaxgen.ssm import discretize as _discretize_module
from jaxgen.ssm import hippo, kernels
from jaxgen.ssm.discretize import discretize, discretize_diag, discretize_legs, legs_step

# Parameters that want a lower learning rate and no weight decay (matched on the parameter path).
SSM_PARAM_PATTERN = r"(A_re|A_im|B_re|B_im|P_re|P_im|log_step|nu_log|theta_log|gamma_log)$"

__all__ = [
    "SSM_PARAM_PATTERN",
    "discretize",
    "discretize_diag",
    "discretize_legs",
    "legs_step",
    "hippo",
    "kernels",
]
