"""AutoencoderKL (the SD 1.x / 2.x / SDXL VAE) with diffusers' parameter names.

`encode(x)` returns the mean and clamped log-variance of the latent Gaussian, `decode(z)` takes
the unscaled latent (the caller divides by `scaling_factor` and adds `shift_factor` first).
Every GroupNorm that diffusers follows with SiLU is a `GroupNormSiLU`, so the exporter can emit
one fused node; the attention's own GroupNorm (no SiLU after it) stays a plain GroupNorm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentrt.errors import CheckpointError

from .layers import GroupNormSiLU

_EPS = 1e-6
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0


@dataclass(frozen=True)
class VAEConfig:
    """Shape of an AutoencoderKL and its latent scaling; `force_upcast` is recorded, not acted on."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    force_upcast: bool = True

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> VAEConfig:
        """Read a diffusers `vae/config.json` dict; other block types or activations are refused."""
        n = len(config.get("block_out_channels", (64,)))
        for key, kind in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            types = tuple(config.get(key, (kind,)))
            if types != (kind,) * n:
                raise CheckpointError(f"VAE config: {key} {types} is not {n} x {kind}")
        if config.get("act_fn", "silu") != "silu":
            raise CheckpointError(f"VAE config: act_fn {config['act_fn']!r} is not 'silu'")
        shift = config.get("shift_factor")
        return cls(
            in_channels=int(config.get("in_channels", 3)),
            out_channels=int(config.get("out_channels", 3)),
            latent_channels=int(config.get("latent_channels", 4)),
            block_out_channels=tuple(int(c) for c in config.get("block_out_channels", (64,))),
            layers_per_block=int(config.get("layers_per_block", 1)),
            norm_num_groups=int(config.get("norm_num_groups", 32)),
            scaling_factor=float(config.get("scaling_factor", 0.18215)),
            shift_factor=0.0 if shift is None else float(shift),
            use_quant_conv=bool(config.get("use_quant_conv", True)),
            use_post_quant_conv=bool(config.get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(config.get("mid_block_add_attention", True)),
            force_upcast=bool(config.get("force_upcast", True)),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers `config.json` dict (inverse of `from_diffusers`; shift 0 is written as None)."""
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor or None,
            "force_upcast": self.force_upcast,
            "use_quant_conv": self.use_quant_conv,
            "use_post_quant_conv": self.use_post_quant_conv,
            "mid_block_add_attention": self.mid_block_add_attention,
        }


class ResnetBlock(nn.Module):
    """norm1+SiLU, conv1, norm2+SiLU, conv2, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = GroupNormSiLU(groups, in_ch, eps=_EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = GroupNormSiLU(groups, out_ch, eps=_EPS)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.norm2(self.conv1(self.norm1(x))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)[:, None]
        out = F.scaled_dot_product_attention(self.to_q(t), self.to_k(t), self.to_v(t))
        out = self.to_out[0](out[:, 0]).transpose(1, 2).reshape(b, c, h, w)
        # Residual second: the sum keeps the attention output's memory layout, as in diffusers, so
        # the next convolution accumulates in the same order (bitwise parity, not just 1e-6).
        return out + x


class MidBlock(nn.Module):
    """resnet, optional attention, resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [SpatialSelfAttention(channels, groups)] if attention else []
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero padding one pixel on the right and bottom (as LDM does)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderBlock(nn.Module):
    """`layers_per_block` resnets, then an optional downsampler."""

    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, down: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(layers)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_ch)] if down else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in (*self.resnets, *self.downsamplers):
            x = module(x)
        return x


class DecoderBlock(nn.Module):
    """`layers_per_block + 1` resnets, then an optional upsampler."""

    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, up: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if up else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in (*self.resnets, *self.upsamplers):
            x = module(x)
        return x


class Encoder(nn.Module):
    """Image [B, in, H, W] to latent moments [B, 2 * latent, H / f, W / f]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch, g = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(ch[max(i - 1, 0)], ch[i], config.layers_per_block, g, i < len(ch) - 1)
            for i in range(len(ch))
        )
        self.mid_block = MidBlock(ch[-1], g, config.mid_block_add_attention)
        self.conv_norm_out = GroupNormSiLU(g, ch[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(self.mid_block(x)))


class Decoder(nn.Module):
    """Latent [B, latent, h, w] to image [B, out, h * f, w * f]."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch, g = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g, config.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            DecoderBlock(ch[max(i - 1, 0)], ch[i], config.layers_per_block + 1, g, i < len(ch) - 1)
            for i in range(len(ch))
        )
        self.conv_norm_out = GroupNormSiLU(g, ch[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(ch[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(x))


class AutoencoderKL(nn.Module):
    """The KL autoencoder: `encode` to latent moments, `decode` from an unscaled latent."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        lat = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * lat, 2 * lat, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(lat, lat, 1) if config.use_post_quant_conv else None

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along each axis (8 for the SD VAEs)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [-1, 1] to (mean, logvar), logvar clamped to [-30, 20] as diffusers does."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent to image in about [-1, 1]."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)
