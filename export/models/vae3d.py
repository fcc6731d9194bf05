"""Wan 2.1's causal 3D video VAE (`AutoencoderKLWan`) with diffusers' parameter names.

Every temporal convolution is causal: it sees the current and earlier frames only, with zeros
before the first frame. That makes a chunked pass (one latent frame, or 1 + 4k video frames, at
a time) equal to the full-sequence pass, provided each causal conv carries the last frames of
its input from chunk to chunk. Here those caches are explicit tensors:

- `encode` / `decode` run the whole sequence at once (plain causal convs, no caches);
- `encode_chunk` / `decode_chunk` run one chunk and return the caches for the next one. The
  first chunk (`caches=None`) is one frame and starts the caches; later chunks take and return
  them. This is the function the chunked ONNX graphs compute.

The temporal resamplers treat the first frame apart, as Wan does: the encoder's stride-2 time
conv starts at frame 0 and frame 0 also passes straight through; the decoder's time upsampler
passes frame 0 through and doubles every later frame, so 1 + T latent frames decode to
1 + 4T video frames (with two temporal up-samplings).

Every convolution with a time axis goes through `latentrt.export.custom_ops.conv3d`, so the
exporter writes `latentrt::Conv3d` nodes inside `plugin_ops()`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentrt.errors import CheckpointError, InputError
from latentrt.export.custom_ops import conv3d
from latentrt.export.weights import load_state, read_safetensors

CACHE_T = 2  # frames a kernel-3 causal conv needs from the previous chunk
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0

WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class WanVAEConfig:
    """Shape of a Wan 2.1 VAE (diffusers' `AutoencoderKLWan` config keys)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    in_channels: int = 3
    out_channels: int = 3
    latents_mean: tuple[float, ...] = field(default=WAN21_LATENTS_MEAN)
    latents_std: tuple[float, ...] = field(default=WAN21_LATENTS_STD)

    def __post_init__(self) -> None:
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise CheckpointError(
                f"Wan VAE config: temperal_downsample {list(self.temperal_downsample)} needs "
                f"{len(self.dim_mult) - 1} entries (one per downsampling level)"
            )

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame after the first (4 for Wan 2.1)."""
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along each axis (8 for Wan 2.1)."""
        return 2 ** (len(self.dim_mult) - 1)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> WanVAEConfig:
        """Read a diffusers `AutoencoderKLWan` config dict; Wan 2.2's residual VAE is not built."""
        if config.get("is_residual", False):
            raise NotImplementedError(
                "Wan 2.2's residual VAE (is_residual=True: AvgDown3D/DupUp3D shortcuts) is not "
                "implemented; only Wan 2.1's AutoencoderKLWan is"
            )
        if config.get("patch_size") not in (None, 1):
            raise NotImplementedError(
                f"patchified Wan VAEs (patch_size={config['patch_size']}) are not implemented"
            )
        if config.get("attn_scales"):
            raise NotImplementedError(
                f"attn_scales={config['attn_scales']}: encoder attention is not implemented "
                "(Wan 2.1 uses none, and diffusers' encoder cannot run it, so there is no oracle)"
            )
        z = int(config.get("z_dim", 16))
        mean = config.get("latents_mean") or (WAN21_LATENTS_MEAN if z == 16 else ())
        std = config.get("latents_std") or (WAN21_LATENTS_STD if z == 16 else ())
        dec = config.get("decoder_base_dim")
        return cls(
            base_dim=int(config.get("base_dim", 96)),
            decoder_base_dim=None if dec is None else int(dec),
            z_dim=z,
            dim_mult=tuple(int(m) for m in config.get("dim_mult", (1, 2, 4, 4))),
            num_res_blocks=int(config.get("num_res_blocks", 2)),
            temperal_downsample=tuple(
                bool(t) for t in config.get("temperal_downsample", (False, True, True))
            ),
            in_channels=int(config.get("in_channels", 3)),
            out_channels=int(config.get("out_channels", 3)),
            latents_mean=tuple(float(v) for v in mean),
            latents_std=tuple(float(v) for v in std),
        )

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers `config.json` dict (inverse of `from_diffusers`)."""
        return {
            "_class_name": "AutoencoderKLWan",
            "base_dim": self.base_dim,
            "decoder_base_dim": self.decoder_base_dim,
            "z_dim": self.z_dim,
            "dim_mult": list(self.dim_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_scales": [],
            "temperal_downsample": list(self.temperal_downsample),
            "dropout": 0.0,
            "latents_mean": list(self.latents_mean),
            "latents_std": list(self.latents_std),
            "is_residual": False,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "patch_size": None,
            "scale_factor_temporal": self.temporal_factor,
            "scale_factor_spatial": self.spatial_factor,
        }


class Caches:
    """The causal caches of one chunk: the previous chunk's are read in order, new ones collected.

    `incoming=None` marks the first chunk (no history: zeros before frame 0).
    """

    def __init__(self, incoming: Sequence[torch.Tensor] | None = None) -> None:
        self.first = incoming is None
        self._incoming = list(incoming or ())
        self._next = 0
        self.outgoing: list[torch.Tensor] = []

    def take(self) -> torch.Tensor:
        """The next cache of the previous chunk, in the order modules run."""
        if self._next >= len(self._incoming):
            raise InputError(f"too few caches: the model reads more than {len(self._incoming)}")
        t = self._incoming[self._next]
        self._next += 1
        return t

    def put(self, t: torch.Tensor) -> None:
        """Hand a cache to the next chunk."""
        self.outgoing.append(t)

    def finish(self) -> list[torch.Tensor]:
        """The new caches, after checking every incoming one was read."""
        if not self.first and self._next != len(self._incoming):
            raise InputError(f"{len(self._incoming)} caches given, the model reads {self._next}")
        return self.outgoing


def _per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of (B, C, T, H, W)."""
    b = x.shape[0]
    y = module(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, -1)).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time (2 * padding_t frames in front) and symmetrically in space."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.front = 2 * pt
        self.space = (ph, pw)
        if self.front not in (0, self.kernel_size[0] - 1):
            raise ValueError(f"causal padding {self.front} does not match kernel {kernel_size}")

    def forward(self, x: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        ph, pw = self.space
        conv = {"weight": self.weight, "bias": self.bias, "strides": self.stride}
        if caches is None or self.front == 0:
            pads = (self.front, ph, pw, 0, ph, pw)
            return conv3d(x, pads=pads, causal_time=1 if self.front else 0, **conv)
        if caches.first:
            tail = x[:, :, -self.front :]
            caches.put(F.pad(tail, (0, 0, 0, 0, self.front - tail.shape[2], 0)))
            return conv3d(x, pads=(self.front, ph, pw, 0, ph, pw), causal_time=1, **conv)
        xc = torch.cat([caches.take(), x], dim=2)
        caches.put(xc[:, :, -self.front :])
        return conv3d(xc, pads=(0, ph, pw, 0, ph, pw), **conv)


class RMSNorm(nn.Module):
    """L2-normalize over channels, times sqrt(C) and a learned per-channel gain `gamma`."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class _ZeroPadRightBottom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 1, 0, 1))


class _Upsample2x(nn.Module):
    """Nearest 2x (for an integer factor, torch's "nearest" picks what Wan's "nearest-exact" picks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Resample(nn.Module):
    """Spatial 2x up/down per frame, plus Wan's causal temporal 2x for the `*3d` modes."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.resample = nn.Sequential(_ZeroPadRightBottom(), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def _time_up(self, x: torch.Tensor, caches: Caches | None) -> torch.Tensor:
        if caches is None:
            if x.shape[2] == 1:
                return x
            return torch.cat([x[:, :, :1], self._double(self.time_conv(x[:, :, 1:]))], dim=2)
        if caches.first:
            # Frame 0 passes through; the next chunk's time conv starts from zeros.
            caches.put(torch.zeros_like(x[:, :, :1]).repeat(1, 1, CACHE_T, 1, 1))
            return x
        return self._double(self.time_conv(x, caches))

    @staticmethod
    def _double(y: torch.Tensor) -> torch.Tensor:
        """(B, 2C, T, H, W) -> (B, C, 2T, H, W): channel half 0 is each even frame, half 1 odd."""
        y = y.unflatten(1, (2, -1)).permute(0, 2, 3, 1, 4, 5)
        return y.flatten(2, 3)

    def _time_down(self, x: torch.Tensor, caches: Caches | None) -> torch.Tensor:
        if caches is None:
            if x.shape[2] == 1:
                return x
            return torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        if caches.first:
            caches.put(x[:, :, -1:])
            return x
        xc = torch.cat([caches.take(), x], dim=2)
        caches.put(x[:, :, -1:])
        return self.time_conv(xc)

    def forward(self, x: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, caches)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._time_down(x, caches)
        return x


class ResidualBlock(nn.Module):
    """RMSNorm, SiLU, causal conv, twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), caches)
        x = self.conv2(F.silu(self.norm2(x)), caches)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _frame(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, c * 3, -1).permute(0, 1, 3, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.squeeze(1).permute(0, 2, 1).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        return _per_frame(self._frame, x) + x


class MidBlock(nn.Module):
    """resnet, attention, resnet."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(dim)])
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])

    def forward(self, x: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        x = self.resnets[0](x, caches)
        return self.resnets[1](self.attentions[0](x), caches)


class UpBlock(nn.Module):
    """`num_res_blocks + 1` resnets, then an optional upsampler."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, mode: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks + 1)
        )
        self.upsamplers = nn.ModuleList([Resample(out_dim, mode)] if mode else [])

    def forward(self, x: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        for module in (*self.resnets, *self.upsamplers):
            x = module(x, caches)
        return x


class Encoder3d(nn.Module):
    """Video (B, C, T, H, W) to moments (B, 2 z, 1 + (T - 1) / 4, H / 8, W / 8) for Wan 2.1."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        dim = config.base_dim
        dims = [dim * u for u in (1, *config.dim_mult)]
        self.conv_in = CausalConv3d(config.in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        last = len(config.dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != last:
                mode = "downsample3d" if config.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(out_dim, mode))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], config.z_dim * 2, 3, padding=1)

    def forward(self, x: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        x = self.conv_in(x, caches)
        for block in self.down_blocks:
            x = block(x, caches)
        x = self.mid_block(x, caches)
        return self.conv_out(F.silu(self.norm_out(x)), caches)


class Decoder3d(nn.Module):
    """Latent (B, z, T, h, w) to video (B, C, 1 + 4 (T - 1), 8 h, 8 w) for Wan 2.1."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        dim = config.decoder_base_dim or config.base_dim
        mult = config.dim_mult
        dims = [dim * u for u in (mult[-1], *mult[::-1])]
        upsample = tuple(reversed(config.temperal_downsample))
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        last = len(mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                in_dim //= 2  # the previous upsampler halved the width
            mode = None
            if i != last:
                mode = "upsample3d" if upsample[i] else "upsample2d"
            blocks.append(UpBlock(in_dim, out_dim, config.num_res_blocks, mode))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], config.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, caches: Caches | None = None) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x, caches), caches)
        for block in self.up_blocks:
            x = block(x, caches)
        return self.conv_out(F.silu(self.norm_out(x)), caches)


