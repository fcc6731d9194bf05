"""The UNet's original single-file layout (LDM/SGM names) against diffusers' own converter.

`from_diffusers` must be the exact inverse of `diffusers.loaders.single_file_utils.
convert_ldm_unet_checkpoint`, `to_diffusers` the inverse of `from_diffusers`, and
`infer_config` must recover the configuration from tensor shapes alone.
"""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import load_file, save_file

from latentrt.export.models.unet import UNet2DCondition, UNetConfig
from latentrt.export.single_file import unet as sf
from tests.test_unet import (
    CA_DOWN,
    CA_UP,
    CASES,
    DOWN,
    SDXL_BASE,
    TOL,
    UP,
    inputs,
    reference,
    run_reference,
)

PREFIX = "model.diffusion_model."


def _expected_config(ref: UNet2DConditionModel) -> UNetConfig:
    """The config a single file must yield: diffusers' minus what shapes cannot carry."""
    return UNetConfig.from_diffusers({**ref.config, "sample_size": None})


@pytest.mark.parametrize("case", sorted(CASES))
def test_inverse_of_diffusers_conversion(case: str) -> None:
    """diffusers' converter maps our original-layout dict back to the exact diffusers state dict."""
    ref, _ = reference(case)
    sd = ref.state_dict()
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    original = sf.from_diffusers(sd, cfg)
    assert len(original) == len(sd)
    back = convert_ldm_unet_checkpoint(
        {PREFIX + k: v for k, v in original.items()}, dict(ref.config)
    )
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert sf.to_diffusers(original, cfg).keys() == sd.keys()
    assert all(sf.to_diffusers(original, cfg)[k] is sd[k] for k in sd)
    # diffusers' converter leaves names it does not know untouched, so check the names are
    # the original ones and not diffusers' own.
    diffusers_words = ("down_blocks.", "up_blocks.", "mid_block.", ".resnets.", ".attentions.")
    diffusers_words += ("samplers.", "conv_in.", "conv_out.", "conv_norm_out.", "conv_shortcut.")
    diffusers_words += ("time_emb_proj.", "time_embedding.", "add_embedding.")
    resnet_word = re.compile(r"^(?!.*transformer_blocks).*\.(norm|conv)[12]\.")
    assert not [k for k in original if any(w in k for w in diffusers_words) or resnet_word.match(k)]
    assert sf.infer_config(original) == _expected_config(ref)


def test_original_names_of_sd1() -> None:
    """Spot checks against names every SD 1.x checkpoint carries (4 levels, 2 resnets each)."""
    ref, _ = reference("sd1")
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    keys = set(sf.from_diffusers(ref.state_dict(), cfg))
    for name in (
        "time_embed.0.weight",
        "time_embed.2.bias",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.0.bias",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.1.1.norm.weight",
        "input_blocks.1.1.proj_in.weight",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
        "input_blocks.1.1.proj_out.weight",
        "input_blocks.3.0.op.weight",
        "input_blocks.4.0.skip_connection.weight",
        "input_blocks.11.0.out_layers.3.weight",
        "middle_block.0.in_layers.0.weight",
        "middle_block.1.transformer_blocks.0.norm3.weight",
        "middle_block.2.out_layers.3.bias",
        "output_blocks.0.0.skip_connection.weight",
        "output_blocks.2.1.conv.weight",
        "output_blocks.3.1.proj_in.weight",
        "output_blocks.5.2.conv.weight",
        "output_blocks.8.2.conv.bias",
        "output_blocks.11.1.proj_out.weight",
        "out.0.weight",
        "out.2.bias",
    ):
        assert name in keys, name


def test_sdxl_label_embedding_names() -> None:
    ref, _ = reference("sdxl")
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    original = sf.from_diffusers(ref.state_dict(), cfg)
    assert torch.equal(original["label_emb.0.0.weight"], ref.add_embedding.linear_1.weight)
    assert torch.equal(original["label_emb.0.2.bias"], ref.add_embedding.linear_2.bias)
    assert "input_blocks.1.1.proj_in.weight" not in original  # level 0 has no attention
    assert "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight" in original


