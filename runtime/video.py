"""Streaming video VAE on ONNX Runtime: chunk loops that thread the causal caches, no torch.

`VideoVAE.load(folder)` opens what `latentrt.export.video_export.export_video_vae` wrote.
`iter_decode` yields the frames of one latent chunk at a time (first latent frame -> 1 frame,
each later one -> 4 frames for Wan 2.1), so memory stays flat however long the video is;
`decode` / `encode` collect the whole result. Optional spatial tiling (`Tiling`) runs every
tile with its own caches and blends overlapping tiles with linear ramps, as diffusers'
`AutoencoderKLWan.tiled_decode` / `tiled_encode` do. Frames are written as a PNG sequence,
animated GIF / WebP (pillow) or MP4 (only where an `ffmpeg` binary is on PATH).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from latentrt.errors import BackendError, BundleError, InputError
from latentrt.runtime.ort_backend import OrtComponent

__all__ = [
    "Tiling",
    "VideoVAE",
    "save_animation",
    "save_mp4",
    "save_png_sequence",
    "save_video",
    "to_uint8_frames",
]

MANIFEST = "video_vae.json"
FORMAT_VERSION = 1
GRAPHS = ("encoder_first", "encoder_step", "decoder_first", "decoder_step")
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0


@dataclass(frozen=True)
class Tiling:
    """Spatial tiles in pixels: `size` square tiles every `stride` pixels (diffusers: 256 / 192)."""

    size: int = 256
    stride: int = 192

    def check(self, factor: int) -> None:
        """Refuse tiles that do not fall on whole latent pixels or leave gaps."""
        if self.size % factor or self.stride % factor:
            raise InputError(f"tile size and stride must be multiples of {factor}, got {self}")
        if not 0 < self.stride <= self.size:
            raise InputError(f"tile stride must be in (0, size], got {self}")


Caches = list[np.ndarray]


class VideoVAE:
    """The four chunk graphs of a causal video VAE with their cache rules (`video_vae.json`)."""

    def __init__(self, root: Path, manifest: dict[str, Any], sessions: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.sessions = sessions
        self.z_dim = int(manifest["z_dim"])
        self.in_channels = int(manifest["in_channels"])
        self.temporal_factor = int(manifest["temporal_factor"])
        self.spatial_factor = int(manifest["spatial_factor"])
        self.latents_mean = np.asarray(manifest["latents_mean"], np.float32)
        self.latents_std = np.asarray(manifest["latents_std"], np.float32)
        self._specs = {
            "encoder": manifest["encoder_caches"],
            "decoder": manifest["decoder_caches"],
        }

    @classmethod
    def load(
        cls, folder: str | Path, backend: str = "ort-cpu", threads: int | None = None
    ) -> VideoVAE:
        """Open an exported video VAE folder on an ONNX Runtime backend (`ort-cpu`, `ort-cuda`)."""
        root = Path(folder)
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BundleError(f"{root}: no readable {MANIFEST} ({e})") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{root}: {MANIFEST} format {manifest.get('format_version')!r}, "
                f"this runtime reads {FORMAT_VERSION}"
            )
        if manifest.get("ops") != "standard":
            raise BackendError(
                f"{root}: graphs hold latentrt plugin ops, which ONNX Runtime cannot run; "
                "export with lower=True (latentrt.graphs.lower_plugins)"
            )
        if backend == "ort-cpu":
            providers = ["CPUExecutionProvider"]
        elif backend == "ort-cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise BackendError(f"video VAE backend must be ort-cpu or ort-cuda, got {backend!r}")
        sessions = {}
        for name in GRAPHS:
            try:
                entry = manifest["graphs"][name]
                path = (root / entry["file"]).resolve()
            except KeyError:
                raise BundleError(f"{root}: {MANIFEST} lacks graph {name!r}") from None
            if root.resolve() not in path.parents or not path.is_file():
                raise BundleError(f"{root}: graph file {entry['file']!r} is missing or outside")
            sessions[name] = OrtComponent(name, path, providers, threads)
        return cls(root, manifest, sessions)

    # --- checks -----------------------------------------------------------------------------

    def _expected_caches(self, part: str, batch: int, h: int, w: int) -> list[tuple[int, ...]]:
        out = []
        for s in self._specs[part]:
            num, den = s["scale"]
            out.append((batch, s["channels"], s["frames"], h * num // den, w * num // den))
        return out

    def _check_caches(self, part: str, x: np.ndarray, caches: Sequence[np.ndarray]) -> None:
        expected = self._expected_caches(part, x.shape[0], x.shape[3], x.shape[4])
        if len(caches) != len(expected):
            raise InputError(f"{part} step takes {len(expected)} caches, got {len(caches)}")
        for i, (c, shape) in enumerate(zip(caches, expected, strict=True)):
            if tuple(np.shape(c)) != shape:
                raise InputError(
                    f"{part} cache {i} has shape {tuple(np.shape(c))}, the chunk of shape "
                    f"{x.shape} needs {shape} (caches belong to one video and tile)"
                )

    def _check_latent(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z)
        if z.ndim != 5 or z.shape[1] != self.z_dim or min(z.shape) < 1:
            raise InputError(f"latents must be (B, {self.z_dim}, T, h, w), got {z.shape}")
        if not np.issubdtype(z.dtype, np.floating):
            raise InputError(f"latents must be floating point, got {z.dtype}")
        return z

    def _check_video(self, x: np.ndarray, frames: str = "video") -> np.ndarray:
        x = np.asarray(x)
        tf, sf = self.temporal_factor, self.spatial_factor
        if x.ndim != 5 or x.shape[1] != self.in_channels or min(x.shape) < 1:
            raise InputError(f"video must be (B, {self.in_channels}, T, H, W), got {x.shape}")
        t = x.shape[2]
        if frames == "video" and (t - 1) % tf:
            raise InputError(
                f"this VAE encodes 1 + {tf}k frames (1, {1 + tf}, {1 + 2 * tf}, ...), got {t}"
            )
        if frames == "first" and t != 1:
            raise InputError(f"the first encoder chunk is one frame, got {t}")
        if frames == "step" and t % tf:
            raise InputError(f"a later encoder chunk holds a multiple of {tf} frames, got {t}")
        if x.shape[3] % sf or x.shape[4] % sf:
            raise InputError(f"video height and width must be multiples of {sf}, got {x.shape}")
        return x

    # --- one chunk --------------------------------------------------------------------------

    def decode_first(self, latent: np.ndarray) -> tuple[np.ndarray, Caches]:
        """First latent frame (B, z, 1, h, w) -> (unclamped frames (B, C, 1, H, W), caches)."""
        latent = self._check_latent(latent)
        if latent.shape[2] != 1:
            raise InputError(f"the first decoder chunk is one latent frame, got {latent.shape[2]}")
        out = self.sessions["decoder_first"](latent=latent)
        return out.pop("video"), [out[f"cache_out_{i}"] for i in range(len(out))]

    def decode_step(
        self, latent: np.ndarray, caches: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, Caches]:
        """Later latent frames (B, z, T, h, w) -> (unclamped frames (B, C, 4T, H, W), new caches)."""
        latent = self._check_latent(latent)
        self._check_caches("decoder", latent, caches)
        feeds = {f"cache_in_{i}": c for i, c in enumerate(caches)}
        out = self.sessions["decoder_step"](latent=latent, **feeds)
        return out.pop("video"), [out[f"cache_out_{i}"] for i in range(len(out))]

    def encode_first(self, video: np.ndarray) -> tuple[np.ndarray, Caches]:
        """First frame (B, C, 1, H, W) -> (raw moments (B, 2z, 1, h, w), caches)."""
        video = self._check_video(video, "first")
        out = self.sessions["encoder_first"](video=video)
        return out.pop("moments"), [out[f"cache_out_{i}"] for i in range(len(out))]

    def encode_step(
        self, video: np.ndarray, caches: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, Caches]:
        """Later frames (B, C, 4k, H, W) -> (raw moments (B, 2z, k, h, w), new caches)."""
        video = self._check_video(video, "step")
        self._check_caches("encoder", video, caches)
        feeds = {f"cache_in_{i}": c for i, c in enumerate(caches)}
        out = self.sessions["encoder_step"](video=video, **feeds)
        return out.pop("moments"), [out[f"cache_out_{i}"] for i in range(len(out))]

    # --- loops ------------------------------------------------------------------------------

    def iter_decode(
        self, latents: np.ndarray, chunk: int = 1, tiling: Tiling | None = None
    ) -> Iterator[np.ndarray]:
        """Yield frames (B, C, f, H, W) in [-1, 1] chunk by chunk: 1 frame, then 4 * chunk each."""
        z = self._check_latent(latents)
        if chunk < 1:
            raise InputError(f"chunk must be >= 1 latent frame, got {chunk}")
        sf = self.spatial_factor
        h, w = z.shape[3:]
        tiles = _tile_grid(h, w, tiling, sf, latent_in=True)
        caches: dict[tuple[int, int], Caches] = {}
        bounds = [(0, 1)] + [(t, min(t + chunk, z.shape[2])) for t in range(1, z.shape[2], chunk)]
        for t0, t1 in bounds:
            rows = []
            for i, row in enumerate(tiles):
                outs = []
                for j, (hs, ws) in enumerate(row):
                    part = z[:, :, t0:t1, hs, ws]
                    if t0 == 0:
                        frames, caches[i, j] = self.decode_first(part)
                    else:
                        frames, caches[i, j] = self.decode_step(part, caches[i, j])
                    outs.append(frames)
                rows.append(outs)
            frames = _join_tiles(rows, tiling, sf, (h * sf, w * sf), latent_in=True)
            yield np.clip(frames, -1.0, 1.0)

    def decode(
        self, latents: np.ndarray, chunk: int = 1, tiling: Tiling | None = None
    ) -> np.ndarray:
        """Latents (B, z, T, h, w) to video (B, C, 1 + 4 (T - 1), 8 h, 8 w) in [-1, 1]."""
        return np.concatenate(list(self.iter_decode(latents, chunk, tiling)), axis=2)

    def iter_encode(
        self, video: np.ndarray, chunk: int = 1, tiling: Tiling | None = None
    ) -> Iterator[np.ndarray]:
        """Yield raw moments (B, 2z, t, h, w) chunk by chunk: frame 0, then 4 * chunk frames."""
        x = self._check_video(video)
        if chunk < 1:
            raise InputError(f"chunk must be >= 1 latent frame, got {chunk}")
        sf, step = self.spatial_factor, chunk * self.temporal_factor
        hh, ww = x.shape[3:]
        tiles = _tile_grid(hh, ww, tiling, sf, latent_in=False)
        caches: dict[tuple[int, int], Caches] = {}
        bounds = [(0, 1)] + [(t, min(t + step, x.shape[2])) for t in range(1, x.shape[2], step)]
        for t0, t1 in bounds:
            rows = []
            for i, row in enumerate(tiles):
                outs = []
                for j, (hs, ws) in enumerate(row):
                    part = x[:, :, t0:t1, hs, ws]
                    if t0 == 0:
                        moments, caches[i, j] = self.encode_first(part)
                    else:
                        moments, caches[i, j] = self.encode_step(part, caches[i, j])
                    outs.append(moments)
                rows.append(outs)
            yield _join_tiles(rows, tiling, sf, (hh // sf, ww // sf), latent_in=False)

    def encode(
        self, video: np.ndarray, chunk: int = 1, tiling: Tiling | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Video (B, C, 1 + 4k, H, W) in [-1, 1] to the latent Gaussian's (mean, std)."""
        moments = np.concatenate(list(self.iter_encode(video, chunk, tiling)), axis=2)
        mean, logvar = np.split(moments, 2, axis=1)
        return mean, np.exp(0.5 * np.clip(logvar, _LOGVAR_MIN, _LOGVAR_MAX))

    def normalize(self, mean: np.ndarray) -> np.ndarray:
        """Latent as the diffusion model sees it: (mean - latents_mean) / latents_std per channel."""
        shape = (1, -1, 1, 1, 1)
        return (mean - self.latents_mean.reshape(shape)) / self.latents_std.reshape(shape)

    def denormalize(self, latents: np.ndarray) -> np.ndarray:
        """Inverse of `normalize`: what `decode` takes."""
        shape = (1, -1, 1, 1, 1)
        return latents * self.latents_std.reshape(shape) + self.latents_mean.reshape(shape)


