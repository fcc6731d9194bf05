"""Single-file CLIP text encoder layouts, checked against diffusers' own single-file converters.

`diffusers.loaders.single_file_utils.convert_ldm_clip_checkpoint` (HF-named layout, SD 1.x and
SDXL) and `convert_open_clip_checkpoint` (OpenCLIP layout, SD 2.x and SDXL) are the oracles:
what latentrt writes in the original layout must convert back, through them, to the very same
state dict; latentrt's own reading must agree with them key for key and tensor for tensor.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_open_clip_checkpoint,
)

from latentrt.export.models.clip import CLIPTextConfig, CLIPTextModel
from latentrt.export.single_file.clip import (
    diffusers_to_hf,
    diffusers_to_openclip,
    hf_to_diffusers,
    infer_hf_config,
    infer_openclip_config,
    openclip_to_diffusers,
)
from tests.test_clip import make_oracle

TOL = 1e-5
HEAD_DIM = 16


def tiny_config(act: str, proj: int | None, layers: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=64 // HEAD_DIM,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=proj,
    )


def our_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The oracle's weights under transformers' `text_model.`-level names (this project's)."""
    return CLIPTextModel.normalize_state_dict(model.state_dict())


def assert_same_state_dict(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def make_ids(batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 999, (batch, 77), generator=g)
    ids[0, 12] = 999
    ids[1, 50] = 999
    return ids


def load(config: CLIPTextConfig, sd: dict) -> CLIPTextModel:
    model = CLIPTextModel(config).eval()
    model.load_state_dict(sd, strict=True)
    return model


@pytest.mark.parametrize(
    "prefix", ["cond_stage_model.transformer.", "conditioner.embedders.0.transformer."]
)
def test_hf_layout_is_inverse_of_diffusers(prefix):
    config = tiny_config("quick_gelu", None, 4)
    oracle = make_oracle(config)
    sd = our_names(oracle)
    original = diffusers_to_hf(sd)
    checkpoint = {prefix + k: v for k, v in original.items()}
    assert_same_state_dict(convert_ldm_clip_checkpoint(checkpoint), sd)
    assert infer_hf_config(original, head_dim=HEAD_DIM) == config
    # Old files: no `text_model.` level and a saved position_ids buffer.
    old = {k.removeprefix("text_model."): v for k, v in original.items()}
    old["embeddings.position_ids"] = torch.arange(77)[None]
    assert_same_state_dict(hf_to_diffusers(old), sd)
    assert_same_state_dict(hf_to_diffusers(old, config), sd)
    assert infer_hf_config(old, head_dim=HEAD_DIM) == config
    ids = make_ids()
    with torch.no_grad():
        got = load(infer_hf_config(old, head_dim=HEAD_DIM), hf_to_diffusers(old))(ids)
        want = oracle(ids)
    assert (got.last_hidden_state - want.last_hidden_state).abs().max() <= TOL
    assert (got.pooler_output - want.pooler_output).abs().max() <= TOL


def test_openclip_sd2_layout_matches_diffusers():
    """SD 2.x: 24 resblocks in the file, diffusers keeps 23 and no projection."""
    full_config = tiny_config("gelu", 32, 24)
    full = make_oracle(full_config)
    original = diffusers_to_openclip(our_names(full), full_config)
    original["logit_scale"] = torch.tensor(4.6052)
    original["attn_mask"] = torch.full((77, 77), float("-inf")).triu(1)
    assert original["text_projection"].shape == (64, 32)  # [width, proj], used as x @ P
    assert torch.equal(original["text_projection"], full.text_projection.weight.T)
    assert original["transformer.resblocks.3.attn.in_proj_weight"].shape == (3 * 64, 64)

    prefix = "cond_stage_model.model."
    sd2_config = tiny_config("gelu", None, 23)
    theirs = convert_open_clip_checkpoint(
        transformers.CLIPTextModel(transformers.CLIPTextConfig(**sd2_config.to_transformers())),
        {prefix + k: v for k, v in original.items()},
        prefix=prefix,
    )
    config = infer_openclip_config(original, drop_last_layer=True, head_dim=HEAD_DIM)
    assert config == sd2_config
    mine = openclip_to_diffusers(original, config)
    assert_same_state_dict(mine, theirs)

    # Back again: everything but what SD 2.x never uses.
    unused = {"logit_scale", "attn_mask", "text_projection"}
    unused |= {k for k in original if k.startswith("transformer.resblocks.23.")}
    kept = {k: v for k, v in original.items() if k not in unused}
    assert_same_state_dict(diffusers_to_openclip(mine, config), kept)

    # The 23-layer encoder equals the 24-layer tower read at its penultimate layer.
    ids = make_ids()
    with torch.no_grad():
        got = load(config, mine)(ids).last_hidden_state
        hidden = full(ids, output_hidden_states=True).hidden_states[-2]
        want = full.text_model.final_layer_norm(hidden)
        tower = load(full_config, openclip_to_diffusers(original, full_config))
        penultimate = tower(ids, layer=-2, final_norm=True).last_hidden_state
    assert (got - want).abs().max() <= TOL
    assert (penultimate - want).abs().max() <= TOL


def test_openclip_sdxl_layout_matches_diffusers():
    """SDXL's OpenCLIP bigG: every layer and the projection are kept."""
    config = tiny_config("gelu", 32, 5)
    oracle = make_oracle(config)
    sd = our_names(oracle)
    original = diffusers_to_openclip(sd, config)
    prefix = "conditioner.embedders.1.model."
    theirs = convert_open_clip_checkpoint(
        oracle, {prefix + k: v for k, v in original.items()}, prefix=prefix
    )
    assert_same_state_dict(theirs, sd)
    inferred = infer_openclip_config(original, drop_last_layer=False, head_dim=HEAD_DIM)
    assert inferred == config
    assert_same_state_dict(openclip_to_diffusers(original, inferred), sd)
    ids = make_ids()
    with torch.no_grad():
        got = load(inferred, openclip_to_diffusers(original, inferred))(ids)
        want = oracle(ids, output_hidden_states=True)
    assert (got.text_embeds - want.text_embeds).abs().max() <= TOL
    assert (got.hidden_states[-2] - want.hidden_states[-2]).abs().max() <= TOL


def test_unknown_keys_pass_through():
    config = tiny_config("gelu", 32, 2)
    original = diffusers_to_openclip(our_names(make_oracle(config)), config)
    extra = {
        "transformer.resblocks.0.attn.extra.weight": torch.zeros(2),
        "transformer.resblocks.7.ln_1.weight": torch.zeros(2),
        "visual.proj": torch.zeros(2),
    }
    out = openclip_to_diffusers({**original, **extra}, config)
    for key, value in extra.items():
        assert out[key] is value
    with pytest.raises(RuntimeError, match="visual.proj"):
        CLIPTextModel(config).load_state_dict(out, strict=True)
