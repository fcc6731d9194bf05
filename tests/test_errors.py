"""Bad checkpoints, bad bundles and bad arguments: clear latentrt errors, nothing half-written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from latentrt import Pipeline
from latentrt.errors import BundleError, CheckpointError, InputError, SamplerError
from latentrt.export import export_bundle
from latentrt.export.checkpoint import load_components
from tests import sd_fixtures

UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return sd_fixtures.sd_pipeline(tmp_path_factory.mktemp("src") / "sd1", "sd1", seed=7)


@pytest.fixture(scope="module")
def bundle(source, tmp_path_factory):
    return export_bundle(source, tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture
def broken(source, tmp_path):
    """A private copy of the source whose UNet file the test edits."""
    dst = tmp_path / "src"
    shutil.copytree(source, dst)
    return dst


def _edit_unet(folder, fn):
    sd = load_file(str(folder / UNET_FILE))
    fn(sd)
    save_file(sd, str(folder / UNET_FILE))


def test_missing_key_is_named(broken):
    _edit_unet(broken, lambda sd: sd.pop("conv_in.weight"))
    with pytest.raises(CheckpointError, match=r"unet.*missing keys, first: conv_in\.weight"):
        load_components(broken)


def test_unexpected_key_is_named(broken):
    _edit_unet(broken, lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unexpected keys, first: extra\.weight"):
        load_components(broken)


def test_wrong_shape_is_named(broken):
    _edit_unet(broken, lambda sd: sd.__setitem__("conv_in.bias", torch.zeros(7)))
    with pytest.raises(CheckpointError, match=r"wrong shape.*conv_in\.bias \(7,\)"):
        load_components(broken)


def test_truncated_file_is_refused(broken):
    path = broken / UNET_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*truncated"):
        load_components(broken)


def test_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = tmp_path / "model.ckpt"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": Evil()}, payload)
    with pytest.raises(CheckpointError, match=r"pickle checkpoint.*safetensors"):
        load_components(payload)
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(payload.read_bytes())
    with pytest.raises(CheckpointError, match="pickle"):
        load_components(disguised)
    assert not marker.exists()


def test_fp16_and_bf16_checkpoints_load(broken):
    _edit_unet(broken, lambda sd: sd.update({k: v.to(torch.bfloat16) for k, v in sd.items()}))
    comps = load_components(broken)
    assert comps.unet.conv_in.weight.dtype == torch.float32


def test_failed_export_leaves_nothing(broken, tmp_path):
    _edit_unet(broken, lambda sd: sd.pop("conv_out.bias"))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError):
        export_bundle(broken, out / "bundle")
    assert not (out / "bundle").exists()
    assert not any(out.iterdir()) if out.exists() else True


# --- bundles --------------------------------------------------------------------------------


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _manifest(b):
    return json.loads((b / "manifest.json").read_text())


def test_bundle_errors(bundle_copy):
    m = _manifest(bundle_copy)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt manifest"):
        Pipeline.load(bundle_copy)
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        Pipeline.load(bundle_copy)

    def write(mod):
        mm = json.loads(json.dumps(m))
        mod(mm)
        (bundle_copy / "manifest.json").write_text(json.dumps(mm))

    write(lambda mm: mm.update(format_version=99))
    with pytest.raises(BundleError, match="version 99 is newer"):
        Pipeline.load(bundle_copy)
    write(lambda mm: mm["components"]["unet"].update(file="../../etc/passwd"))
    with pytest.raises(BundleError, match="escapes the bundle"):
        Pipeline.load(bundle_copy)
    write(lambda mm: mm["components"]["unet"].update(file="/etc/passwd"))
    with pytest.raises(BundleError, match="must be relative"):
        Pipeline.load(bundle_copy)
    write(lambda mm: None)
    (bundle_copy / "vae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match="vae_decoder.onnx is missing"):
        Pipeline.load(bundle_copy)


@pytest.fixture(scope="module")
def pipe(bundle):
    return Pipeline.load(bundle)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"width": 60}, InputError, "width must be a positive multiple of 8"),
        ({"height": 4096}, InputError, r"height 4096 is outside the bundle's range"),
        ({"steps": 0}, InputError, "steps must be a positive integer"),
        ({"strength": 1.5, "image": "img"}, InputError, r"strength must be in \(0, 1\]"),
        ({"strength": 0.0, "image": "img"}, InputError, r"strength must be in \(0, 1\]"),
        ({"sampler": "eulerr"}, SamplerError, "unknown sampler 'eulerr'"),
        ({"scheduler": "karas"}, SamplerError, "unknown scheduler 'karas'"),
        ({"image": "img", "mask": "small"}, InputError, "mask is 32x32 but the image is 64x64"),
        ({"output": "jpeg"}, InputError, "output must be one of"),
    ],
)
def test_bad_arguments(pipe, kwargs, error, match):
    fixtures = {
        "img": Image.new("RGB", (64, 64), (120, 30, 200)),
        "small": Image.new("L", (32, 32), 255),
    }
    kwargs = {k: fixtures.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    kwargs = {"width": 64, "height": 64, "steps": 2} | kwargs
    with pytest.raises(error, match=match):
        pipe.generate("a cat", **kwargs)


def test_unwritable_output_path(pipe, tmp_path):
    (image,) = pipe.generate("a cat", width=64, height=64, steps=1, seed=0)
    with pytest.raises(InputError, match="does not exist"):
        pipe.save(image, tmp_path / "missing" / "out.png")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="does not exist"):
        pipe.save(image, tmp_path / "afile" / "out.png")
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(InputError, match="cannot write"):
        pipe.save(image, tmp_path / "taken.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "taken.png"]


def test_latents_of_the_wrong_shape(pipe):
    with pytest.raises(InputError, match=r"latents must have shape \(1, 4, 8, 8\)"):
        pipe.generate("a cat", width=64, height=64, steps=2, latents=np.zeros((1, 4, 4, 4)))
