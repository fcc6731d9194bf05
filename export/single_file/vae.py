"""AutoencoderKL keys of single-file (CompVis/LDM) checkpoints, mapped to and from diffusers names.

Keys are given without their `first_stage_model.` prefix. The LDM layout differs from
diffusers' in names (`down.N.block.M`, `mid.block_1`, `mid.attn_1`, `norm_out`,
`nin_shortcut`), in the attention projections (1x1 convs [C, C, 1, 1] instead of Linear
[C, C]) and in the decoder's order: LDM's `decoder.up.N` is diffusers' `up_blocks[n - 1 - N]`.
Keys a mapping does not recognise pass through unchanged, so the strict loader reports them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from latentrt.errors import CheckpointError

from ..models.vae import AutoencoderKL, VAEConfig

_RESNET = {n: n for n in ("norm1", "conv1", "norm2", "conv2")} | {"conv_shortcut": "nin_shortcut"}
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _ldm_name(key: str, n: int) -> str:
    """The LDM name of one parameter of `AutoencoderKL` (diffusers naming), for n resolutions."""
    parts = key.split(".")
    side, part, param = parts[0], parts[1] if len(parts) > 2 else "", parts[-1]
    if side in ("quant_conv", "post_quant_conv") or part in ("conv_in", "conv_out"):
        return key
    if part == "conv_norm_out":
        return f"{side}.norm_out.{param}"
    if part == "down_blocks":
        if parts[3] == "resnets":
            return f"encoder.down.{parts[2]}.block.{parts[4]}.{_RESNET[parts[5]]}.{param}"
        return f"encoder.down.{parts[2]}.downsample.conv.{param}"
    if part == "up_blocks":
        level = n - 1 - int(parts[2])
        if parts[3] == "resnets":
            return f"decoder.up.{level}.block.{parts[4]}.{_RESNET[parts[5]]}.{param}"
        return f"decoder.up.{level}.upsample.conv.{param}"
    if parts[2] == "resnets":
        return f"{side}.mid.block_{int(parts[3]) + 1}.{_RESNET[parts[4]]}.{param}"
    return f"{side}.mid.attn_1.{_ATTN['.'.join(parts[4:-1])]}.{param}"


def key_map(config: VAEConfig) -> dict[str, str]:
    """diffusers name -> LDM name for every parameter of an AutoencoderKL of `config`."""
    with torch.device("meta"):
        names = list(AutoencoderKL(config).state_dict())
    n = len(config.block_out_channels)
    return {name: _ldm_name(name, n) for name in names}


def _is_attn_projection(diffusers_key: str) -> bool:
    return ".mid_block.attentions.0.to_" in diffusers_key and diffusers_key.endswith(".weight")


def to_diffusers(sd: Mapping[str, Any], config: VAEConfig) -> dict[str, Any]:
    """LDM VAE keys (prefix stripped) to diffusers names; attention 1x1 convs become Linear."""
    names = {ldm: diffusers for diffusers, ldm in key_map(config).items()}
    out: dict[str, Any] = {}
    for key, value in sd.items():
        new = names.get(key, key)
        if _is_attn_projection(new) and value.ndim > 2:
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


def from_diffusers(sd: Mapping[str, Any], config: VAEConfig) -> dict[str, Any]:
    """diffusers VAE names to LDM keys (no prefix); attention Linear weights become 1x1 convs."""
    names = key_map(config)
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if _is_attn_projection(key) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[names.get(key, key)] = value
    return out


def _require(sd: Mapping[str, Any], key: str) -> Any:
    if key not in sd:
        raise CheckpointError(f"LDM VAE: key {key!r} is missing")
    return sd[key]


def infer_config(
    sd: Mapping[str, Any], *, norm_num_groups: int = 32, scaling_factor: float = 0.18215
) -> VAEConfig:
    """VAEConfig of an LDM-named VAE from its tensor shapes.

    Group count and latent scaling are not in the shapes: the defaults are those of the
    SD 1.x/2.x VAE (SDXL's scaling factor is 0.13025).
    """
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
    if not levels:
        raise CheckpointError("LDM VAE: no encoder.down.N blocks found")
    channels = tuple(
        int(_require(sd, f"encoder.down.{i}.block.0.conv1.weight").shape[0])
        for i in range(len(levels))
    )
    blocks = {int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block.")}
    return VAEConfig(
        in_channels=int(_require(sd, "encoder.conv_in.weight").shape[1]),
        out_channels=int(_require(sd, "decoder.conv_out.weight").shape[0]),
        latent_channels=int(_require(sd, "decoder.conv_in.weight").shape[1]),
        block_out_channels=channels,
        layers_per_block=max(blocks) + 1,
        norm_num_groups=norm_num_groups,
        scaling_factor=scaling_factor,
        shift_factor=0.0,
        use_quant_conv="quant_conv.weight" in sd,
        use_post_quant_conv="post_quant_conv.weight" in sd,
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in sd,
    )
