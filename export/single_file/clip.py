"""CLIP text encoder keys of single-file checkpoints, mapped to and from transformers' names.

Two original layouts, always given with their checkpoint prefix already stripped:

* HF-named (SD 1.x `cond_stage_model.transformer.`, SDXL `conditioner.embedders.0.transformer.`):
  transformers' own names, in old files without the `text_model.` level.
* OpenCLIP (SD 2.x `cond_stage_model.model.`, SDXL `conditioner.embedders.1.model.`):
  `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.*` with a fused
  `attn.in_proj_weight` [3W, W], `ln_final`, `text_projection` [W, P] used as `x @ P` (the
  transpose of a Linear weight), plus `logit_scale` and sometimes an `attn_mask` buffer.

Keys a mapping does not recognise pass through unchanged, so the strict loader reports them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from latentrt.errors import CheckpointError

from ..models.clip import CLIPTextConfig, CLIPTextModel

# Values the SD 1.x / 2.x / SDXL text encoder configs carry (the legacy pooling rule, eos 2).
_TOKEN_IDS = {"eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 1}
_LAYER_NORM_EPS = 1e-5

_HF_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
_OC_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")

# OpenCLIP resblock sub-keys <-> transformers encoder-layer sub-keys (fused q/k/v handled apart).
_OC_TO_HF_SUB = {
    f"{oc}.{p}": f"{hf}.{p}"
    for oc, hf in (
        ("ln_1", "layer_norm1"),
        ("ln_2", "layer_norm2"),
        ("attn.out_proj", "self_attn.out_proj"),
        ("mlp.c_fc", "mlp.fc1"),
        ("mlp.c_proj", "mlp.fc2"),
    )
    for p in ("weight", "bias")
}
_HF_TO_OC_SUB = {hf: oc for oc, hf in _OC_TO_HF_SUB.items()}
_OC_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_HF_TOP = {hf: oc for oc, hf in _OC_TOP.items()}
_OC_UNUSED = ("logit_scale", "attn_mask")
_QKV = ("q_proj", "k_proj", "v_proj")


def _require(sd: Mapping[str, Any], key: str, layout: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{layout} CLIP text encoder: key {key!r} is missing")
    return sd[key]


def _count_layers(sd: Mapping[str, Any], pattern: re.Pattern[str], layout: str) -> int:
    indices = {int(m.group(1)) for m in map(pattern.match, sd) if m}
    if not indices:
        raise CheckpointError(f"{layout} CLIP text encoder: no transformer layers found")
    return max(indices) + 1


def _heads(width: int, head_dim: int, layout: str) -> int:
    if width % head_dim:
        raise CheckpointError(
            f"{layout} CLIP text encoder: width {width} is not a multiple of {head_dim}"
        )
    return width // head_dim


def infer_hf_config(
    sd: Mapping[str, Any], *, hidden_act: str = "quick_gelu", head_dim: int = 64
) -> CLIPTextConfig:
    """Config of an HF-named CLIP text encoder from its tensor shapes.

    Activation and head width are not in the shapes: the defaults are OpenAI CLIP ViT-L/14's
    (quick_gelu, 64-wide heads), the encoder of SD 1.x and SDXL.
    """
    sd = hf_to_diffusers(sd)
    vocab, width = _require(sd, "text_model.embeddings.token_embedding.weight", "HF").shape
    proj = sd.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(width),
        intermediate_size=int(
            _require(sd, "text_model.encoder.layers.0.mlp.fc1.weight", "HF").shape[0]
        ),
        num_hidden_layers=_count_layers(sd, _HF_LAYER, "HF"),
        num_attention_heads=_heads(int(width), head_dim, "HF"),
        max_position_embeddings=int(
            _require(sd, "text_model.embeddings.position_embedding.weight", "HF").shape[0]
        ),
        hidden_act=hidden_act,
        layer_norm_eps=_LAYER_NORM_EPS,
        projection_dim=None if proj is None else int(proj.shape[0]),
        **_TOKEN_IDS,
    )


def hf_to_diffusers(sd: Mapping[str, Any], config: CLIPTextConfig | None = None) -> dict[str, Any]:
    """HF-named keys to this project's (transformers') names: add `text_model.`, drop position_ids.

    `config` is accepted for symmetry with `openclip_to_diffusers`; this layout needs none.
    """
    return CLIPTextModel.normalize_state_dict(sd)


def diffusers_to_hf(sd: Mapping[str, Any], config: CLIPTextConfig | None = None) -> dict[str, Any]:
    """transformers-named keys as an SD 1.x / SDXL file stores them (with `text_model.`).

    `config` is accepted for symmetry with `diffusers_to_openclip`; this layout needs none.
    """
    return CLIPTextModel.normalize_state_dict(sd)


def infer_openclip_config(
    sd: Mapping[str, Any], *, drop_last_layer: bool, head_dim: int = 64, hidden_act: str = "gelu"
) -> CLIPTextConfig:
    """Config of an OpenCLIP text tower from its tensor shapes.

    `drop_last_layer=True` gives what diffusers makes of an SD 2.x checkpoint: the last
    resblock and the text projection are left out (SD 2.x reads the penultimate layer, through
    the final layer norm), so the encoder has one layer fewer than the file. SDXL's OpenCLIP
    bigG keeps every layer and its projection (`drop_last_layer=False`). OpenCLIP's ViT-H and
    bigG use exact gelu and 64-wide heads (the defaults).
    """
    vocab, width = _require(sd, "token_embedding.weight", "OpenCLIP").shape
    resblocks = _count_layers(sd, _OC_LAYER, "OpenCLIP")
    layers = resblocks - 1 if drop_last_layer else resblocks
    if layers < 1:
        raise CheckpointError(f"OpenCLIP CLIP text encoder: {resblocks} resblocks leave no layer")
    proj = sd.get("text_projection")
    return CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(width),
        intermediate_size=int(
            _require(sd, "transformer.resblocks.0.mlp.c_fc.weight", "OpenCLIP").shape[0]
        ),
        num_hidden_layers=layers,
        num_attention_heads=_heads(int(width), head_dim, "OpenCLIP"),
        max_position_embeddings=int(_require(sd, "positional_embedding", "OpenCLIP").shape[0]),
        hidden_act=hidden_act,
        layer_norm_eps=_LAYER_NORM_EPS,
        projection_dim=None if proj is None or drop_last_layer else int(proj.shape[1]),
        **_TOKEN_IDS,
    )


def openclip_to_diffusers(sd: Mapping[str, Any], config: CLIPTextConfig) -> dict[str, Any]:
    """OpenCLIP keys to transformers names for a model of `config`.

    Splits `in_proj` into q/k/v and transposes `text_projection`. Dropped on purpose, as
    diffusers does: `logit_scale`, `attn_mask`, the one resblock right after the config's last
    layer (SD 2.x's unused final layer) and `text_projection` when the config has none.
    """
    n = config.num_hidden_layers
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if key in _OC_TOP:
            out[_OC_TOP[key]] = value
            continue
        if key in _OC_UNUSED:
            continue
        if key == "text_projection":
            if config.projection_dim:
                out["text_projection.weight"] = value.T.contiguous()
            continue
        m = _OC_LAYER.match(key)
        if m is None:
            out[key] = value
            continue
        index, sub = int(m.group(1)), m.group(2)
        if index == n:
            continue
        base = f"text_model.encoder.layers.{index}."
        if index > n:
            out[key] = value
        elif sub in _OC_TO_HF_SUB:
            out[base + _OC_TO_HF_SUB[sub]] = value
        elif sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = sub.rsplit("_", 1)[1]
            for name, part in zip(_QKV, value.chunk(3, dim=0), strict=True):
                out[f"{base}self_attn.{name}.{kind}"] = part.clone()
        else:
            out[key] = value
    return out


def diffusers_to_openclip(sd: Mapping[str, Any], config: CLIPTextConfig) -> dict[str, Any]:
    """transformers names to OpenCLIP keys (the inverse of `openclip_to_diffusers`).

    Joins q/k/v into `in_proj`, transposes the projection to [W, P]. Writes only what the
    model holds: no `logit_scale`, `attn_mask` or extra unused resblock.
    """
    sd = CLIPTextModel.normalize_state_dict(sd)
    n = config.num_hidden_layers
    out: dict[str, Any] = {}
    fused: dict[tuple[int, str], dict[str, Any]] = {}
    for key, value in sd.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        m = _HF_LAYER.match(key)
        if m is None or int(m.group(1)) >= n:
            out[key] = value
            continue
        index, sub = int(m.group(1)), m.group(2)
        base = f"transformer.resblocks.{index}."
        parts = sub.split(".")
        if sub in _HF_TO_OC_SUB:
            out[base + _HF_TO_OC_SUB[sub]] = value
        elif len(parts) == 3 and parts[0] == "self_attn" and parts[1] in _QKV:
            fused.setdefault((index, parts[2]), {})[parts[1]] = value
        else:
            out[key] = value
    for (index, kind), parts in fused.items():
        missing = [name for name in _QKV if name not in parts]
        if missing:
            key = f"text_model.encoder.layers.{index}.self_attn.{missing[0]}.{kind}"
            raise CheckpointError(f"CLIP text encoder: key {key!r} is missing (needed for in_proj)")
        out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(
            [parts[name] for name in _QKV], dim=0
        )
    return out
