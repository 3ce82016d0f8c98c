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

A ``data_dir`` on gs:// is staged: ArrayRecord's reader does not go through fsspec/gcsfs (against
a GCS emulator it never returned), so the prepared version folder of the data set
(``<data_dir>/<name>/<version>/``) is copied once per host, through ``jaxgen.paths``, to
``$JAXGEN_STAGE_DIR/<bucket>/<path>`` (default ``~/.cache/jaxgen/staged``) and read from there.
Files already staged with the right size are not copied again; each file is renamed into place only
when complete, so processes sharing a host can stage concurrently.
"""
from __future__ import annotations

import os

import numpy as np

from jaxgen import paths


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


def stage_dir() -> str:
    """Local root for staged remote data sets: $JAXGEN_STAGE_DIR, else ~/.cache/jaxgen/staged."""
    return os.environ.get("JAXGEN_STAGE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "jaxgen", "staged")


def staged_data_dir(name: str, data_dir: str | None) -> str | None:
    """``data_dir`` itself when local (or None); for a gs:// URL, a local root holding a copy of the prepared
    data set ``name`` (its version folder only), staged on first use."""
    if data_dir is None or not paths.is_remote(data_dir):
        return data_dir
    import tensorflow_datasets as tfds

    remote_root = data_dir.rstrip("/")
    try:
        remote_version = os.fspath(tfds.builder(name, data_dir=remote_root).data_dir)  # metadata via gcsfs
    except Exception as e:  # noqa: BLE001 - a missing bucket, no access: one line for the user
        raise ValueError(f"data.data_dir={data_dir!r}: cannot read tfds data set {name!r} there "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not paths.exists(remote_version):
        return data_dir  # not prepared: _open says how to prepare it
    local_root = os.path.join(stage_dir(), remote_root.split("://", 1)[1])
    rel = os.path.relpath(remote_version.split("://", 1)[1], remote_root.split("://", 1)[1])
    paths.stage(remote_version, os.path.join(local_root, rel))
    return local_root


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
        data_dir = staged_data_dir(name, data_dir)
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
