"""The embedded default model: trained weights that draw what the prompt names.

Oracles: the synthetic generator's own labels (for the checker), diffusers'
StableDiffusionPipeline (for the shipped folder's layout and the runtime's numerics on it),
and the checker (for meaning) over ORT CPU through export_bundle -> Pipeline and over the
PyTorch reference modules with the same samplers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from latentrt import Pipeline
from latentrt.demo import DEFAULT_MODEL, prepare_default_bundle, run_demo
from latentrt.export import shapes_data, train
from latentrt.export.bundle import export_bundle
from latentrt.export.checkpoint import load_components
from latentrt.export.shape_checker import ShapeChecker, default_checker, parse_prompt
from latentrt.runtime.tokenizer import CLIPTokenizer

PROMPTS = (
    "a red circle",
    "an orange square on a blue background",
    "a yellow triangle",
    "a green star",
)
SEEDS = tuple(range(10))
SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc")
GUIDANCE = 3.0
STEPS = 20
PASS_RATE = 0.9
IMAGE_TOL = 5e-3


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_bundle(DEFAULT_MODEL, tmp_path_factory.mktemp("default") / "bundle")


@pytest.fixture(scope="module")
def pipe(bundle) -> Pipeline:
    return Pipeline.load(bundle, backend="ort-cpu")


@pytest.fixture(scope="module")
def reference() -> train.ReferenceSampler:
    return train.ReferenceSampler(DEFAULT_MODEL, "cpu")


def _jobs() -> list[tuple[str, int]]:
    return [(p, s) for p in PROMPTS for s in SEEDS]


def _chunks(jobs: list) -> list[list]:
    """Batches of at most 8 (the bundle's largest batch)."""
    return [jobs[i : i + 8] for i in range(0, len(jobs), 8)]


def _noise(seeds) -> np.ndarray:
    return train.pipeline_noise(seeds, (1, 4, 16, 16))


def _hit_rate(images, jobs) -> float:
    verdicts = default_checker().classify_batch(images)
    return float(
        np.mean([v.matches(*parse_prompt(p)) for (p, _), v in zip(jobs, verdicts, strict=True)])
    )


# --- the checker --------------------------------------------------------------------------------


def test_checker_reads_synthetic_scenes():
    """Colour and shape of fresh synthetic images (the generator's labels are the oracle)."""
    images, _, scenes = shapes_data.make_dataset(400, seed=99)
    verdicts = default_checker().classify_batch(images)
    assert np.mean([v.color == s.color for v, s in zip(verdicts, scenes, strict=True)]) >= 0.99
    assert np.mean([v.shape == s.shape for v, s in zip(verdicts, scenes, strict=True)]) >= 0.99
    # Soft edges, as a small VAE decodes them, do not change the verdicts.
    blurred = [Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.0)) for im in images]
    verdicts = default_checker().classify_batch(blurred)
    assert (
        np.mean([v.matches(s.color, s.shape) for v, s in zip(verdicts, scenes, strict=True)])
        >= 0.97
    )


def test_checker_rejects_wrong_and_empty_images():
    rng = np.random.default_rng(5)
    scene = shapes_data.Scene("star", "red", "blue", 36.0, 32.0, 32.0, (1, 1))
    verdict = default_checker().classify(shapes_data.render(scene))
    assert verdict.matches("red", "star")
    assert not verdict.matches("red", "circle")
    assert not verdict.matches("blue", "star")
    blank = np.full((64, 64, 3), 200, np.uint8)
    assert default_checker().classify(blank).shape is None
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert not default_checker().classify(noise).matches("red", "star")


def test_checker_fit_is_deterministic():
    a, b = ShapeChecker.fit(per_shape=10, seed=3), ShapeChecker.fit(per_shape=10, seed=3)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_dataset_does_not_depend_on_worker_count():
    one = shapes_data.make_dataset(2100, seed=4, workers=1)
    two = shapes_data.make_dataset(2100, seed=4, workers=2)
    np.testing.assert_array_equal(one[0], two[0])
    assert one[1] == two[1]


def test_captions_name_the_scene():
    scene = shapes_data.Scene("circle", "orange", "blue", 20.0, 16.0, 16.0, (0, 0))
    assert shapes_data.caption(scene) == "a small orange circle on a blue background, top left"
    assert shapes_data.caption_parts(scene, False, False, False) == "an orange circle"
    rng = np.random.default_rng(0)
    assert len({shapes_data.caption(scene, rng) for _ in range(200)}) == 8
    assert parse_prompt("an orange circle on a blue background") == ("orange", "circle")


def test_caption_variants_follow_the_keep_probabilities():
    scene = shapes_data.Scene("star", "red", "white", 36.0, 32.0, 32.0, (2, 2))
    tok = CLIPTokenizer.from_bpe_gz(None, pad_token=train.PAD_TOKEN)
    ids, probs = train.caption_variants([scene], tok, (0.5, 0.8, 0.6))
    assert probs.sum() == pytest.approx(1.0)
    assert probs[7] == pytest.approx(0.5 * 0.8 * 0.6)  # every part kept
    assert probs[0] == pytest.approx(0.5 * 0.2 * 0.4)  # none kept
    np.testing.assert_array_equal(
        ids[0, 7], tok(["a large red star on a white background, bottom right"])[0]
    )
    np.testing.assert_array_equal(ids[0, 0], tok(["a red star"])[0])
    _, full = train.caption_variants([scene], tok)
    assert full.tolist() == [0.0] * 7 + [1.0]


