"""UNet2DCondition: the denoiser of Stable Diffusion 1.x, 2.x (eps and v), inpainting and SDXL.

One network driven by `UNetConfig`. Parameter names are diffusers' `UNet2DConditionModel` names,
so a diffusers state dict loads with `load_state_dict(sd, strict=True)` unchanged.

    sample ─ conv_in ─┬─ down level 0 ─┬─ … ─ down level n-1 ─ mid ─ up level n-1 ─ … ─ up level 0 ─ out
                      └──── skips ─────┴──────────────────────────────────────────┘ (concatenated)

Every resnet adds the timestep embedding; transformer levels attend to the text context.
Shapes: B batch, C channels, H×W latent size, N = H·W tokens, S context tokens, D context width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentrt.errors import InputError
from latentrt.export.models.layers import GroupNormSiLU

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
MID_BLOCK = "UNetMidBlock2DCrossAttn"

# diffusers config keys that change the math: they must hold one of these values here.
_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "dual_cross_attention": (False,),
    "act_fn": ("silu", "swish"),
    "mid_block_type": (MID_BLOCK,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "num_attention_heads": (None,),
    "reverse_transformer_layers_per_block": (None,),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
    "class_embeddings_concat": (False,),
    "addition_embed_type": (None, "text_time"),
}
# Keys that exist in diffusers configs but do not reach the blocks used here (or only training).
_HARMLESS = {
    "dropout",
    "mid_block_only_cross_attention",
    "resnet_skip_time_act",
    "resnet_out_scale_factor",
    "cross_attention_norm",
    "addition_embed_type_num_heads",
}
# Keys read into UNetConfig fields, with diffusers' UNet2DConditionModel defaults.
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN),
    "up_block_types": (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1.0,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "attention_head_dim": 8,
    "use_linear_projection": False,
    "upcast_attention": False,
    "addition_time_embed_dim": None,
    "time_embedding_dim": None,
    "projection_class_embeddings_input_dim": None,
}


def _per_level(value: Any, n: int, key: str) -> tuple[int, ...]:
    """An int or a per-level list from a diffusers config, as a tuple of n ints."""
    if isinstance(value, int):
        return (value,) * n
    values = tuple(value)
    if len(values) != n or not all(isinstance(v, int) for v in values):
        raise NotImplementedError(f"{key}={value!r}: expected an int or {n} ints (one per level)")
    return values


def _compact(values: tuple[int, ...]) -> int | list[int]:
    return values[0] if len(set(values)) == 1 else list(values)


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of one UNet2DCondition (defaults: Stable Diffusion 1.x).

    `num_heads[l]` is the number of attention heads at level l; diffusers stores it under the
    misleading name `attention_head_dim` (SD 1.x: 8 heads; SD 2.x/SDXL: channels // 64 heads).
    The mid block uses the last level's heads and transformer depth.
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
    layers_per_block: int = 2
    num_heads: tuple[int, ...] = (8, 8, 8, 8)
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    cross_attention_dim: int = 768
    use_linear_projection: bool = False
    upcast_attention: bool = False
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    time_embedding_dim: int | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    sample_size: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        for name in ("down_block_types", "up_block_types", "num_heads"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} levels")
        if len(self.transformer_layers_per_block) != n:
            raise ValueError(f"transformer_layers_per_block needs {n} entries")
        for t in self.down_block_types:
            if t not in (CROSS_DOWN, PLAIN_DOWN):
                raise NotImplementedError(f"down_block_types: {t} is not supported")
        for t in self.up_block_types:
            if t not in (CROSS_UP, PLAIN_UP):
                raise NotImplementedError(f"up_block_types: {t} is not supported")
        if self.addition_embed_type not in (None, "text_time"):
            raise NotImplementedError(f"addition_embed_type={self.addition_embed_type!r}")
        if self.addition_embed_type == "text_time" and (
            self.addition_time_embed_dim is None
            or self.projection_class_embeddings_input_dim is None
        ):
            raise ValueError(
                "text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim"
            )
        if self.downsample_padding not in (0, 1):
            raise NotImplementedError(f"downsample_padding={self.downsample_padding}")

    @property
    def num_levels(self) -> int:
        """Number of resolution levels (down blocks)."""
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding fed to every resnet."""
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def skip_channels(self) -> tuple[int, ...]:
        """Channels of each skip connection, in order: the ControlNet down residuals match these."""
        chans = [self.block_out_channels[0]]
        for level, c in enumerate(self.block_out_channels):
            chans += [c] * self.layers_per_block
            if level < self.num_levels - 1:
                chans.append(c)
        return tuple(chans)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> UNetConfig:
        """Read a diffusers `unet/config.json` dict; settings this UNet cannot honour raise."""
        for key in config:
            if key.startswith("_") or key in _HARMLESS or key in _DIFFUSERS_DEFAULTS:
                continue
            if key not in _FIXED:
                raise NotImplementedError(f"unknown UNet config key {key!r}")
            if config[key] not in _FIXED[key]:
                raise NotImplementedError(f"{key}={config[key]!r} is not supported")
        c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if k in _DIFFUSERS_DEFAULTS}}
        only_cross = c["only_cross_attention"]
        if only_cross if isinstance(only_cross, bool) else any(only_cross):
            raise NotImplementedError(f"only_cross_attention={only_cross!r} is not supported")
        if c["norm_num_groups"] is None:
            raise NotImplementedError("norm_num_groups=None is not supported")
        n = len(c["block_out_channels"])
        lpb = c["layers_per_block"]
        if not isinstance(lpb, int):
            if len(set(lpb)) != 1:
                raise NotImplementedError(f"layers_per_block={lpb!r}: levels must be equal")
            lpb = lpb[0]
        cross = c["cross_attention_dim"]
        if not isinstance(cross, int):
            if len(set(cross)) != 1:
                raise NotImplementedError(f"cross_attention_dim={cross!r}: levels must be equal")
            cross = cross[0]
        depth = c["transformer_layers_per_block"]
        if not isinstance(depth, int) and any(not isinstance(d, int) for d in depth):
            raise NotImplementedError(f"transformer_layers_per_block={depth!r} (nested lists)")
        sample_size = c["sample_size"]
        return cls(
            in_channels=c["in_channels"],
            out_channels=c["out_channels"],
            block_out_channels=tuple(c["block_out_channels"]),
            down_block_types=tuple(c["down_block_types"]),
            up_block_types=tuple(c["up_block_types"]),
            layers_per_block=lpb,
            num_heads=_per_level(c["attention_head_dim"], n, "attention_head_dim"),
            transformer_layers_per_block=_per_level(depth, n, "transformer_layers_per_block"),
            cross_attention_dim=cross,
            use_linear_projection=bool(c["use_linear_projection"]),
            upcast_attention=bool(c["upcast_attention"]),
            norm_num_groups=c["norm_num_groups"],
            norm_eps=float(c["norm_eps"]),
            flip_sin_to_cos=bool(c["flip_sin_to_cos"]),
            freq_shift=c["freq_shift"],
            downsample_padding=c["downsample_padding"],
            mid_block_scale_factor=float(c["mid_block_scale_factor"]),
            time_embedding_dim=c["time_embedding_dim"],
            addition_embed_type=config.get("addition_embed_type"),
            addition_time_embed_dim=c["addition_time_embed_dim"],
            projection_class_embeddings_input_dim=c["projection_class_embeddings_input_dim"],
            sample_size=tuple(sample_size) if isinstance(sample_size, list) else sample_size,
        )

    def to_diffusers(self) -> dict[str, Any]:
        """A `config.json` dict that diffusers' UNet2DConditionModel builds the same network from."""
        return {
            "_class_name": "UNet2DConditionModel",
            "sample_size": list(self.sample_size)
            if isinstance(self.sample_size, tuple)
            else self.sample_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "center_input_sample": False,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "down_block_types": list(self.down_block_types),
            "mid_block_type": MID_BLOCK,
            "up_block_types": list(self.up_block_types),
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "downsample_padding": self.downsample_padding,
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "act_fn": "silu",
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "cross_attention_dim": self.cross_attention_dim,
            "transformer_layers_per_block": _compact(self.transformer_layers_per_block),
            "attention_head_dim": _compact(self.num_heads),
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": self.upcast_attention,
            "time_embedding_dim": self.time_embedding_dim,
            "addition_embed_type": self.addition_embed_type,
            "addition_time_embed_dim": self.addition_time_embed_dim,
            "projection_class_embeddings_input_dim": self.projection_class_embeddings_input_dim,
        }


