"""The FID Inception-v3 network (Heusel et al. 2017, TTUR; pytorch-fid's port) in Flax NNX.

FID and Inception Score are only comparable with published numbers when computed with the
network of the reference implementations: the TensorFlow graph `inception-2015-12-05` that TTUR
(Heusel et al. 2017) uses, which pytorch-fid re-expresses as torchvision's Inception-v3 with
patched blocks and publishes as `pt_inception-2015-12-05-6726825d.pth`. Differences from the
paper's / torchvision's Inception-v3, all reproduced here:

- 1008 output classes (the 2015 graph's softmax), no auxiliary head;
- every convolution is conv (no bias) -> BatchNorm(eps = 0.001, running statistics) -> ReLU;
- the pooling branch of the A, C and first E blocks (Mixed_5b-d, 6b-e, 7b) averages a 3x3 window
  with padding 1 over the valid pixels only (TensorFlow's SAME average pool, `count_include_pad=False`);
- the last E block (Mixed_7c) max-pools in that branch instead of averaging;
- input: bilinear resize to 299 x 299 as `torch.nn.functional.interpolate(..., mode='bilinear',
  align_corners=False)` (half-pixel centres, no antialiasing), then the range [0, 1] (or [-1, 1])
  mapped to the network's [-1, 1].

Outputs: pool3 features (2048, the global average of Mixed_7c) and the 1008 logits fc(pool3).

Weights come from a local file or the published URL (downloaded once into a cache directory and
checked against the sha256 prefix in its name); the `.pth` file is read without unpickling
arbitrary objects (`read_torch_state_dict`), and without torch.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import pickle
import struct
import tempfile
import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

log = logging.getLogger(__name__)

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_NAME = FID_WEIGHTS_URL.rsplit("/", 1)[1]
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
NUM_CLASSES = 1008
FEATURE_DIM = 2048
INPUT_SIZE = 299
INPUT_RANGES = ((0.0, 1.0), (-1.0, 1.0))

# ----------------------------------------------------------------------------------------------
# Network


# Parameters start at zero (BatchNorm at identity): the network is only meant to run with loaded
# weights, and a random init of its 24M parameters costs seconds of CPU.
_ZEROS = nnx.initializers.zeros_init()


class BasicConv(nnx.Module):
    """conv (no bias) -> BatchNorm(eps = 1e-3, running statistics) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0, *, precision,
                 rngs: nnx.Rngs):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(cin, cout, (kh, kw), strides=stride, padding=((ph, ph), (pw, pw)),
                             use_bias=False, precision=precision, kernel_init=_ZEROS, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def _max_pool(x, window: int, stride: int, padding: int = 0):
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                 (1, stride, stride, 1), pad)


def _avg_pool_valid_only(x):
    """3x3 average, stride 1, padding 1, dividing by the number of pixels inside the image."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    win, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, win, strides, pad)
    count = jax.lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, jax.lax.add,
                                  win, strides, pad)
    return total / count


class InceptionA(nnx.Module):
    def __init__(self, cin: int, pool_features: int, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch1x1 = BasicConv(cin, 64, 1, **c)
        self.branch5x5_1 = BasicConv(cin, 48, 1, **c)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, **c)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, **c)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, **c)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, **c)
        self.branch_pool = BasicConv(cin, pool_features, 1, **c)

    def __call__(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_valid_only(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    def __init__(self, cin: int, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2, **c)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, **c)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, **c)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, **c)

    def __call__(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, _max_pool(x, 3, 2)], axis=-1)


class InceptionC(nnx.Module):
    def __init__(self, cin: int, c7: int, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch1x1 = BasicConv(cin, 192, 1, **c)
        self.branch7x7_1 = BasicConv(cin, c7, 1, **c)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3), **c)
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_1 = BasicConv(cin, c7, 1, **c)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3), **c)
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0), **c)
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3), **c)
        self.branch_pool = BasicConv(cin, 192, 1, **c)

    def __call__(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_valid_only(x))
        return jnp.concatenate([self.branch1x1(x), b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    def __init__(self, cin: int, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.branch3x3_1 = BasicConv(cin, 192, 1, **c)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, **c)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1, **c)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), **c)
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), **c)
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, **c)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool(x, 3, 2)], axis=-1)


class InceptionE(nnx.Module):
    """`max_pool=False`: FID's Mixed_7b (valid-only average); True: Mixed_7c (3x3 max, pad 1)."""

    def __init__(self, cin: int, max_pool: bool, *, precision, rngs):
        c = dict(precision=precision, rngs=rngs)
        self.max_pool = max_pool
        self.branch1x1 = BasicConv(cin, 320, 1, **c)
        self.branch3x3_1 = BasicConv(cin, 384, 1, **c)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), **c)
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), **c)
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1, **c)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, **c)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), **c)
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), **c)
        self.branch_pool = BasicConv(cin, 192, 1, **c)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = _max_pool(x, 3, 1, padding=1) if self.max_pool else _avg_pool_valid_only(x)
        return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], axis=-1)


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) bilinear weights of `interpolate(mode='bilinear', align_corners=False)`.

    Output pixel i samples the input at s = max((i + 1/2) * in/out - 1/2, 0), linearly between
    floor(s) and min(floor(s) + 1, in - 1). Computed in float32 like torch's CPU kernel.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5))
                     - np.float32(0.5), np.float32(0.0))
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), np.float32(1.0) - lam)
    np.add.at(m, (rows, i1), lam)
    return m