# --- the shipped weights ------------------------------------------------------------------------


def test_shipped_folder_matches_the_default_recipe():
    """The documented command (default Recipe) is the one that made the shipped weights."""
    info = json.loads((DEFAULT_MODEL / "training.json").read_text())
    assert info["recipe"] == train.Recipe().__dict__
    comps = load_components(DEFAULT_MODEL)
    assert comps.family == "sd1"
    assert comps.vae.downscale == 4
    assert comps.vae.config.scaling_factor == pytest.approx(info["scaling_factor"])
    sizes = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*.safetensors"))
    assert sizes < 20 * 2**20


def test_diffusers_loads_the_shipped_folder_and_agrees_with_the_runtime(pipe):
    """diffusers' StableDiffusionPipeline (the oracle) on the folder vs latentrt ORT CPU."""
    import diffusers

    ref_pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        DEFAULT_MODEL, safety_checker=None, torch_dtype=torch.float32
    )
    ref_pipe.set_progress_bar_config(disable=True)
    latents = _noise([7])
    ref = ref_pipe(
        "a red circle on a blue background",
        num_inference_steps=8,
        guidance_scale=GUIDANCE,
        latents=torch.from_numpy(latents),
        width=64,
        height=64,
        output_type="np",
    ).images
    got = pipe.generate(
        "a red circle on a blue background", width=64, height=64, steps=8, guidance=GUIDANCE,
        sampler="ddim", latents=latents, output="np",
    )  # fmt: skip
    assert np.abs(got - ref).max() <= IMAGE_TOL


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_prompts_are_drawn_on_ort_and_pytorch(pipe, reference, sampler):
    """>= 90% of seeds show the named colour and shape, on ORT CPU and on the PyTorch reference."""
    jobs = _jobs()
    ort = np.concatenate(
        [
            pipe.generate(
                [p for p, _ in chunk],
                width=64,
                height=64,
                steps=STEPS,
                guidance=GUIDANCE,
                sampler=sampler,
                latents=_noise([s for _, s in chunk]),
                seed=chunk[0][1],
                output="np",
            )
            for chunk in _chunks(jobs)
        ]
    )
    # The same chunks on both sides: a chunk's sampler noise comes from its first seed.
    ref = np.concatenate(
        [
            reference.generate(
                [p for p, _ in chunk], [s for _, s in chunk], sampler, STEPS, GUIDANCE
            )
            for chunk in _chunks(jobs)
        ]
    )
    assert _hit_rate(ort, jobs) >= PASS_RATE
    assert _hit_rate(ref, jobs) >= PASS_RATE
    assert np.abs(ort - ref).max() <= IMAGE_TOL


def test_demo_draws_its_prompt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run_demo(tmp_path / "demo.png", prompt="a red circle on a blue background", seed=0)
    image = Image.open(out)
    assert image.size == (64, 64)
    assert "a red circle on a blue background" in image.info["parameters"]
    assert default_checker().classify(image).matches("red", "circle")
    assert prepare_default_bundle().is_dir()  # reused, not re-exported


# --- the training script ------------------------------------------------------------------------


def test_vae_crops_are_windows_of_their_own_images():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8, generator=gen)
    crops = train._random_crops(images, 32, gen)
    assert crops.shape == (64, 32, 32, 3)
    corners = set()
    for image, crop in zip(images, crops, strict=True):
        windows = image.unfold(0, 32, 1).unfold(1, 32, 1).permute(0, 1, 3, 4, 2)  # (33, 33, ...)
        found = (windows == crop).flatten(2).all(-1).nonzero()
        assert len(found) == 1
        corners.add(tuple(found[0].tolist()))
    assert len(corners) > 32  # each image gets its own window
    assert train._random_crops(images, 64, gen) is images
    with pytest.raises(ValueError, match="crop side 80"):
        train._random_crops(images, 80, gen)


def test_offset_noise_moves_the_channel_means():
    """Per-image, per-channel means of (B, 4, 16, 16) noise: std 1/16 plain, sqrt(o^2 + 1/256)."""
    gen = torch.Generator().manual_seed(0)
    plain = train.training_noise(torch.Size((4096, 4, 16, 16)), 0.0, gen)
    offset = train.training_noise(torch.Size((4096, 4, 16, 16)), 0.1, gen)
    assert plain.mean((2, 3)).std().item() == pytest.approx(1 / 16, rel=0.03)
    assert offset.mean((2, 3)).std().item() == pytest.approx((0.01 + 1 / 256) ** 0.5, rel=0.03)
    assert (offset - offset.mean((2, 3), keepdim=True)).std().item() == pytest.approx(1, rel=0.01)


def test_training_is_reproducible(tmp_path):
    """Two runs of a tiny recipe write the same bytes; the folder loads through the normal path."""
    recipe = train.Recipe(scenes=48, vae_steps=2, vae_batch=2, steps=2, batch=2, warmup=1)
    logs: list[str] = []
    a = train.train(tmp_path / "a", "cpu", recipe, log=logs.append)
    b = train.train(tmp_path / "b", "cpu", recipe, log=logs.append)
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert len(files) == 3
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes()
    comps = load_components(a)
    table = comps.text_encoders[0].model.text_model.embeddings.token_embedding.weight
    used = (table.abs().sum(1) > 0).sum().item()
    assert 10 < used < 100  # only caption tokens keep learned rows