def timestep_embedding(
    t: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000
) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) float32, as in DDPM / diffusers."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # (half,)
    args = t[:, None].float() * freqs[None, :]  # (B, half)
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear on a sinusoidal (or concatenated) embedding."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    """GN-SiLU-conv, + time projection, GN-SiLU-conv, plus a (1x1-projected) shortcut."""

    def __init__(
        self, c_in: int, c_out: int, temb_dim: int, groups: int, eps: float, scale: float = 1.0
    ) -> None:
        super().__init__()
        self.norm1 = GroupNormSiLU(groups, c_in, eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, c_out)
        self.norm2 = GroupNormSiLU(groups, c_out, eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.output_scale_factor = scale

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, H, W); temb: (B, T), already through SiLU
        h = self.conv1(self.norm1(x))
        h = h + self.time_emb_proj(temb)[:, :, None, None]
        h = self.conv2(self.norm2(h))  # dropout sits before conv2 in training only
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Attention(nn.Module):
    """Multi-head (self or cross) attention through scaled_dot_product_attention."""

    def __init__(
        self, dim: int, heads: int, head_dim: int, context_dim: int | None, upcast: bool
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim, self.upcast = heads, head_dim, upcast
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # diffusers' index 1 is dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, N, dim); context: (B, S, D) or None for self-attention
        context = x if context is None else context
        split = (self.heads, self.head_dim)
        q = self.to_q(x).unflatten(-1, split).transpose(1, 2)  # (B, heads, N, head_dim)
        k = self.to_k(context).unflatten(-1, split).transpose(1, 2)  # (B, heads, S, head_dim)
        v = self.to_v(context).unflatten(-1, split).transpose(1, 2)
        dtype = q.dtype
        if self.upcast and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()  # upcast_attention: scores in fp32
        out = F.scaled_dot_product_attention(q, k, v).to(dtype)
        return self.to_out[0](out.transpose(1, 2).flatten(2))  # (B, N, dim)


class GEGLU(nn.Module):
    """proj to 2x inner, then value * gelu(gate)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP with 4x width; keys "0" and "2" mirror diffusers' `net` (1 is dropout)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleDict({"0": GEGLU(dim, dim * mult), "2": nn.Linear(dim * mult, dim)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net["2"](self.net["0"](x))


class BasicTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention to the context, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, upcast: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim, None, upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """GroupNorm, proj_in (1x1 conv or linear), transformer blocks over H·W tokens, proj_out."""

    def __init__(self, channels: int, heads: int, depth: int, cfg: UNetConfig) -> None:
        super().__init__()
        head_dim = channels // heads
        inner = heads * head_dim
        self.linear = cfg.use_linear_projection
        self.norm = GroupNormSiLU(cfg.norm_num_groups, channels, eps=1e-6, act=False)
        self.proj_in = nn.Linear(channels, inner) if self.linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner, heads, head_dim, cfg.cross_attention_dim, cfg.upcast_attention
            )
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if self.linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); context: (B, S, D)
        height, width = x.shape[-2:]
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)  # (B, N, inner)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).unflatten(2, (height, width))  # (B, inner or C, H, W)
        if not self.linear:
            h = self.proj_out(h)
        return h + x


class Downsample2D(nn.Module):
    """3x3 conv with stride 2 (padding 0 means LDM's asymmetric right/bottom pad)."""

    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling to the skip's size (2x, or odd sizes restored), then 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class DownBlock(nn.Module):
    """One encoder level: resnets (each followed by a transformer if attention), then downsample."""

    def __init__(self, level: int, c_in: int, cfg: UNetConfig) -> None:
        super().__init__()
        c = cfg.block_out_channels[level]
        groups, eps, temb = cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList(
            ResnetBlock2D(c_in if i == 0 else c, c, temb, groups, eps) for i in range(n)
        )
        self.attentions = None
        if cfg.down_block_types[level] == CROSS_DOWN:
            heads, depth = cfg.num_heads[level], cfg.transformer_layers_per_block[level]
            self.attentions = nn.ModuleList(Transformer2D(c, heads, depth, cfg) for _ in range(n))
        self.downsamplers = None
        if level < cfg.num_levels - 1:
            self.downsamplers = nn.ModuleList([Downsample2D(c, cfg.downsample_padding)])

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """resnet, transformer, resnet at the lowest resolution."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        c = cfg.block_out_channels[-1]
        args = (c, c, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps)
        scale = cfg.mid_block_scale_factor
        self.resnets = nn.ModuleList([ResnetBlock2D(*args, scale), ResnetBlock2D(*args, scale)])
        heads, depth = cfg.num_heads[-1], cfg.transformer_layers_per_block[-1]
        self.attentions = nn.ModuleList([Transformer2D(c, heads, depth, cfg)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    """One decoder level: (concat skip, resnet, transformer if attention) x (layers + 1), upsample."""

    def __init__(self, index: int, cfg: UNetConfig) -> None:
        super().__init__()
        chans = cfg.block_out_channels[::-1]  # up block i works at level n-1-i
        c, c_prev = chans[index], chans[max(index - 1, 0)]
        c_skip_last = chans[min(index + 1, cfg.num_levels - 1)]  # the previous level's output
        groups, eps, temb = cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim
        n = cfg.layers_per_block + 1
        self.resnets = nn.ModuleList(
            ResnetBlock2D(
                (c_prev if i == 0 else c) + (c_skip_last if i == n - 1 else c), c, temb, groups, eps
            )
            for i in range(n)
        )
        level = cfg.num_levels - 1 - index
        self.attentions = None
        if cfg.up_block_types[index] == CROSS_UP:
            heads, depth = cfg.num_heads[level], cfg.transformer_layers_per_block[level]
            self.attentions = nn.ModuleList(Transformer2D(c, heads, depth, cfg) for _ in range(n))
        self.upsamplers = nn.ModuleList([Upsample2D(c)]) if level > 0 else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
        upsample_size: Sequence[int] | None,
    ) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)  # skips are consumed LIFO
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNet2DCondition(nn.Module):
    """The conditional UNet: predicts noise (or v) from a noisy latent, timestep and text context."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        c0 = cfg.block_out_channels[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, c0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(c0, cfg.time_embed_dim)
        if cfg.addition_embed_type == "text_time":  # SDXL: pooled text + size/crop conditioning
            self.add_embedding = TimestepEmbedding(
                cfg.projection_class_embeddings_input_dim, cfg.time_embed_dim
            )
        chans_in = (c0, *cfg.block_out_channels[:-1])
        self.down_blocks = nn.ModuleList(
            DownBlock(level, chans_in[level], cfg) for level in range(cfg.num_levels)
        )
        self.mid_block = MidBlock(cfg)
        self.up_blocks = nn.ModuleList(UpBlock(i, cfg) for i in range(cfg.num_levels))
        self.conv_norm_out = GroupNormSiLU(cfg.norm_num_groups, c0, cfg.norm_eps)
        self.conv_out = nn.Conv2d(c0, cfg.out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        down_block_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sample (B, C_in, H, W), timestep () or (B,), context (B, S, D) -> (B, C_out, H, W).

        SDXL also takes text_embeds (B, P) and time_ids (B, K). ControlNet residuals, one per
        skip connection (see `UNetConfig.skip_channels`) plus one for the mid block, are added
        to the skips and to the mid-block output.
        """
        cfg = self.config
        if (down_block_residuals is None) != (mid_block_residual is None):
            raise InputError("ControlNet residuals need both down_block_residuals and the mid one")
        if down_block_residuals is not None and len(down_block_residuals) != len(cfg.skip_channels):
            raise InputError(
                f"got {len(down_block_residuals)} down_block_residuals, "
                f"this UNet has {len(cfg.skip_channels)} skip connections"
            )

        # 1. time (and SDXL added) embedding: (B, T)
        t = timestep.reshape(-1).expand(sample.shape[0])
        t_emb = timestep_embedding(
            t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift
        )
        emb = self.time_embedding(t_emb.to(sample.dtype))
        if cfg.addition_embed_type == "text_time":
            if text_embeds is None or time_ids is None:
                raise InputError("this UNet (SDXL text_time) needs text_embeds and time_ids")
            ids_emb = timestep_embedding(
                time_ids.flatten(), cfg.addition_time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift
            ).reshape(text_embeds.shape[0], -1)  # (B, K * addition_time_embed_dim)
            added = torch.cat([text_embeds, ids_emb], dim=-1).to(emb.dtype)
            emb = emb + self.add_embedding(added)
        temb = F.silu(emb)  # every resnet applies SiLU before its time projection: do it once

        # 2. down path, keeping every intermediate as a skip
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, encoder_hidden_states)
            skips += block_skips
        if down_block_residuals is not None:
            skips = [s + r for s, r in zip(skips, down_block_residuals, strict=True)]

        # 3. mid
        x = self.mid_block(x, temb, encoder_hidden_states)
        if mid_block_residual is not None:
            x = x + mid_block_residual

        # 4. up path: each block eats layers_per_block + 1 skips, then upsamples to the next skip
        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[-2:] if skips else None
            x = block(x, block_skips, temb, encoder_hidden_states, size)

        # 5. out
        return self.conv_out(self.conv_norm_out(x))
