"""The LDM (`first_stage_model.`) VAE layout, checked against diffusers' `convert_ldm_vae_checkpoint`.

latentrt writes the original layout from a diffusers state dict; diffusers' own single-file
converter must turn it back into the same state dict (keys, shapes, values), latentrt's reading
must be the exact inverse of its writing, and the config inferred from the shapes must be the
config the weights came from.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from latentrt.errors import CheckpointError
from latentrt.export.models.vae import AutoencoderKL, VAEConfig
from latentrt.export.single_file.vae import from_diffusers, infer_config, to_diffusers
from tests.test_vae import BASE

VARIANTS = {
    "sd": {},
    "bare": {
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": False,
    },
    "two-levels": {
        "block_out_channels": [32, 64],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "layers_per_block": 1,
    },
}


def make_oracle(**overrides) -> diffusers.AutoencoderKL:
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**{**BASE, **overrides}).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model


def assert_same_state_dict(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ldm_layout_is_inverse_of_diffusers_converter(variant):
    oracle = make_oracle(**VARIANTS[variant])
    config = VAEConfig.from_diffusers(oracle.config)
    sd = dict(oracle.state_dict())
    ldm = from_diffusers(sd, config)
    checkpoint = {"first_stage_model." + k: v for k, v in ldm.items()}
    assert_same_state_dict(convert_ldm_vae_checkpoint(checkpoint, config.to_diffusers()), sd)
    assert_same_state_dict(to_diffusers(ldm, config), sd)
    assert_same_state_dict(from_diffusers(to_diffusers(ldm, config), config), ldm)
    assert infer_config(ldm) == config


def test_ldm_layout_details():
    oracle = make_oracle()
    config = VAEConfig.from_diffusers(oracle.config)
    sd = oracle.state_dict()
    ldm = from_diffusers(sd, config)
    # decoder.up.N is stored in reverse order of diffusers' up_blocks.
    assert torch.equal(
        ldm["decoder.up.0.block.0.conv1.weight"], sd["decoder.up_blocks.2.resnets.0.conv1.weight"]
    )
    assert "decoder.up.0.upsample.conv.weight" not in ldm
    assert "decoder.up.2.upsample.conv.weight" in ldm
    assert "encoder.down.1.block.0.nin_shortcut.weight" in ldm
    assert "encoder.down.0.downsample.conv.weight" in ldm
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert ldm["decoder.mid.attn_1.proj_out.weight"].shape == (64, 64, 1, 1)
    assert "encoder.norm_out.weight" in ldm and "decoder.mid.block_2.conv2.bias" in ldm


def test_ldm_weights_give_diffusers_outputs():
    oracle = make_oracle()
    ldm = from_diffusers(oracle.state_dict(), VAEConfig.from_diffusers(oracle.config))
    ldm = {k: v.clone() for k, v in ldm.items()}
    config = infer_config(ldm)
    model = AutoencoderKL(config).eval()
    model.load_state_dict(to_diffusers(ldm, config), strict=True)
    z = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model.decode(z) - oracle.decode(z).sample).abs().max() <= 1e-5


def test_unknown_keys_pass_through_and_missing_keys_are_named():
    oracle = make_oracle()
    config = VAEConfig.from_diffusers(oracle.config)
    ldm = from_diffusers(oracle.state_dict(), config)
    extra = {"loss.logvar": torch.zeros(()), "encoder.down.0.block.0.extra.weight": torch.zeros(1)}
    out = to_diffusers({**ldm, **extra}, config)
    for key, value in extra.items():
        assert out[key] is value
    del ldm["encoder.conv_in.weight"]
    with pytest.raises(CheckpointError, match="encoder.conv_in.weight"):
        infer_config(ldm)
