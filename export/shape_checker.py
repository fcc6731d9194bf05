"""Judge a generated image for meaning: which colour and which shape is the foreground object?

Pixel statistics find the background (the median colour of the border ring) and the foreground
(pixels far from it); the foreground's colour is the majority of its pixels' nearest palette
colours. Its silhouette, cropped to its bounding box and resized to a small square, is matched
against per-shape mean silhouettes fitted on images from `shapes_data` (a nearest-centroid
classifier trained on the synthetic data). numpy and pillow only, so the torch-free runtime's
output can be judged too.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from latentrt.errors import InputError
from latentrt.export import shapes_data

TEMPLATE = 16  # side of the resized silhouette
BORDER = 2  # width of the ring that defines the background
FOREGROUND_DISTANCE = 40.0  # RGB distance from the background that makes a pixel foreground
MIN_PIXELS = 12  # a foreground smaller than this is "no object"
_PALETTE_NAMES = list(shapes_data.COLORS)
_PALETTE = np.array([shapes_data.COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Verdict:
    """What the checker sees in one image; `shape`/`color` are None when there is no object."""

    color: str | None
    shape: str | None
    background: str
    color_share: float  # fraction of foreground pixels of the dominant colour
    pixels: int  # foreground pixels after cleaning

    def matches(self, color: str, shape: str) -> bool:
        """True when the dominant foreground colour and the shape are the ones asked for."""
        return self.color == color and self.shape == shape


def _nearest_color(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each of (N, 3) pixels."""
    d = ((pixels[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(-1)
    return d.argmin(-1)


def _as_uint8_rgb(image) -> np.ndarray:
    """PIL image or (H, W, 3) array (uint8, or float in [0, 1]) -> float32 (H, W, 3) in 0..255."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    return np.clip(arr.astype(np.float32) * 255.0, 0.0, 255.0)


def foreground(image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cleaned foreground mask (H, W) bool, background RGB, the image as float RGB)."""
    rgb = _as_uint8_rgb(image)
    ring = np.concatenate(
        [
            rgb[:BORDER].reshape(-1, 3),
            rgb[-BORDER:].reshape(-1, 3),
            rgb[:, :BORDER].reshape(-1, 3),
            rgb[:, -BORDER:].reshape(-1, 3),
        ]
    )
    bg = np.median(ring, axis=0)
    mask = np.sqrt(((rgb - bg) ** 2).sum(-1)) > FOREGROUND_DISTANCE
    # Majority filter over the 3x3 neighbourhood: drops speckles, fills pinholes.
    padded = np.pad(mask, 1).astype(np.int32)
    h, w = mask.shape
    votes = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3))
    return votes >= 5, bg, rgb


def silhouette(mask: np.ndarray) -> np.ndarray | None:
    """The mask cropped to its bounding box, resized to TEMPLATE x TEMPLATE, as floats in [0, 1]."""
    ys, xs = np.nonzero(mask)
    if ys.size < MIN_PIXELS:
        return None
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
    small = Image.fromarray(crop).resize((TEMPLATE, TEMPLATE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).reshape(-1) / 255.0


class ShapeChecker:
    """Nearest-centroid shape classifier over silhouettes, plus palette colour statistics."""

    def __init__(self, centroids: np.ndarray, shapes: tuple[str, ...]) -> None:
        self.centroids = centroids  # (num shapes, TEMPLATE**2)
        self.shapes = shapes

    @classmethod
    def fit(cls, per_shape: int = 60, seed: int = 1234) -> ShapeChecker:
        """Fit the mean silhouette of each shape on `per_shape` random synthetic scenes."""
        rng = np.random.default_rng(seed)
        sums = np.zeros((len(shapes_data.SHAPES), TEMPLATE * TEMPLATE), np.float64)
        for k, shape in enumerate(shapes_data.SHAPES):
            for _ in range(per_shape):
                scene = dataclasses.replace(shapes_data.random_scene(rng), shape=shape)
                sil = silhouette(foreground(shapes_data.render(scene))[0])
                if sil is None:
                    raise RuntimeError(f"a synthetic {shape} has no foreground: {scene}")
                sums[k] += sil
        return cls((sums / per_shape).astype(np.float32), shapes_data.SHAPES)

    def classify(self, image) -> Verdict:
        """The dominant foreground colour and the shape of one image (PIL or array)."""
        mask, bg, rgb = foreground(image)
        background = _PALETTE_NAMES[int(_nearest_color(bg[None])[0])]
        sil = silhouette(mask)
        if sil is None:
            return Verdict(None, None, background, 0.0, int(mask.sum()))
        labels = _nearest_color(rgb[mask])
        counts = np.bincount(labels, minlength=len(_PALETTE_NAMES))
        color = _PALETTE_NAMES[int(counts.argmax())]
        dist = ((self.centroids - sil[None]) ** 2).sum(-1)
        return Verdict(
            color,
            self.shapes[int(dist.argmin())],
            background,
            float(counts.max() / labels.size),
            int(mask.sum()),
        )

    def classify_batch(self, images) -> list[Verdict]:
        """`classify` for each image of a list or an (N, H, W, 3) array."""
        return [self.classify(im) for im in images]


@functools.lru_cache(maxsize=1)
def default_checker() -> ShapeChecker:
    """The checker fitted with the default settings, built once per process."""
    return ShapeChecker.fit()


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(colour, shape) named by a prompt such as "a red circle on a blue background"."""
    words = prompt.replace(",", " ").split()
    shape = next((w for w in words if w in shapes_data.SHAPES), None)
    color = next((w for w in words if w in shapes_data.COLORS), None)
    if shape is None or color is None:
        raise InputError(f"prompt {prompt!r} names no palette colour and shape")
    return color, shape
