"""The reference Wan 2.1 video VAE against diffusers' `AutoencoderKLWan`.

Tiny configurations with seeded random weights (gains and biases randomized too) are saved by
diffusers (`save_pretrained`, safetensors) and loaded strictly into `AutoencoderKLWan`; encode
(mean, logvar) and decode must match diffusers' own chunked loops within 1e-4 (fp32). The
reference model's full-sequence pass and its cache-passing chunk loop must agree, and frame
counts the VAE cannot take are refused with InputError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers
import pytest
import torch
from safetensors.torch import load_file, save_file

from latentrt.errors import CheckpointError, InputError
from latentrt.export.models.vae3d import AutoencoderKLWan, WanVAEConfig, load_wan_vae

TOL = 1e-4
# "wan": Wan 2.1's layout (4 levels, temporal 4x, spatial 8x) at tiny widths;
# "alt": other temporal placement (2x), separate decoder width, 3 levels, 2 resnets per block.
VARIANTS = {
    "wan": {
        "base_dim": 8,
        "z_dim": 4,
        "dim_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "temperal_downsample": [False, True, True],
        "latents_mean": [0.1, -0.2, 0.3, 0.0],
        "latents_std": [1.5, 0.5, 2.0, 1.0],
    },
    "alt": {
        "base_dim": 8,
        "decoder_base_dim": 16,
        "z_dim": 6,
        "dim_mult": [1, 2, 2],
        "num_res_blocks": 2,
        "temperal_downsample": [True, False],
        "latents_mean": [0.0] * 6,
        "latents_std": [1.0] * 6,
        "scale_factor_temporal": 2,
        "scale_factor_spatial": 4,
    },
}


def make_oracle(variant: str, seed: int = 0) -> diffusers.AutoencoderKLWan:
    """diffusers' Wan VAE with seeded weights; RMS gains and biases randomized as well."""
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKLWan(**VARIANTS[variant]).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 or all(s == 1 for s in p.shape[1:]):
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_oracle(variant: str, folder: Path) -> diffusers.AutoencoderKLWan:
    oracle = make_oracle(variant)
    oracle.save_pretrained(folder, safe_serialization=True)
    return oracle


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"wan-{request.param}")
    oracle = save_oracle(request.param, folder)
    return oracle, load_wan_vae(folder), folder


def frames_for(model: AutoencoderKLWan, latent_frames: int) -> int:
    return 1 + model.config.temporal_factor * (latent_frames - 1)


def test_config_from_saved_folder(pair):
    oracle, model, folder = pair
    c = model.config
    raw = json.loads((folder / "config.json").read_text())
    assert c.z_dim == raw["z_dim"] and list(c.dim_mult) == raw["dim_mult"]
    assert list(c.temperal_downsample) == raw["temperal_downsample"]
    assert list(c.latents_std) == raw["latents_std"]
    assert c.spatial_factor == oracle.spatial_compression_ratio
    assert WanVAEConfig.from_diffusers(c.to_diffusers()) == c
    assert set(model.state_dict()) == set(oracle.state_dict())


def test_encode_matches_diffusers(pair):
    oracle, model, _ = pair
    torch.manual_seed(1)
    sf = model.config.spatial_factor
    x = torch.rand(1, 3, frames_for(model, 3), 3 * sf, 5 * sf) * 2 - 1
    with torch.no_grad():
        dist = oracle.encode(x).latent_dist
        mean, logvar = model.encode(x)
    assert mean.shape == dist.mean.shape == (1, model.config.z_dim, 3, 3, 5)
    assert (mean - dist.mean).abs().max() <= TOL
    assert (logvar - dist.logvar).abs().max() <= TOL


def test_decode_matches_diffusers(pair):
    oracle, model, _ = pair
    torch.manual_seed(2)
    z = torch.randn(2, model.config.z_dim, 4, 3, 5)
    with torch.no_grad():
        want = oracle.decode(z).sample
        got = model.decode(z)
    sf = model.config.spatial_factor
    assert got.shape == want.shape == (2, 3, frames_for(model, 4), 3 * sf, 5 * sf)
    assert (got - want).abs().max() <= TOL
    assert (got.abs() < 1).any()  # not all clamped: the comparison sees real values


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_equals_full_sequence(pair, chunk):
    _, model, _ = pair
    torch.manual_seed(3)
    z = torch.randn(1, model.config.z_dim, 4, 2, 3)
    x = torch.rand(1, 3, frames_for(model, 4), 16, 24) * 2 - 1
    with torch.no_grad():
        assert (model.decode_chunked(z, chunk) - model.decode(z)).abs().max() <= TOL
        for a, b in zip(model.encode_chunked(x, chunk), model.encode(x), strict=True):
            assert (a - b).abs().max() <= TOL


def test_bad_frame_counts_and_shapes(pair):
    _, model, _ = pair
    tf, sf = model.config.temporal_factor, model.config.spatial_factor
    with pytest.raises(InputError, match=f"1 \\+ {tf}k frames"):
        model.encode(torch.zeros(1, 3, tf, sf, sf))
    with pytest.raises(InputError, match="multiples"):
        model.encode(torch.zeros(1, 3, 1, sf + 1, sf))
    with pytest.raises(InputError, match="latent must be"):
        model.decode(torch.zeros(1, model.config.z_dim + 1, 2, 2, 2))
    with torch.no_grad():
        _, caches = model.decode_chunk(torch.zeros(1, model.config.z_dim, 1, 2, 2))
        with pytest.raises(InputError, match="caches given"):
            model.decode_chunk(torch.zeros(1, model.config.z_dim, 1, 2, 2), caches + caches[:1])


def test_wan22_and_patchified_configs_refused():
    base = dict(VARIANTS["wan"])
    with pytest.raises(NotImplementedError, match="residual"):
        WanVAEConfig.from_diffusers({**base, "is_residual": True})
    with pytest.raises(NotImplementedError, match="attn_scales"):
        WanVAEConfig.from_diffusers({**base, "attn_scales": [1.0]})
    with pytest.raises(NotImplementedError, match="patch"):
        WanVAEConfig.from_diffusers({**base, "patch_size": 2})
    with pytest.raises(CheckpointError, match="temperal_downsample"):
        WanVAEConfig.from_diffusers({**base, "temperal_downsample": [True]})


def test_strict_loading_refuses_foreign_weights(tmp_path):
    save_oracle("wan", tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["decoder.extra.weight"] = torch.zeros(1)
    del state["encoder.conv_in.bias"]
    save_file(state, weights)
    with pytest.raises(CheckpointError, match="missing.*encoder.conv_in.bias"):
        load_wan_vae(tmp_path)
