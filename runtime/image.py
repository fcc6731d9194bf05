"""Image I/O: PIL/numpy conversion as diffusers does it, and PNGs with generation parameters.

The parameters travel in a PNG `parameters` text chunk in the A1111 format that image
browsers, ComfyUI and civitai already read:

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 30, Sampler: Euler, Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, ...
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from latentrt.errors import InputError
from latentrt.runtime.atomic import publish_file

# A1111's display names for the samplers both tools have.
A1111_SAMPLER_NAMES = {
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS",
    "dpm_fast": "DPM fast",
    "dpm_adaptive": "DPM adaptive",
    "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "ddim": "DDIM",
    "lcm": "LCM",
    "uni_pc": "UniPC",
    "restart": "Restart",
}


def to_array(image, what: str = "image") -> np.ndarray:
    """PIL image or array (H, W, C) uint8 / float in [0, 1] -> float32 (H, W, C) in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise InputError(f"{what} must be (H, W, C), got shape {image.shape}")
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        arr = arr.astype(np.float32)
        if arr.min() < 0 or arr.max() > 1:
            raise InputError(f"{what} as floats must lie in [0, 1]")
        return arr
    raise InputError(f"{what} must be a PIL image or a numpy array, got {type(image).__name__}")


def preprocess_image(image, width: int, height: int) -> np.ndarray:
    """Image -> (1, 3, H, W) float32 in [-1, 1], resized to (width, height) with Lanczos if needed."""
    if isinstance(image, Image.Image) and image.size != (width, height):
        image = image.convert("RGB").resize((width, height), Image.LANCZOS)
    arr = to_array(image)
    if arr.shape[:2] != (height, width):
        raise InputError(f"image is {arr.shape[1]}x{arr.shape[0]}, expected {width}x{height}")
    if arr.shape[2] != 3:
        raise InputError(f"image must have 3 channels, got {arr.shape[2]}")
    return (arr.transpose(2, 0, 1)[None] * 2.0 - 1.0).astype(np.float32)


def preprocess_mask(mask, width: int, height: int) -> np.ndarray:
    """Mask -> (1, 1, H, W) float32 of 0/1 (1 = repaint), binarized at 0.5 like diffusers."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    arr = to_array(mask, "mask")
    if arr.shape[:2] != (height, width):
        raise InputError(
            f"mask is {arr.shape[1]}x{arr.shape[0]} but the image is {width}x{height}; "
            "they must be the same size"
        )
    arr = arr.mean(axis=2) if arr.shape[2] > 1 else arr[..., 0]
    return (arr >= 0.5).astype(np.float32)[None, None]


def postprocess(image: np.ndarray) -> np.ndarray:
    """Decoder output (B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float32 in [0, 1]."""
    out = np.multiply(image, np.float32(0.5), dtype=np.float32)  # one new array, then in place
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out.transpose(0, 2, 3, 1)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """(B, H, W, 3) in [0, 1] -> PIL images, rounding as diffusers does."""
    return [Image.fromarray(im) for im in (images * 255).round().astype(np.uint8)]


def format_parameters(
    prompt: str,
    negative_prompt: str,
    *,
    steps: int,
    sampler: str,
    scheduler: str,
    guidance: float,
    seed: int,
    width: int,
    height: int,
    model_hash: str,
    model_name: str = "",
    extra: dict | None = None,
) -> str:
    """The A1111 `parameters` text for one image."""
    fields = {
        "Steps": steps,
        "Sampler": A1111_SAMPLER_NAMES.get(sampler, sampler),
        "Schedule type": scheduler,
        "CFG scale": f"{guidance:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash[:10],
    }
    if model_name:
        fields["Model"] = model_name
    fields |= extra or {}
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def save_png(image: Image.Image, path: str | Path, parameters: str) -> Path:
    """Write a PNG with a `parameters` text chunk, atomically (temp file, then rename)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: output must be a .png file")
    if not path.parent.is_dir():
        raise InputError(f"{path}: directory {path.parent} does not exist")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"{path}: cannot write there ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        publish_file(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write there ({e.strerror})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
