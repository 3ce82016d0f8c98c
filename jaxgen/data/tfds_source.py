"""tfds image data sets read with ``tfds.data_source`` (ArrayRecord, no TensorFlow)."""
from __future__ import annotations


def is_registered(name: str) -> bool:
    """Whether tfds knows a builder called ``name`` (config suffixes such as 'x/y' allowed)."""
    import tensorflow_datasets as tfds

    try:
        tfds.builder_cls(name.split("/")[0].split(":")[0])
    except Exception:  # DatasetNotFoundError, or a malformed name
        return False
    return True
