"""Optimizers: the config-driven factory and Lion."""
from jaxgen.optim.factory import OPTIMIZERS, make_optimizer, make_lr_schedule
from jaxgen.optim.lion import lion
