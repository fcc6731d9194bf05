"""The UNet in original single-file checkpoints (CompVis LDM / Stability SGM `openaimodel` names).

Keys here carry no `model.diffusion_model.` prefix (the checkpoint loader strips it).

    original                                   diffusers
    time_embed.0 / .2                          time_embedding.linear_1 / linear_2
    label_emb.0.0 / .0.2 (SDXL)                add_embedding.linear_1 / linear_2
    input_blocks.0.0                           conv_in
    input_blocks.N.0 (resnet) / .N.1 (attn)    down_blocks.l.resnets.j / attentions.j
    input_blocks.N.0.op                        down_blocks.l.downsamplers.0.conv
    middle_block.0 / .1 / .2                   mid_block.resnets.0 / attentions.0 / resnets.1
    output_blocks.N.0 / .N.1                   up_blocks.i.resnets.j / attentions.j
    output_blocks.N.{1|2}.conv                 up_blocks.i.upsamplers.0.conv (after the attn, if any)
    out.0 / out.2                              conv_norm_out / conv_out
    resnet in_layers.0/2, emb_layers.1,        norm1/conv1, time_emb_proj,
           out_layers.0/3, skip_connection     norm2/conv2, conv_shortcut

Inside a transformer (norm, proj_in, transformer_blocks.K.attn1.to_q, …, proj_out) the names are
the same in both layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from latentrt.export.models.unet import (
    CROSS_DOWN,
    CROSS_UP,
    PLAIN_DOWN,
    PLAIN_UP,
    UNetConfig,
)

_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_RESNET_BACK = {v: k for k, v in _RESNET.items()}

# SDXL conditions on 256-dim sinusoidal embeddings of its size/crop ids (fixed in SGM).
SDXL_TIME_EMBED_DIM = 256


def _module_pairs(cfg: UNetConfig) -> list[tuple[str, str, bool]]:
    """(original prefix, diffusers prefix, is_resnet) for every module with weights."""
    pairs = [
        ("time_embed.0", "time_embedding.linear_1", False),
        ("time_embed.2", "time_embedding.linear_2", False),
        ("input_blocks.0.0", "conv_in", False),
    ]
    if cfg.addition_embed_type == "text_time":
        pairs += [
            ("label_emb.0.0", "add_embedding.linear_1", False),
            ("label_emb.0.2", "add_embedding.linear_2", False),
        ]
    n, layers = cfg.num_levels, cfg.layers_per_block
    idx = 1
    for level in range(n):
        for j in range(layers):
            pairs.append((f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", True))
            if cfg.down_block_types[level] == CROSS_DOWN:
                pairs.append(
                    (f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}", False)
                )
            idx += 1
        if level < n - 1:
            pairs.append(
                (f"input_blocks.{idx}.0.op", f"down_blocks.{level}.downsamplers.0.conv", False)
            )
            idx += 1
    pairs += [
        ("middle_block.0", "mid_block.resnets.0", True),
        ("middle_block.1", "mid_block.attentions.0", False),
        ("middle_block.2", "mid_block.resnets.1", True),
    ]
    idx = 0
    for i in range(n):
        attn = cfg.up_block_types[i] == CROSS_UP
        for j in range(layers + 1):
            pairs.append((f"output_blocks.{idx}.0", f"up_blocks.{i}.resnets.{j}", True))
            if attn:
                pairs.append((f"output_blocks.{idx}.1", f"up_blocks.{i}.attentions.{j}", False))
            if j == layers and i < n - 1:
                up = f"output_blocks.{idx}.{2 if attn else 1}.conv"
                pairs.append((up, f"up_blocks.{i}.upsamplers.0.conv", False))
            idx += 1
    pairs += [("out.0", "conv_norm_out", False), ("out.2", "conv_out", False)]
    return pairs


def _rename(key: str, table: Mapping[str, tuple[str, bool]], inner: Mapping[str, str]) -> str:
    """Map a key through the longest matching module prefix; unknown keys come back unchanged."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            new_prefix, is_resnet = table[prefix]
            rest = ".".join(parts[cut:])
            if is_resnet:
                head, _, leaf = rest.rpartition(".")
                if head not in inner:
                    return key
                rest = f"{inner[head]}.{leaf}"
            return f"{new_prefix}.{rest}"
    return key