class AutoencoderKLWan(nn.Module):
    """Wan 2.1 video VAE: full-sequence `encode`/`decode` and their chunked, cache-passing forms."""

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        self.config = config
        z = config.z_dim
        self.encoder = Encoder3d(config)
        self.quant_conv = CausalConv3d(z * 2, z * 2, 1)
        self.post_quant_conv = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(config)

    # --- checks -----------------------------------------------------------------------------

    def check_video(self, x: torch.Tensor, first: bool | None = None) -> None:
        """Refuse videos the encoder cannot take: 1 + k*4 frames (Wan 2.1), sides multiple of 8.

        `first=True` / `False` checks one chunk instead: 1 frame, or a multiple of 4 frames.
        """
        tf, sf = self.config.temporal_factor, self.config.spatial_factor
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise InputError(
                f"video must be (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}"
            )
        t, h, w = x.shape[2:]
        if first is None and (t < 1 or (t - 1) % tf):
            raise InputError(f"the Wan VAE encodes 1 + {tf}k frames (1, {1 + tf}, ...), got {t}")
        if first is True and t != 1:
            raise InputError(f"the first chunk is one frame, got {t}")
        if first is False and (t < 1 or t % tf):
            raise InputError(f"a chunk after the first holds a multiple of {tf} frames, got {t}")
        if h % sf or w % sf:
            raise InputError(f"video height and width must be multiples of {sf}, got {h}x{w}")

    def check_latent(self, z: torch.Tensor) -> None:
        """Refuse latents of the wrong rank or channel count."""
        if z.ndim != 5 or z.shape[1] != self.config.z_dim or z.shape[2] < 1:
            raise InputError(
                f"latent must be (B, {self.config.z_dim}, T >= 1, h, w), got {tuple(z.shape)}"
            )

    # --- full sequence ----------------------------------------------------------------------

    def split_moments(self, moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder moments to (mean, logvar), logvar clamped to [-30, 20] as diffusers does."""
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video in [-1, 1] to the latent Gaussian's (mean, logvar), logvar clamped to [-30, 20]."""
        self.check_video(x)
        return self.split_moments(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (unnormalized) to video clamped to [-1, 1]."""
        self.check_latent(z)
        return self.decoder(self.post_quant_conv(z)).clamp(-1.0, 1.0)

    # --- one chunk --------------------------------------------------------------------------

    def encode_chunk(
        self, x: torch.Tensor, caches: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One chunk (1 frame first, then 4k frames) to (raw moments, caches for the next chunk).

        Moments stay raw (logvar unclamped) so that tiles can be blended before `split_moments`.
        """
        state = Caches(caches)
        moments = self.quant_conv(self.encoder(x, state))
        return moments, state.finish()

    def decode_chunk(
        self, z: torch.Tensor, caches: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One latent chunk (1 frame first) to (unclamped frames, caches for the next chunk).

        Clamp to [-1, 1] after any tile blending, as `decode` and diffusers do.
        """
        state = Caches(caches)
        out = self.decoder(self.post_quant_conv(z), state)
        return out, state.finish()

    def encode_chunked(self, x: torch.Tensor, chunk: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` in chunks of 1, then `chunk * 4` frames, threading the caches (same result)."""
        self.check_video(x)
        step = chunk * self.config.temporal_factor
        moments, caches = self.encode_chunk(x[:, :, :1])
        parts = [moments]
        for t in range(1, x.shape[2], step):
            moments, caches = self.encode_chunk(x[:, :, t : t + step], caches)
            parts.append(moments)
        return self.split_moments(torch.cat(parts, dim=2))

    def decode_chunked(self, z: torch.Tensor, chunk: int = 1) -> torch.Tensor:
        """`decode` one latent frame first, then `chunk` at a time, threading the caches."""
        self.check_latent(z)
        out, caches = self.decode_chunk(z[:, :, :1])
        outs = [out]
        for t in range(1, z.shape[2], chunk):
            out, caches = self.decode_chunk(z[:, :, t : t + chunk], caches)
            outs.append(out)
        return torch.cat(outs, dim=2).clamp(-1.0, 1.0)


def load_wan_vae(folder: str | Path, dtype: torch.dtype = torch.float32) -> AutoencoderKLWan:
    """Build and strictly load a Wan VAE from a diffusers folder (`config.json` + safetensors)."""
    root = Path(folder)
    try:
        config = WanVAEConfig.from_diffusers(json.loads((root / "config.json").read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{root}: unreadable Wan VAE config.json ({e})") from None
    weights = root / "diffusion_pytorch_model.safetensors"
    model = AutoencoderKLWan(config).to(dtype)
    load_state(model, read_safetensors(weights), str(weights))
    return model.eval()