# --- spatial tiling -----------------------------------------------------------------------------


def _tile_grid(
    h: int, w: int, tiling: Tiling | None, sf: int, latent_in: bool
) -> list[list[tuple[slice, slice]]]:
    """Input slices of every tile, row by row (one whole-frame tile without tiling).

    As in diffusers, tiles are used only when the input is larger than one tile.
    """
    if tiling is None:
        return [[(slice(None), slice(None))]]
    tiling.check(sf)
    size, stride = tiling.size, tiling.stride
    if latent_in:
        size, stride = size // sf, stride // sf
    if h <= size and w <= size:
        return [[(slice(None), slice(None))]]
    return [
        [(slice(i, i + size), slice(j, j + size)) for j in range(0, w, stride)]
        for i in range(0, h, stride)
    ]


def _join_tiles(
    rows: list[list[np.ndarray]],
    tiling: Tiling | None,
    sf: int,
    out_hw: tuple[int, int],
    latent_in: bool,
) -> np.ndarray:
    """Blend each tile into its upper and left neighbours (already blended), crop, concatenate."""
    if len(rows) == 1 and len(rows[0]) == 1:
        return rows[0][0]
    assert tiling is not None
    if latent_in:  # outputs in pixels
        size, stride = tiling.size, tiling.stride
    else:  # outputs in latent pixels
        size, stride = tiling.size // sf, tiling.stride // sf
    blend = size - stride
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if i > 0:
                _blend(rows[i - 1][j], tile, blend, axis=-2)
            if j > 0:
                _blend(row[j - 1], tile, blend, axis=-1)
    joined = np.concatenate(
        [np.concatenate([t[..., :stride, :stride] for t in row], axis=-1) for row in rows], axis=-2
    )
    return np.ascontiguousarray(joined[..., : out_hw[0], : out_hw[1]])


