"""tfds image data sets read with ``tfds.data_source``: random access to ArrayRecord files, no TensorFlow.

Any tfds data set whose examples have an ``image`` feature works (mnist, fashion_mnist, cifar10,
celeb_a, ...); an integer ``label`` feature becomes 'label' (int32). Images (H, W, C) uint8 become
x = p / 127.5 - 1 in [-1, 1], float32, after optional geometry:

- ``center_crop=c``: keep the central c x c square (offsets floor((H - c) / 2), floor((W - c) / 2));
- ``image_size=s``: resize to s x s with PIL's bicubic filter (antialiased when shrinking); without
  ``center_crop`` the largest central square is cut first, so the aspect ratio is kept.

celeb_a's defaults (crop 140, resize 64) give the usual CelebA 64x64 faces.

Reading needs the data set prepared in ArrayRecord format; preparing it (download + conversion)
needs TensorFlow and is done once, elsewhere (see ``DatasetNotPreparedError``).
"""
from __future__ import annotations

import numpy as np


class DatasetNotPreparedError(FileNotFoundError, ValueError):
    """A tfds data set is not prepared (in ArrayRecord format) where jaxgen looks for it.

    A ValueError too, so that the CLI reports it as one line about the config (data.data_dir).
    """


def is_registered(name: str) -> bool:
    """Whether tfds knows a builder called ``name`` (config suffixes such as 'x/y' allowed)."""
    import tensorflow_datasets as tfds

    try:
        tfds.builder_cls(name.split("/")[0].split(":")[0])
    except Exception:  # DatasetNotFoundError, or a malformed name
        return False
    return True


def _how_to_prepare(name: str, data_dir: str | None, expected_at: str) -> str:
    root = data_dir if data_dir is not None else "$TFDS_DATA_DIR or ~/tensorflow_datasets"
    target = repr(data_dir) if data_dir is not None else "None"
    return (
        f"tfds data set {name!r} is not prepared in ArrayRecord format under {root} (expected at {expected_at}). "
        f"jaxgen reads it with tfds.data_source, without TensorFlow; prepare it once on a machine with TensorFlow "
        f"(pip install tensorflow): python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}', data_dir={target}, file_format='array_record').download_and_prepare()\" "
        f"(or: tfds build {name} --file_format=array_record --data_dir=DIR), or copy an already prepared "
        f"'{name}/<version>' folder of ArrayRecord files there; then set config.data.data_dir (or TFDS_DATA_DIR) "
        f"to that root."
    )


def _open(builder, name: str, split: str, data_dir: str | None):
    """The data source of ``split``, with clear errors for the usual failures."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises assorted types; classify them below
        if not builder.is_prepared():
            raise DatasetNotPreparedError(_how_to_prepare(name, data_dir, builder.data_dir)) from e
        file_format = getattr(builder.info, "file_format", None)
        if file_format is not None and "array_record" not in str(file_format).lower():
            raise DatasetNotPreparedError(
                f"tfds data set {name!r} at {builder.data_dir} is prepared as {file_format}, but "
                f"tfds.data_source needs ArrayRecord. " + _how_to_prepare(name, data_dir, builder.data_dir)) from e
        splits = sorted(builder.info.splits.keys())
        if split.split("[")[0].split("+")[0] not in splits:
            raise ValueError(f"split {split!r} of tfds data set {name!r} is not one of {splits} "
                             f"(data.split_train / data.split_test)") from e
        raise


class TfdsSplit:
    """One split of a tfds image data set: ``len()``, ``load(indices)``, ``shape``, ``num_classes``.

    ``load`` reads only the requested records.
    """

    def __init__(self, name: str, split: str, *, data_dir: str | None = None, image_size: int | None = None,
                 center_crop: int | None = None):
        import tensorflow_datasets as tfds

        self.name, self.split = name, split
        self.image_size, self.center_crop = image_size, center_crop
        builder = tfds.builder(name, data_dir=data_dir)
        features = builder.info.features
        if "image" not in features:
            raise ValueError(f"data.name={name!r}: tfds data set has no 'image' feature "
                             f"(features: {sorted(features.keys())}); jaxgen's tfds pipeline reads images")
        label = features["label"] if "label" in features else None
        self.num_classes = getattr(label, "num_classes", None)
        self.has_label = self.num_classes is not None
        h, w, c = features["image"].shape
        if c is None:
            raise ValueError(f"data.name={name!r}: images have an unknown number of channels")
        if image_size is None and (h is None or w is None):
            raise ValueError(f"data.image_size must be set for {name!r}: its images vary in size")
        if center_crop is not None and h is not None and w is not None and center_crop > min(h, w):
            raise ValueError(f"data.center_crop={center_crop} must be <= the image size {min(h, w)} of {name!r}")
        if image_size is not None:
            self.shape = (image_size, image_size, c)
        elif center_crop is not None:
            self.shape = (center_crop, center_crop, c)
        else:
            self.shape = (h, w, c)
        self.source = _open(builder, name, split, data_dir)

    def __len__(self) -> int:
        return len(self.source)

    def _image(self, img: np.ndarray) -> np.ndarray:
        img = np.asarray(img, np.uint8)
        if img.ndim == 2:
            img = img[:, :, None]
        h, w = img.shape[:2]
        crop = self.center_crop
        if crop is None and self.image_size is not None and h != w:
            crop = min(h, w)
        if crop is not None:
            if crop > min(h, w):
                raise ValueError(f"data.center_crop={crop} is larger than an image of {self.name!r} ({h}x{w})")
            top, left = (h - crop) // 2, (w - crop) // 2
            img = img[top:top + crop, left:left + crop]
        s = self.image_size
        if s is not None and img.shape[:2] != (s, s):
            from PIL import Image

            channels = img.shape[2]
            pil = Image.fromarray(img[:, :, 0] if channels == 1 else img)
            img = np.asarray(pil.resize((s, s), Image.Resampling.BICUBIC), np.uint8).reshape(s, s, channels)
        return img

    def load(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        # One record at a time: tfds' mocked __getitems__ is broken in 4.9.10, and per-record reads
        # are what the mock-data tests exercise; grain's threads overlap batches.
        records = [self.source[int(i)] for i in indices]
        images = np.stack([self._image(r["image"]) for r in records]) if records else np.zeros((0, *self.shape), np.uint8)
        out = {"x": images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)}
        if self.has_label:
            out["label"] = np.asarray([r["label"] for r in records], np.int32).reshape(len(records))
        return out
