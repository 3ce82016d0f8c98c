"""jaxgen: diffusion, state space models, quantised autoencoders and Lion in JAX, each formula checked."""

__version__ = "0.1.0"
