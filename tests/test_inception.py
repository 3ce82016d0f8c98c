"""The FID Inception-v3 port against pytorch-fid (torch, CPU) with the same random weights.

The weights travel the way the published ones do: a state dict written by torch.save and read back
by jaxgen's torch-free reader. The Inception forward at 299 x 299 is the costly part: it runs once
per module (one jit, 2 images) in the `ported` fixture.
"""
import io
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

from jaxgen.config import ConfigError
from jaxgen.metrics import inception as inc
from jaxgen.metrics.fid import InceptionExtractor


def _torch():
    """(torch, torch.nn.functional, pytorch-fid's inception module): the reference implementation, imported by the
    tests that use it rather than at collection; missing, those tests fail, never skip."""
    import torch
    import torch.nn.functional
    from pytorch_fid import inception

    return torch, torch.nn.functional, inception


@pytest.fixture(scope="module")
def ported(random_inception_weights):
    """(pytorch-fid outputs, port's outputs, state dict) on the same 2 images in [0, 1]."""
    path, sd = random_inception_weights
    torch, F, pfid_inception = _torch()

    # pytorch-fid's InceptionV3 fetches its weights with load_state_dict_from_url: hand it ours.
    original = pfid_inception.load_state_dict_from_url
    pfid_inception.load_state_dict_from_url = lambda *args, **kwargs: sd
    try:
        ref_model = pfid_inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    finally:
        pfid_inception.load_state_dict_from_url = original
    images = np.random.default_rng(1).uniform(0.0, 1.0, (2, 32, 40, 3)).astype(np.float32)
    with torch.no_grad():
        pool3 = ref_model(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0][:, :, 0, 0]
        logits = F.linear(pool3, sd["fc.weight"], sd["fc.bias"])
    ref = dict(pool3=pool3.numpy(), logits=logits.numpy())

    model = inc.load_fid_inception(path, input_range=(0.0, 1.0))
    extractor = InceptionExtractor(model, batch_size_per_device=2, devices=jax.devices()[:1],
                                   quantize=False)
    return ref, extractor.extract(images), sd


def test_pool3_and_logits_equal_pytorch_fid(ported):
    ref, out, sd = ported
    for key in ("pool3", "logits"):
        assert out[key].shape == ref[key].shape == (2, 2048 if key == "pool3" else 1008)
        scale = np.abs(ref[key]).max()
        err = np.abs(out[key] - ref[key]).max()
        print(f"{key}: max |port - pytorch-fid| = {err:.2e} (max |value| {scale:.2f})")
        assert 0.1 < scale < 100 and err <= 1e-4 * max(scale, 1.0)
    np.testing.assert_allclose(out["logits_unbiased"], ref["logits"] - sd["fc.bias"].numpy(),
                               atol=1e-4 * np.abs(ref["logits"]).max())


@pytest.mark.parametrize("in_hw", [(32, 32), (28, 45), (512, 400)])
def test_resize_equals_torch_bilinear(in_hw):
    torch, F, _ = _torch()
    x = np.random.default_rng(0).normal(size=(1, *in_hw, 3)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(299, 299),
                        mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
    # torch rounds the float32 source coordinate (i + 1/2) * in/out - 1/2 once (FMA) where NumPy
    # rounds twice: 1 ulp of a coordinate up to 512 moves a weight by ~3e-5.
    np.testing.assert_allclose(np.asarray(inc.resize_bilinear(x)), ref, atol=1e-4)


def test_reader_both_torch_formats_and_views(tmp_path):
    torch = _torch()[0]
    base = torch.randn(4, 6)
    # A module's state dict (an OrderedDict with _metadata, int64 num_batches_tracked), plus views
    # sharing one storage, other dtypes and a Parameter.
    sd = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).state_dict()
    sd.update(w=torch.randn(3, 2, 5), t=base.t(), sl=base[1:3, 2:], n=torch.arange(7),
              h=torch.randn(3).half(), p=torch.nn.Parameter(torch.randn(2, 2)))
    for legacy in (False, True):
        path = tmp_path / f"sd_{legacy}.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        got = inc.read_torch_state_dict(path)
        assert list(got) == list(sd)
        for k, v in sd.items():
            assert got[k].dtype == v.detach().numpy().dtype
            np.testing.assert_array_equal(got[k], v.detach().numpy())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_reader_refuses_code(tmp_path):
    torch = _torch()[0]
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        inc.read_torch_state_dict(path)
    # The same in a hand-made zip whose pickle names a torch function that is not a tensor rebuild.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"ctorch\nload\n(tR.")
    path.write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="torch.load"):
        inc.read_torch_state_dict(path)


def test_from_state_dict_rejects_wrong_shapes_and_names():
    sd = {k: np.zeros(s, np.float32) for k, s in inc.torch_state_dict_shapes().items()}
    sd["fc.weight"] = np.zeros((1000, 2048), np.float32)
    with pytest.raises(ValueError, match="fc.weight.*shape"):
        inc.InceptionV3.from_state_dict(sd)
    sd["fc.weight"] = np.zeros((1008, 2048), np.float32)
    del sd["Mixed_7c.branch_pool.bn.running_var"]
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.bn.running_var"):
        inc.InceptionV3.from_state_dict(sd)


def test_offline_download_is_a_clear_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    target = tmp_path / "cache" / inc.FID_WEIGHTS_NAME
    with pytest.raises(ConfigError, match=f"put the file {inc.FID_WEIGHTS_NAME}.*at {target}"):
        inc.fetch_fid_weights(cache_dir=tmp_path / "cache", url="http://127.0.0.1:9/w.pth")
    with pytest.raises(ConfigError, match=f"not found at {target}"):
        inc.fetch_fid_weights(cache_dir=tmp_path / "cache", download=False)
    with pytest.raises(ConfigError, match="does not exist"):
        inc.fetch_fid_weights(tmp_path / "missing.pth")
    assert not any((tmp_path / "cache").iterdir())  # no partial file left behind


def test_download_checks_the_hash_then_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    src = tmp_path / "published.pth"
    src.write_bytes(b"pretend weights")
    digest = inc._sha256(src)
    url = src.as_uri()
    bad = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    with pytest.raises(ConfigError, match=f"expected a hash starting with {bad}"):
        inc.fetch_fid_weights(cache_dir=tmp_path / "c", url=url, sha256_prefix=bad)
    assert not (tmp_path / "c" / inc.FID_WEIGHTS_NAME).exists()
    got = inc.fetch_fid_weights(cache_dir=tmp_path / "c", url=url, sha256_prefix=digest[:8])
    assert got == tmp_path / "c" / inc.FID_WEIGHTS_NAME and got.read_bytes() == src.read_bytes()
    src.unlink()  # cached: a second call does not download
    assert inc.fetch_fid_weights(cache_dir=tmp_path / "c", url=url, sha256_prefix="x") == got
