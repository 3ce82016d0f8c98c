"""Backbones (Flax NNX). Every network takes an explicit `key=None` for dropout."""
from jaxgen.nets.classifier import Classifier
from jaxgen.nets.embeddings import TimeEmbedding, sinusoidal_embedding
from jaxgen.nets.mlp import MLPDenoiser
from jaxgen.nets.unet import UNet, count_params

__all__ = ["Classifier", "MLPDenoiser", "TimeEmbedding", "UNet", "count_params",
           "sinusoidal_embedding"]