def _blend(a: np.ndarray, b: np.ndarray, extent: int, axis: int) -> None:
    """Ramp the first `extent` rows/cols of b from a's last ones (weight of b: k / extent), in place."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return
    r = np.arange(extent, dtype=np.float32) / extent
    if axis == -2:
        r = r[:, None]
        b[..., :extent, :] = a[..., -extent:, :] * (1 - r) + b[..., :extent, :] * r
    else:
        b[..., :extent] = a[..., -extent:] * (1 - r) + b[..., :extent] * r


# --- frame output -------------------------------------------------------------------------------


def to_uint8_frames(video: np.ndarray) -> np.ndarray:
    """Video (B, C, T, H, W) or (C, T, H, W) in [-1, 1] to uint8 frames (B?, T, H, W, C)."""
    v = np.asarray(video)
    if v.ndim not in (4, 5):
        raise InputError(f"video must be (B, C, T, H, W) or (C, T, H, W), got shape {v.shape}")
    v = np.moveaxis(v, -4, -1)
    return np.round(np.clip(v / 2 + 0.5, 0.0, 1.0) * 255.0).astype(np.uint8)


def _frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Each frame (H, W, 3) uint8 of an array (T, H, W, 3) or an iterable of frames/chunks."""
    for f in frames:
        f = np.asarray(f)
        if f.ndim == 4:
            yield from _frames(f)
            continue
        if f.ndim != 3 or f.shape[-1] not in (1, 3, 4) or f.dtype != np.uint8:
            raise InputError(f"frames must be uint8 (H, W, C), got {f.dtype} {f.shape}")
        yield f