def test_unknown_keys_pass_through() -> None:
    """Keys outside the UNet's layout come back unchanged, so the strict loader can name them."""
    ref, _ = reference("sd1")
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    extra = torch.zeros(1)
    odd = {
        "input_blocks.1.0.in_layers.9.weight": extra,
        "input_blocks.99.0.in_layers.0.weight": extra,
        "betas": extra,
    }
    assert sf.to_diffusers(odd, cfg) == odd
    assert sf.from_diffusers({"down_blocks.0.resnets.0.bogus.weight": extra}, cfg) == {
        "down_blocks.0.resnets.0.bogus.weight": extra
    }


@pytest.mark.parametrize("case", ["sd2", "sdxl"])
def test_single_file_round_trip_outputs(case: str, tmp_path) -> None:
    """Weights written as an original single file, read back with an inferred config: same output."""
    ref, _ = reference(case)
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    original = sf.from_diffusers(ref.state_dict(), cfg)
    path = tmp_path / "model.safetensors"
    save_file({PREFIX + k: v.contiguous() for k, v in original.items()}, path)
    loaded = {k.removeprefix(PREFIX): v for k, v in load_file(path).items()}
    inferred = sf.infer_config(loaded)
    model = UNet2DCondition(inferred).eval()
    model.load_state_dict(sf.to_diffusers(loaded, inferred), strict=True)
    args = inputs(case, 24, 16)
    with torch.no_grad():
        got = model(**args)
    assert (got - run_reference(ref, args)).abs().max().item() <= TOL


# Published configurations (diffusers' unet/config.json values), built on the meta device.
PUBLISHED = {
    "sd15": dict(cross_attention_dim=768),
    "sd15-inpaint": dict(cross_attention_dim=768, in_channels=9),
    "sd21-v": dict(
        attention_head_dim=[5, 10, 20, 20],
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
    ),
    "sdxl-base": SDXL_BASE,
    "sdxl-refiner": dict(
        block_out_channels=[384, 768, 1536, 1536],
        down_block_types=[DOWN, CA_DOWN, CA_DOWN, DOWN],
        up_block_types=[UP, CA_UP, CA_UP, UP],
        attention_head_dim=[6, 12, 24, 24],
        transformer_layers_per_block=4,
        cross_attention_dim=1280,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2560,
    ),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_models(name: str) -> None:
    """Full-size layouts (meta tensors): diffusers' converter inverts ours; shapes give the config."""
    with torch.device("meta"):
        ref = UNet2DConditionModel(**PUBLISHED[name])
    sd = ref.state_dict()
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    original = sf.from_diffusers(sd, cfg)
    back = convert_ldm_unet_checkpoint(
        {PREFIX + k: v for k, v in original.items()}, dict(ref.config)
    )
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)
    inferred = sf.infer_config(original)
    if name == "sdxl-refiner":
        # The refiner's config gives its attention-free levels depth 4; shapes cannot show a
        # depth where there is no transformer, and inference uses 1: the network is the same.
        assert inferred.transformer_layers_per_block == (1, 4, 4, 4)
        cfg = UNetConfig.from_diffusers(
            {**ref.config, "transformer_layers_per_block": [1, 4, 4, 4]}
        )
    assert inferred == UNetConfig.from_diffusers({**cfg.to_diffusers(), "sample_size": None})
    with torch.device("meta"):
        ours = UNet2DCondition(inferred)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sd.items()}


def test_unknown_context_width_is_refused() -> None:
    """Heads cannot be read from shapes: an unknown family is refused, not guessed."""
    with torch.device("meta"):
        ref = UNet2DConditionModel(
            block_out_channels=(32, 64),
            down_block_types=(CA_DOWN, DOWN),
            up_block_types=(UP, CA_UP),
            cross_attention_dim=512,
        )
    cfg = UNetConfig.from_diffusers(dict(ref.config))
    with pytest.raises(NotImplementedError, match="context width 512"):
        sf.infer_config(sf.from_diffusers(ref.state_dict(), cfg))
