"""The reference AutoencoderKL against diffusers' AutoencoderKL.

A tiny but realistic VAE (three resolutions 32/64/64, 32 groups, two resnets per block,
mid-block attention) with seeded random weights, norms and biases randomized too, is saved by
diffusers (`save_pretrained`, safetensors) and loaded strictly; encode (mean, logvar) and
decode must match diffusers within 1e-5 in fp32 on a non-square image.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentrt.errors import CheckpointError
from latentrt.export.models.layers import GroupNormSiLU
from latentrt.export.models.vae import AutoencoderKL, VAEConfig

TOL = 1e-5
BASE = {
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "latent_channels": 4,
}
VARIANTS = {
    "sd": {},
    "bare": {
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": False,
        "latent_channels": 16,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
    },
}


def make_oracle(seed: int = 0, **overrides) -> diffusers.AutoencoderKL:
    """A diffusers VAE with seeded weights; 1-D parameters (norms, biases) randomized as well."""
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(**{**BASE, **overrides}).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def saved(request, tmp_path_factory):
    oracle = make_oracle(**VARIANTS[request.param])
    folder = tmp_path_factory.mktemp("vae")
    oracle.save_pretrained(folder, safe_serialization=True)
    config = VAEConfig.from_diffusers(json.loads((folder / "config.json").read_text()))
    model = AutoencoderKL(config).eval()
    model.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"), strict=True)
    return oracle, model


def test_config_from_saved_folder(saved):
    oracle, model = saved
    c = model.config
    assert c.block_out_channels == (32, 64, 64)
    assert c.layers_per_block == 2 and c.norm_num_groups == 32
    assert c.latent_channels == oracle.config.latent_channels
    assert c.scaling_factor == oracle.config.scaling_factor
    assert c.shift_factor == (oracle.config.shift_factor or 0.0)
    assert c.use_quant_conv == oracle.config.use_quant_conv
    assert c.mid_block_add_attention == oracle.config.mid_block_add_attention
    assert VAEConfig.from_diffusers(c.to_diffusers()) == c
    assert model.downscale == 4


def test_encode_matches_diffusers(saved):
    oracle, model = saved
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        dist = oracle.encode(x).latent_dist
        mean, logvar = model.encode(x)
    assert mean.shape == (2, oracle.config.latent_channels, 12, 10)
    assert (mean - dist.mean).abs().max() <= TOL
    assert (logvar - dist.logvar).abs().max() <= TOL


def test_decode_matches_diffusers(saved):
    oracle, model = saved
    z = torch.randn(
        2, oracle.config.latent_channels, 12, 10, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        want = oracle.decode(z).sample
        got = model.decode(z)
    assert got.shape == (2, 3, 48, 40)
    assert (got - want).abs().max() <= TOL


def test_logvar_is_clamped_like_diffusers():
    oracle = make_oracle()
    with torch.no_grad():
        oracle.quant_conv.bias[4] += 100.0  # first logvar channel far above the clamp
        oracle.quant_conv.bias[5] -= 100.0  # second far below
    model = AutoencoderKL(VAEConfig.from_diffusers(oracle.config)).eval()
    model.load_state_dict(oracle.state_dict(), strict=True)
    x = torch.zeros(1, 3, 16, 16)
    with torch.no_grad():
        want = oracle.encode(x).latent_dist.logvar
        _, got = model.encode(x)
    assert got[:, 0].eq(20.0).all() and got[:, 1].eq(-30.0).all()
    assert (got - want).abs().max() <= TOL


def test_groupnorm_silu_pairs_use_the_fusable_module():
    """Every diffusers GroupNorm is here; those followed by SiLU are GroupNormSiLU modules."""
    oracle = make_oracle()
    model = AutoencoderKL(VAEConfig.from_diffusers(oracle.config))
    theirs = {n for n, m in oracle.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    fused = {n for n, m in model.named_modules() if isinstance(m, GroupNormSiLU) and m.act}
    plain = {n for n, m in model.named_modules() if type(m) is torch.nn.GroupNorm}
    assert fused | plain == theirs
    assert plain == {n for n in theirs if n.endswith("attentions.0.group_norm")}


def test_config_refuses_other_architectures():
    with pytest.raises(CheckpointError, match="down_block_types"):
        VAEConfig.from_diffusers({**BASE, "down_block_types": ["DownBlock2D"] * 3})
    with pytest.raises(CheckpointError, match="act_fn"):
        VAEConfig.from_diffusers({**BASE, "act_fn": "gelu"})


def test_onnx_export_dynamic_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    oracle = make_oracle()
    model = AutoencoderKL(VAEConfig.from_diffusers(oracle.config)).eval()
    model.load_state_dict(oracle.state_dict(), strict=True)

    class Decode(torch.nn.Module):
        def __init__(self, vae: AutoencoderKL) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z)

    batch = torch.export.Dim("batch", min=1, max=8)
    h, w = torch.export.Dim("h", min=2, max=128), torch.export.Dim("w", min=2, max=128)
    path = tmp_path / "decoder.onnx"
    torch.onnx.export(
        Decode(model).eval(),
        (torch.randn(2, 4, 6, 5),),
        str(path),
        input_names=["latent"],
        dynamic_shapes=({0: batch, 2: h, 3: w},),
        dynamo=True,
        verbose=False,
    )
    z = torch.randn(3, 4, 7, 9, generator=torch.Generator().manual_seed(4))
    got = ort.InferenceSession(str(path)).run(None, {"latent": z.numpy()})[0]
    with torch.no_grad():
        want = model.decode(z).numpy()
    assert got.shape == (3, 3, 28, 36)
    assert np.abs(got - want).max() <= 1e-4