def save_png_sequence(frames: Iterable[np.ndarray], folder: str | Path) -> list[Path]:
    """Write frames as `frame_00000.png`, ... into `folder` (created); streams, holds one frame."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(_frames(frames)):
        path = root / f"frame_{i:05d}.png"
        Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f).save(path)
        paths.append(path)
    if not paths:
        raise InputError("no frames to write")
    return paths


def save_animation(frames: Iterable[np.ndarray], path: str | Path, fps: float = 16.0) -> Path:
    """Animated GIF or lossless WebP (by suffix) through pillow, looping forever."""
    path = Path(path)
    fmt = {".gif": "GIF", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"animations are .gif or .webp, got {path.name!r}")
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    images = [Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f) for f in _frames(frames)]
    if not images:
        raise InputError("no frames to write")
    extra = {"lossless": True} if fmt == "WEBP" else {}
    images[0].save(
        path,
        format=fmt,
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        **extra,
    )
    return path


def save_mp4(
    frames: Iterable[np.ndarray], path: str | Path, fps: float = 16.0, ffmpeg: str | None = None
) -> Path:
    """H.264 MP4 through an `ffmpeg` binary (PATH or `ffmpeg=`), fed raw RGB frames by a pipe."""
    exe = ffmpeg or shutil.which("ffmpeg")
    if not exe:
        raise BackendError("writing MP4 needs an ffmpeg binary on PATH; write PNG/GIF/WebP instead")
    it = _frames(frames)
    try:
        first = next(it)
    except StopIteration:
        raise InputError("no frames to write") from None
    h, w = first.shape[:2]
    cmd = [
        exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        str(path),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for f in _chain(first, it):
            if f.shape != first.shape or f.shape[-1] == 4:
                raise InputError(f"MP4 frames must all be (H, W, 3) or (H, W, 1), got {f.shape}")
            proc.stdin.write(np.ascontiguousarray(np.broadcast_to(f, (h, w, 3))).tobytes())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise BackendError(f"ffmpeg failed writing {path}: {err.strip()[-500:]}")
    return Path(path)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def save_video(frames: Iterable[np.ndarray], path: str | Path, fps: float = 16.0) -> Path:
    """By suffix: .gif / .webp animation, .mp4 (ffmpeg), no suffix: a PNG sequence folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".gif", ".webp"):
        return save_animation(frames, path, fps)
    if suffix == ".mp4":
        return save_mp4(frames, path, fps)
    if suffix == "":
        save_png_sequence(frames, path)
        return path
    raise InputError(f"unknown video format {suffix!r}: use a folder, .gif, .webp or .mp4")
