"""The experiments (`python -m experiments.NAME`) run with the XLA:CPU options of `python -m jaxgen.run`
(jaxgen.xla_cpu), set here, before any of them starts JAX's backends."""

from jaxgen import xla_cpu

xla_cpu.set_default_flags()