def to_diffusers(sd: Mapping[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Original (LDM/SGM) UNet keys -> diffusers keys; unrecognized keys pass through unchanged."""
    table = {orig: (diff, res) for orig, diff, res in _module_pairs(config)}
    return {_rename(k, table, _RESNET): v for k, v in sd.items()}


def from_diffusers(sd: Mapping[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Diffusers UNet keys -> original (LDM/SGM) keys: the exact inverse of `to_diffusers`."""
    table = {diff: (orig, res) for orig, diff, res in _module_pairs(config)}
    return {_rename(k, table, _RESNET_BACK): v for k, v in sd.items()}


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct integer indices captured by `pattern` over the keys."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_config(sd: Mapping[str, torch.Tensor]) -> UNetConfig:
    """Rebuild the UNetConfig of an original-layout UNet from its tensor shapes alone.

    Heads are not visible in shapes; they follow the published families: context width 768 ->
    SD 1.x (8 heads), 1024 -> SD 2.x (64-dim heads, upcast attention), 2048 or 1280 with
    `label_emb` -> SDXL base or refiner (64-dim heads, text_time conditioning).
    """
    if "input_blocks.0.0.weight" not in sd or "out.2.weight" not in sd:
        raise ValueError("not an LDM UNet: input_blocks.0.0.weight or out.2.weight is missing")
    conv_in = sd["input_blocks.0.0.weight"]  # (C0, C_in, 3, 3)
    time_dim = sd["time_embed.0.weight"].shape[0]  # Linear weights are (out, in)

    # Walk the input blocks: resnets (with or without a transformer) until a downsampler `op`.
    n_in = _count(sd, r"input_blocks\.(\d+)\.")
    channels, attention, depth, layers = [], [], [], []
    level_layers, level_attn, level_depth = 0, set(), set()
    for idx in range(1, n_in):
        if f"input_blocks.{idx}.0.op.weight" in sd:
            layers.append(level_layers)
            attention.append(level_attn)
            depth.append(level_depth)
            level_layers, level_attn, level_depth = 0, set(), set()
            continue
        if level_layers == 0:
            channels.append(sd[f"input_blocks.{idx}.0.out_layers.3.weight"].shape[0])
        level_layers += 1
        has_attn = f"input_blocks.{idx}.1.proj_in.weight" in sd
        level_attn.add(has_attn)
        if has_attn:
            level_depth.add(_count(sd, rf"input_blocks\.{idx}\.1\.transformer_blocks\.(\d+)\."))
    layers.append(level_layers)
    attention.append(level_attn)
    depth.append(level_depth)
    if len(set(layers)) != 1:
        raise NotImplementedError(f"resnets per level differ: {layers}")
    if any(len(a) != 1 for a in attention) or any(len(d) > 1 for d in depth):
        raise NotImplementedError("attention or transformer depth differs inside one level")
    n = len(channels)
    down_attn = [a.pop() for a in attention]

    up_attn = []
    for i in range(n):
        first = i * (layers[0] + 1)
        up_attn.append(f"output_blocks.{first}.1.proj_in.weight" in sd)
        if up_attn[-1]:
            level_depth = _count(sd, rf"output_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
            level = n - 1 - i
            if depth[level] and depth[level] != {level_depth}:
                raise NotImplementedError(f"level {level}: up and down transformer depths differ")
            depth[level] = {level_depth}
    mid_depth = _count(sd, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    if mid_depth == 0:
        raise NotImplementedError("a UNet without a mid-block transformer is not supported")
    if depth[-1] and depth[-1] != {mid_depth}:
        raise NotImplementedError("mid block and last level have different transformer depths")
    depths = [d.pop() if d else 1 for d in depth]
    depths[-1] = mid_depth

    proj_in = sd["middle_block.1.proj_in.weight"]  # linear (C, C) or 1x1 conv (C, C, 1, 1)
    context = sd["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    text_time = "label_emb.0.0.weight" in sd
    if "label_emb.weight" in sd or (text_time and context not in (2048, 1280)):
        raise NotImplementedError("class-label conditioning (label_emb) outside SDXL")
    if context == 768 and not text_time:
        heads, upcast = (8,) * n, False
    elif context == 1024 and not text_time:
        heads, upcast = tuple(c // 64 for c in channels), True
    elif text_time:
        heads, upcast = tuple(c // 64 for c in channels), False
    else:
        raise NotImplementedError(f"context width {context}: no known family to take heads from")

    return UNetConfig(
        in_channels=conv_in.shape[1],
        out_channels=sd["out.2.weight"].shape[0],
        block_out_channels=tuple(channels),
        down_block_types=tuple(CROSS_DOWN if a else PLAIN_DOWN for a in down_attn),
        up_block_types=tuple(CROSS_UP if a else PLAIN_UP for a in up_attn),
        layers_per_block=layers[0],
        num_heads=heads,
        transformer_layers_per_block=tuple(depths),
        cross_attention_dim=context,
        use_linear_projection=proj_in.ndim == 2,
        upcast_attention=upcast,
        time_embedding_dim=None if time_dim == 4 * conv_in.shape[0] else time_dim,
        addition_embed_type="text_time" if text_time else None,
        addition_time_embed_dim=SDXL_TIME_EMBED_DIM if text_time else None,
        projection_class_embeddings_input_dim=(
            sd["label_emb.0.0.weight"].shape[1] if text_time else None
        ),
    )