def resize_bilinear(images_BHWC, size: int = INPUT_SIZE, precision=jax.lax.Precision.HIGHEST):
    """Bilinear resize of (B, H, W, C) to (B, size, size, C) as pytorch-fid does it (no antialias)."""
    _, h, w, _ = images_BHWC.shape
    x = images_BHWC
    if h != size:
        x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(resize_matrix(h, size)), x, precision=precision)
    if w != size:
        x = jnp.einsum("ow,bhwc->bhoc", jnp.asarray(resize_matrix(w, size)), x, precision=precision)
    return x


class InceptionV3(nnx.Module):
    """FID Inception-v3: images (B, H, W, 3) in `input_range` -> (pool3 (B, 2048), logits (B, 1008)).

    `input_range` is (0, 1) (pytorch-fid's convention) or (-1, 1) (jaxgen's images); x is resized
    to 299 x 299 (if `resize`), then mapped affinely to [-1, 1]. Convolutions use `precision`
    (default HIGHEST: TPUs otherwise multiply in bfloat16, which moves FID). Parameters are zero
    until loaded (`load_fid_inception`, `InceptionV3.from_state_dict`).
    """

    def __init__(self, *, input_range=(-1.0, 1.0), resize: bool = True,
                 precision=jax.lax.Precision.HIGHEST, rngs: nnx.Rngs | None = None):
        lo_hi = tuple(float(v) for v in input_range)
        if lo_hi not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
        self.input_range, self.resize, self.precision = lo_hi, bool(resize), precision
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        c = dict(precision=precision, rngs=rngs)
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, **c)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, **c)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, **c)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, **c)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, **c)
        self.Mixed_5b = InceptionA(192, 32, **c)
        self.Mixed_5c = InceptionA(256, 64, **c)
        self.Mixed_5d = InceptionA(288, 64, **c)
        self.Mixed_6a = InceptionB(288, **c)
        self.Mixed_6b = InceptionC(768, 128, **c)
        self.Mixed_6c = InceptionC(768, 160, **c)
        self.Mixed_6d = InceptionC(768, 160, **c)
        self.Mixed_6e = InceptionC(768, 192, **c)
        self.Mixed_7a = InceptionD(768, **c)
        self.Mixed_7b = InceptionE(1280, max_pool=False, **c)
        self.Mixed_7c = InceptionE(2048, max_pool=True, **c)
        self.fc = nnx.Linear(FEATURE_DIM, NUM_CLASSES, precision=precision, kernel_init=_ZEROS,
                             rngs=rngs)

    def __call__(self, images_BHWC):
        x = jnp.asarray(images_BHWC, jnp.float32)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must have shape (B, H, W, 3), got {x.shape}")
        if self.resize:
            x = resize_bilinear(x, INPUT_SIZE, self.precision)
        if self.input_range == (0.0, 1.0):
            x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _max_pool(x, 3, 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        return pool3, self.fc(pool3)

    def logits_unbiased(self, pool3_BF):
        """pool3 @ W without the bias: the logits of the Inception Score code of Salimans et
        al. (2016), which multiplies pool_3 by the softmax layer's weight matrix only."""
        return jnp.dot(pool3_BF, self.fc.kernel[...], precision=self.precision)

    # --- weights -------------------------------------------------------------------------------

    @classmethod
    def from_state_dict(cls, state_dict, **kwargs) -> "InceptionV3":
        """The network with the parameters of a pytorch-fid state dict ({name: array})."""
        if cls is not InceptionV3:
            raise TypeError("from_state_dict builds an InceptionV3")
        graphdef, flat = _abstract(**kwargs)
        used, new = set(), []
        for path, var in flat:
            name, transpose = _torch_name(path)
            if name not in state_dict:
                raise ValueError(f"state dict has no parameter {name!r} (needed for "
                                 f"{'.'.join(map(str, path))}); is this the FID Inception file "
                                 f"{FID_WEIGHTS_NAME}?")
            arr = np.asarray(state_dict[name], np.float32)
            if transpose is not None:
                arr = arr.transpose(transpose)
            if arr.shape != tuple(var.value.shape):
                raise ValueError(f"parameter {name!r} has shape {np.asarray(state_dict[name]).shape}, "
                                 f"expected the FID Inception-v3 shape for {tuple(var.value.shape)} "
                                 f"(after layout change)")
            used.add(name)
            new.append((path, var.replace(value=jnp.asarray(arr))))
        unexpected = sorted(k for k in state_dict if k not in used
                            and not k.endswith("num_batches_tracked"))
        if unexpected:
            raise ValueError(f"state dict has parameters the FID Inception-v3 does not: "
                             f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        return nnx.merge(graphdef, nnx.from_flat_state(new))


@functools.lru_cache(maxsize=4)
def _abstract(input_range=(-1.0, 1.0), resize: bool = True, precision=jax.lax.Precision.HIGHEST):
    """(graphdef, flat abstract state) of InceptionV3(...), built once (nnx's bookkeeping for
    ~300 modules costs about a second)."""
    abstract = nnx.eval_shape(lambda: InceptionV3(input_range=input_range, resize=resize,
                                                  precision=precision, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return graphdef, nnx.to_flat_state(state)


_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_name(path) -> tuple[str, tuple | None]:
    """NNX parameter path -> (torch state-dict key, transpose from torch layout to ours)."""
    *mods, leaf = [str(p) for p in path]
    prefix = ".".join(mods)
    if mods and mods[-1] == "conv" and leaf == "kernel":
        return prefix + ".weight", (2, 3, 1, 0)  # OIHW -> HWIO
    if mods and mods[-1] == "bn" and leaf in _BN_NAMES:
        return f"{prefix}.{_BN_NAMES[leaf]}", None
    if mods == ["fc"]:
        return ("fc.weight", (1, 0)) if leaf == "kernel" else ("fc.bias", None)
    raise ValueError(f"no torch name for parameter {'.'.join(map(str, path))}")


def torch_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """{pytorch-fid state-dict key: shape} of the FID Inception-v3 (num_batches_tracked excluded)."""
    out = {}
    for path, var in _abstract()[1]:
        name, transpose = _torch_name(path)
        shape = tuple(var.value.shape)
        out[name] = (tuple(shape[i] for i in np.argsort(transpose)) if transpose is not None
                     else shape)
    return out


def random_state_dict(seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    """A pytorch-fid-shaped state dict of random float32 parameters that keep activations O(1)
    (He-scaled convolutions, BatchNorm statistics near (0, 1), gains in [0.4, 1]), with the
    `num_batches_tracked` entries torch's BatchNorm has: for checking the port against the
    reference without the published weights."""
    rng = np.random.default_rng(seed)
    sd = OrderedDict()
    for name, shape in torch_state_dict_shapes().items():
        if name.endswith("conv.weight"):
            v = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        elif name.endswith("bn.weight"):
            v = rng.uniform(0.4, 1.0, shape)
        elif name.endswith("running_var"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name == "fc.weight":
            v = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape)
        else:  # bn.bias, running_mean, fc.bias
            v = rng.normal(0.0, 0.1, shape)
        sd[name] = v.astype(np.float32)
        if name.endswith("running_var"):
            sd[name[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return sd


# ----------------------------------------------------------------------------------------------
# Reading a torch .pth file without torch and without unpickling arbitrary objects

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor_v2's arguments -> a NumPy array (a copy)."""
    data = storage
    itemsize = data.dtype.itemsize
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s < 0 for s in stride):
        raise pickle.UnpicklingError(f"negative tensor stride {stride}")
    extent = 1 + sum((n - 1) * st for n, st in zip(size, stride)) if all(size) else 0
    if offset < 0 or offset + extent > data.size:
        raise pickle.UnpicklingError(f"tensor (offset {offset}, size {size}, stride {stride}) "
                                     f"exceeds its storage of {data.size} elements")
    view = np.lib.stride_tricks.as_strided(data[offset:], size, [s * itemsize for s in stride],
                                           writeable=False)
    return np.array(view)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only OrderedDict, torch's tensor rebuild and storage-type names; storages come
    through `load_storage(key, dtype, numel)`. Anything else is refused (UnpicklingError)."""

    def __init__(self, file, load_storage=None, rebuild=_rebuild_tensor):
        super().__init__(file)
        self._load_storage, self._rebuild = load_storage, rebuild

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild
        if module == "torch._utils" and name == "_rebuild_parameter":  # nn.Parameter -> its data
            return lambda data, *_ignored: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights "
                                     f"file (only tensors and OrderedDicts are allowed)")

    def persistent_load(self, pid):
        if self._load_storage is None or not isinstance(pid, tuple) or len(pid) < 5 \
                or pid[0] != "storage" or not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (legacy torch format) are not supported")
        return self._load_storage(str(pid[2]), pid[1].dtype, int(pid[4]))


def _read_zip(f) -> dict:
    with zipfile.ZipFile(f) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"torch zip file must contain one data.pkl, found {pkl}")
        root = pkl[0][:-len("data.pkl")]
        byteorder = root + "byteorder"
        if byteorder in names and z.read(byteorder).decode().strip() != "little":
            raise ValueError("big-endian torch files are not supported")

        def load_storage(key, dtype, numel):
            raw = z.read(f"{root}data/{key}")
            if len(raw) < numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} has {len(raw)} bytes, expected "
                                             f"{numel * dtype.itemsize}")
            return np.frombuffer(raw, dtype.newbyteorder("<"), count=numel)

        return _RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), load_storage).load()


def _read_legacy(f) -> dict:
    """torch.save's pre-1.6 format: pickles (magic, version, sys info, object, storage keys),
    then each storage as int64 element count + raw little-endian data, in key order."""
    if _RestrictedUnpickler(f).load() != _LEGACY_MAGIC:
        raise ValueError("not a torch file (neither a zip archive nor the legacy format)")
    _RestrictedUnpickler(f).load()  # protocol version
    info = _RestrictedUnpickler(f).load()
    if isinstance(info, dict) and not info.get("little_endian", True):
        raise ValueError("big-endian torch files are not supported")
    pending = {}  # key -> (dtype, numel, arrays waiting for data)

    class Lazy:
        pass

    def load_storage(key, dtype, numel):
        if key not in pending:
            pending[key] = (dtype, numel, Lazy())
        return pending[key][2]

    # Tensors reference storages whose bytes come after the pickle: rebuild them afterwards.
    tensors = []

    def deferred_rebuild(storage, offset, size, stride, *rest):
        t = (storage, offset, size, stride)
        tensors.append(t)
        return t

    obj = _RestrictedUnpickler(f, load_storage, deferred_rebuild).load()
    keys = _RestrictedUnpickler(f).load()
    data = {}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = pending[key][0] if key in pending else np.dtype(np.uint8)
        raw = f.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"truncated torch file: storage {key}")
        data[key] = np.frombuffer(raw, dtype.newbyteorder("<"))
    by_lazy = {id(v[2]): k for k, v in pending.items()}
    built = {id(t): _rebuild_tensor(data[by_lazy[id(t[0])]], *t[1:]) for t in tensors}
    if not isinstance(obj, dict):
        raise ValueError(f"torch file holds a {type(obj).__name__}, expected a state dict")
    return OrderedDict((k, built[id(v)] if id(v) in built else v) for k, v in obj.items())


def read_torch_state_dict(path: str | os.PathLike) -> "OrderedDict[str, np.ndarray]":
    """A state dict ({name: tensor}) from a torch.save file, as NumPy arrays, without torch.

    Reads both torch.save formats (the zip archive of `data.pkl` + raw storages, and the legacy
    sequence of pickles). The pickle is read by an unpickler that resolves only
    `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` (replaced by a NumPy strided
    view of the raw storage), `torch._utils._rebuild_parameter` (its tensor) and the
    `torch.*Storage` type names; any other global, hence any
    code a malicious file could run, raises `pickle.UnpicklingError`.
    """
    from jaxgen import paths

    with paths.open(path, "rb") as f:  # a local file or a gs:// object (both seekable)
        if zipfile.is_zipfile(f):
            f.seek(0)
            sd = _read_zip(f)
        else:
            f.seek(0)
            sd = _read_legacy(f)
    if not isinstance(sd, dict):
        raise ValueError(f"{os.fspath(path)} holds a {type(sd).__name__}, expected a state dict")
    bad = [k for k, v in sd.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise ValueError(f"{os.fspath(path)}: entries {bad[:5]} are not tensors")
    return sd


# ----------------------------------------------------------------------------------------------
# Finding, downloading and checking the weights file


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:  # local: the download's temporary file in the local cache
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the weights are cached: `cache_dir` (default $JAXGEN_CACHE or ~/.cache/jaxgen). The file is read
    from local disk, so a gs:// cache dir falls back to ~/.cache/jaxgen (Path('gs://...') is a local 'gs:')."""
    from jaxgen import paths
    from jaxgen.metrics.features import default_cache_dir

    root = cache_dir or default_cache_dir()
    if paths.is_remote(root):
        root = Path.home() / ".cache" / "jaxgen"
    return Path(root) / FID_WEIGHTS_NAME


def fetch_fid_weights(weights_path: str | os.PathLike | None = None, *,
                      cache_dir: str | os.PathLike | None = None, download: bool = True,
                      url: str = FID_WEIGHTS_URL, sha256_prefix: str = FID_WEIGHTS_SHA256_PREFIX
                      ) -> str | os.PathLike:
    """Path of a verified copy of the FID Inception weights (local, or `weights_path` as given: a gs:// URL too).

    `weights_path` given: that file must exist (it is used as is: a user's file, not checked).
    Otherwise the cache file `<cache_dir>/pt_inception-2015-12-05-6726825d.pth` (torch hub's
    copy in ~/.cache/torch/hub/checkpoints is used too when present); missing, it is downloaded
    from `url` once (to a temporary file, its sha256 checked to start with `sha256_prefix`,
    then renamed into place). Raises `jaxgen.config.ConfigError` naming the path to put the
    file at when it is missing and cannot be downloaded (offline machine, `download=False`).
    """
    from jaxgen.config import ConfigError

    if weights_path is not None:
        from jaxgen import paths

        if not paths.exists(weights_path) or paths.isdir(weights_path):
            raise ConfigError(f"FID Inception weights file {os.fspath(weights_path)!r} does not exist; download "
                              f"{url} there (or leave the path unset to use the cache)")
        return weights_path
    target = default_weights_path(cache_dir)
    if target.is_file():
        return target
    hub = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch") / "hub" / \
        "checkpoints" / FID_WEIGHTS_NAME
    if cache_dir is None and hub.is_file():
        return hub
    how = (f"put the file {FID_WEIGHTS_NAME} (from {url}) at {target} (or set $JAXGEN_CACHE, "
           f"or pass its path)")
    if not download:
        raise ConfigError(f"FID Inception weights not found at {target}; {how}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        log.info("downloading FID Inception weights from %s to %s", url, target)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        digest = _sha256(tmp)
        if not digest.startswith(sha256_prefix):
            raise ConfigError(f"downloaded FID Inception weights from {url} have sha256 "
                              f"{digest[:16]}..., expected a hash starting with {sha256_prefix}; "
                              f"{how}")
        os.replace(tmp, target)  # local: the cache is always on local disk
    except ConfigError:
        raise
    except Exception as e:  # no network, DNS, HTTP error, disk: one actionable message
        raise ConfigError(f"FID Inception weights not found at {target} and the download from "
                          f"{url} failed ({type(e).__name__}: {e}); {how}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_fid_inception(weights_path: str | os.PathLike | None = None, *,
                       cache_dir: str | os.PathLike | None = None, download: bool = True,
                       **kwargs) -> InceptionV3:
    """The FID Inception-v3 with the published weights (see `fetch_fid_weights`); `kwargs` go to
    `InceptionV3` (input_range, resize, precision)."""
    path = fetch_fid_weights(weights_path, cache_dir=cache_dir, download=download)
    return InceptionV3.from_state_dict(read_torch_state_dict(path), **kwargs)
