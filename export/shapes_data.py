"""Synthetic captioned images of one coloured shape on a plain background, drawn with pillow.

The embedded default model is trained on these (no data can be downloaded), and the checker in
`shape_checker` judges generated images against the same palette and silhouettes. A scene is a
shape, its colour, a background colour, a size and a position on a 3x3 grid; its caption names
them, e.g. "a small red circle on a blue background, top left". `caption(scene, rng)` leaves the
optional parts out at random (P_*); `caption_parts` chooses them explicitly.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond")
# Saturated, well-separated colours: the checker names a pixel by its nearest palette entry.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (245, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
# Grid cell (column, row) -> the words a caption uses for it.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left",
    (1, 0): "top",
    (2, 0): "top right",
    (0, 1): "left",
    (1, 1): "center",
    (2, 1): "right",
    (0, 2): "bottom left",
    (1, 2): "bottom",
    (2, 2): "bottom right",
}
RESOLUTION = 64
MIN_SIZE, MAX_SIZE = 18, 40  # shape extent in pixels at RESOLUTION
SMALL_BELOW, LARGE_ABOVE = 25, 33  # sizes named "small" / "large" in captions
MARGIN = 3  # pixels kept free between a shape and the image border
JITTER = 3  # pixels a shape's centre may move off its grid cell's centre
STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
# Chance that a caption keeps each optional part.
P_SIZE, P_BACKGROUND, P_POSITION = 0.5, 0.8, 0.6
CHUNK = 1000  # scenes per random stream: datasets do not depend on the number of workers


@dataclass(frozen=True)
class Scene:
    """One image's content; `size` is the shape's extent and (cx, cy) its centre, in pixels."""

    shape: str
    color: str
    background: str
    size: float
    cx: float
    cy: float
    cell: tuple[int, int]

    @property
    def position(self) -> str:
        """The caption words for the grid cell."""
        return POSITIONS[self.cell]

    @property
    def size_word(self) -> str:
        """ "small", "large", or "" for a medium shape."""
        if self.size < SMALL_BELOW:
            return "small"
        return "large" if self.size > LARGE_ABOVE else ""


def random_scene(rng: np.random.Generator, resolution: int = RESOLUTION) -> Scene:
    """Draw a scene: uniform shape, colour, other background colour, size and grid cell."""
    names = list(COLORS)
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = names[rng.integers(len(names))]
    background = [c for c in names if c != color][rng.integers(len(names) - 1)]
    scale = resolution / RESOLUTION
    size = float(rng.uniform(MIN_SIZE, MAX_SIZE)) * scale
    cell = (int(rng.integers(3)), int(rng.integers(3)))
    lo, hi = size / 2 + MARGIN * scale, resolution - size / 2 - MARGIN * scale
    jitter = rng.uniform(-JITTER, JITTER, size=2) * scale
    cx, cy = (
        float(np.clip(lo + (hi - lo) * k / 2 + j, lo, hi))
        for k, j in zip(cell, jitter, strict=True)
    )
    return Scene(shape, color, background, size, cx, cy, cell)


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The scene's caption: complete without `rng`, else each optional part kept with its P_*."""
    if rng is None:
        return caption_parts(scene, True, True, True)
    size = bool(rng.random() < P_SIZE)
    background = bool(rng.random() < P_BACKGROUND)
    position = bool(rng.random() < P_POSITION)
    return caption_parts(scene, size, background, position)


def caption_parts(scene: Scene, size: bool, background: bool, position: bool) -> str:
    """The caption with the chosen optional parts (size word, background, position)."""
    word = scene.size_word if size else ""
    noun = f"{word + ' ' if word else ''}{scene.color} {scene.shape}"
    text = f"{_article(noun)} {noun}"
    if background:
        text += f" on {_article(scene.background)} {scene.background} background"
    if position:
        text += f", {scene.position}"
    return text


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def outline(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape of extent `size` centred on (cx, cy) (circles: 2 bbox corners)."""
    r = size / 2
    if shape in ("circle", "square"):
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        k = np.arange(10)
        radius = np.where(k % 2 == 0, r, r * STAR_INNER)
        angle = -math.pi / 2 + k * math.pi / 5
        xs, ys = radius * np.cos(angle), radius * np.sin(angle)
        # Centre the star's bounding box (it is taller above its centre than below).
        ys = ys - (ys.max() + ys.min()) / 2
        return list(zip((cx + xs).tolist(), (cy + ys).tolist(), strict=True))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, resolution: int = RESOLUTION, supersample: int = 4) -> np.ndarray:
    """The scene as an (H, W, 3) uint8 image, anti-aliased by drawing `supersample` times larger."""
    big = resolution * supersample
    image = Image.new("RGB", (big, big), COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    s = supersample
    pts = [(x * s, y * s) for x, y in outline(scene.shape, scene.cx, scene.cy, scene.size)]
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse(pts, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(pts, fill=fill)
    else:
        draw.polygon(pts, fill=fill)
    return np.asarray(image.resize((resolution, resolution), Image.Resampling.BOX))


def _chunk(args: tuple[np.random.SeedSequence, int, int]) -> tuple[np.ndarray, list[str], list]:
    seq, n, resolution = args
    rng = np.random.default_rng(seq)
    scenes = [random_scene(rng, resolution) for _ in range(n)]
    captions = [caption(s, rng) for s in scenes]
    images = np.stack([render(s, resolution) for s in scenes])
    return images, captions, scenes


def make_dataset(
    n: int, seed: int = 0, resolution: int = RESOLUTION, workers: int = 1
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`n` scenes: (N, H, W, 3) uint8 images, captions and scenes; the same for any `workers`."""
    counts = [min(CHUNK, n - i) for i in range(0, n, CHUNK)]
    seqs = np.random.SeedSequence(seed).spawn(len(counts))
    jobs = [(s, c, resolution) for s, c in zip(seqs, counts, strict=True)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_chunk, jobs))
    else:
        parts = [_chunk(j) for j in jobs]
    if not parts:
        return np.zeros((0, resolution, resolution, 3), np.uint8), [], []
    images = np.concatenate([p[0] for p in parts])
    captions = [c for p in parts for c in p[1]]
    scenes = [s for p in parts for s in p[2]]
    return images, captions, scenes
