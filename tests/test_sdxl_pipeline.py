"""SDXL base and refiner: diffusers' own SDXL pipelines vs latentrt on ORT CPU, same latents.

Oracles: `StableDiffusionXLPipeline` and `StableDiffusionXLImg2ImgPipeline` (diffusers) on the
tiny pipelines diffusers itself saved (tests/sdxl_fixtures.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from latentrt import Pipeline
from latentrt.errors import InputError
from latentrt.export import export_bundle
from latentrt.runtime.bundle import Bundle
from tests import sdxl_fixtures

IMAGE_TOL = 5e-3
PROMPT = "a watercolor painting of a lighthouse at dusk"
NEGATIVE = "blurry, low quality"


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with sdxl_fixtures.single_thread():
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    src = sdxl_fixtures.sdxl_pipeline(root / "src")
    return src, export_bundle(src, root / "bundle")


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl_refiner")
    src = sdxl_fixtures.sdxl_pipeline(root / "src", refiner=True, seed=1)
    return src, export_bundle(src, root / "bundle")


@pytest.fixture(scope="module")
def pipes(base, refiner):
    """Loaded once per module: diffusers' base and refiner and latentrt's, by name."""
    import diffusers

    out = {
        "d_base": diffusers.StableDiffusionXLPipeline.from_pretrained(base[0]),
        "d_refiner": diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner[0]),
        "base": Pipeline.load(base[1]),
        "refiner": Pipeline.load(refiner[1]),
    }
    for name in ("d_base", "d_refiner"):
        out[name].set_progress_bar_config(disable=True)
        out[name].euler_config = out[name].scheduler.config
    return out


def _diffusers(pipe, sampler: str):
    """The diffusers pipeline with the scheduler that latentrt's `sampler` reproduces."""
    import diffusers

    cls = diffusers.DDIMScheduler if sampler == "ddim" else diffusers.EulerDiscreteScheduler
    pipe.scheduler = cls.from_config(pipe.euler_config)
    return pipe


def _unit_latents(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _image(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3))
    return Image.fromarray(np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))


def test_manifest_records_sdxl_conditioning(base, refiner):
    m = Bundle.open(base[1]).manifest
    assert m["family"] == "sdxl" and m["latent"]["scaling_factor"] == 0.13025
    assert m["sdxl"] == {
        "text_embeds_dim": 48,
        "time_ids": ["original_size", "crops_coords_top_left", "target_size"],
        "requires_aesthetics_score": False,
        "force_zeros_for_empty_prompt": True,
    }
    # CLIP-L's graph stops at the penultimate layer: it has no pooled or last-layer output.
    assert list(m["components"]["text_encoder"]["outputs"]) == ["penultimate_hidden_state"]
    assert [t["pooled"] for t in m["text_encoders"]] == [None, "pooled"]
    r = Bundle.open(refiner[1]).manifest
    assert r["family"] == "sdxl-refiner" and [t["component"] for t in r["text_encoders"]] == [
        "text_encoder_2"
    ]
    assert r["sdxl"]["requires_aesthetics_score"] is True
    assert r["sdxl"]["force_zeros_for_empty_prompt"] is False


@pytest.mark.parametrize(
    ("sampler", "negative", "w", "h", "batch"),
    [("euler", NEGATIVE, 64, 64, 1), ("ddim", "", 80, 64, 2)],
)
def test_txt2img_matches_diffusers(pipes, sampler, negative, w, h, batch):
    """Both encoders, pooled + time ids, CFG; '' negative = diffusers' zeroed default (None)."""
    latents = _unit_latents(1, (batch, 4, h // 8, w // 8))
    sizes = dict(original_size=(96, 128), crops_coords_top_left=(8, 16), target_size=(h, w))
    ref = _diffusers(pipes["d_base"], sampler)(
        [PROMPT] * batch, negative_prompt=[negative] * batch if negative else None,
        num_inference_steps=6, guidance_scale=5.0, latents=torch.from_numpy(latents),
        width=w, height=h, output_type="np", **sizes,
    ).images  # fmt: skip
    got = pipes["base"].generate(
        PROMPT, negative, width=w, height=h, steps=6, guidance=5.0, sampler=sampler,
        scheduler="diffusers", latents=latents, batch=batch, output="np", **sizes,
    )  # fmt: skip
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= IMAGE_TOL


def test_empty_negative_is_zeros_not_the_encoding_of_empty(pipes):
    """The zeroing is real: encoding "" gives a different image (diffusers with negative="")."""
    latents = _unit_latents(2, (1, 4, 8, 8))
    explicit = _diffusers(pipes["d_base"], "euler")(
        PROMPT, negative_prompt="", num_inference_steps=4, guidance_scale=5.0,
        latents=torch.from_numpy(latents), width=64, height=64, output_type="np",
    ).images  # fmt: skip
    got = pipes["base"].generate(
        PROMPT, "", width=64, height=64, steps=4, guidance=5.0, scheduler="diffusers",
        latents=latents, output="np",
    )  # fmt: skip
    assert np.abs(got - explicit).max() > 20 * IMAGE_TOL


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_base_to_refiner_handoff_matches_diffusers(pipes, sampler):
    """denoising_end=0.8 latents from the base, denoising_start=0.8 on the refiner."""
    latents = _unit_latents(3, (1, 4, 8, 8))
    d_base = _diffusers(pipes["d_base"], sampler)
    d_ref = _diffusers(pipes["d_refiner"], sampler)
    handed = d_base(
        PROMPT, negative_prompt=NEGATIVE, num_inference_steps=10, denoising_end=0.8,
        guidance_scale=5.0, latents=torch.from_numpy(latents), width=64, height=64,
        output_type="latent",
    ).images  # fmt: skip
    ref = d_ref(
        PROMPT, negative_prompt=NEGATIVE, image=handed, num_inference_steps=10,
        denoising_start=0.8, guidance_scale=5.0, output_type="np",
    ).images  # fmt: skip

    common = dict(steps=10, guidance=5.0, sampler=sampler, scheduler="diffusers")
    lat = pipes["base"].generate(
        PROMPT, NEGATIVE, width=64, height=64, latents=latents, denoising_end=0.8,
        output="latent", **common,
    )  # fmt: skip
    if sampler == "euler":  # diffusers' Euler hands over k-diffusion latents too
        np.testing.assert_allclose(lat, handed.numpy(), atol=1e-4)
    got = pipes["refiner"].generate(
        PROMPT, NEGATIVE, image=lat, denoising_start=0.8, output="np", **common
    )
    assert np.abs(got - ref).max() <= IMAGE_TOL
    # The split is not the trivial one: a base run to the end differs from the hand-off.
    full = pipes["base"].generate(
        PROMPT, NEGATIVE, width=64, height=64, latents=latents, output="np", **common
    )
    assert np.abs(full - got).max() > 20 * IMAGE_TOL


def test_refiner_img2img_matches_diffusers(pipes):
    """Pixel img2img on the refiner with aesthetic-score time ids and strength."""
    init = _image(4, 64, 64)
    g = torch.Generator().manual_seed(11)
    ref = _diffusers(pipes["d_refiner"], "euler")(
        PROMPT, image=init, strength=0.6, num_inference_steps=10, guidance_scale=6.0,
        aesthetic_score=7.0, negative_aesthetic_score=2.0, generator=g, output_type="np",
    ).images  # fmt: skip
    # Replay diffusers' draws: first the VAE sample (std ~0 here), then the added noise.
    g = torch.Generator().manual_seed(11)
    torch.randn((1, 4, 8, 8), generator=g)
    noise = torch.randn((1, 4, 8, 8), generator=g).numpy()
    got = pipes["refiner"].generate(
        PROMPT, image=init, strength=0.6, steps=10, guidance=6.0, sampler="euler",
        scheduler="diffusers", latents=noise, aesthetic_score=7.0, negative_aesthetic_score=2.0,
        output="np",
    )  # fmt: skip
    assert np.abs(got - ref).max() <= IMAGE_TOL


def test_inpainting_unet_matches_diffusers(tmp_path):
    """A 9-channel SDXL inpainting UNet: mask and masked-image latents next to the latents."""
    from diffusers import StableDiffusionXLInpaintPipeline

    src = sdxl_fixtures.sdxl_pipeline(tmp_path / "src", seed=3, inpaint=True)
    pipe = Pipeline.load(export_bundle(src, tmp_path / "bundle"))
    assert pipe.inpainting and pipe.bundle.family == "sdxl"
    init = _image(5, 64, 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:32] = 255
    mask = Image.fromarray(mask)
    latents = _unit_latents(6, (1, 4, 8, 8))
    d = StableDiffusionXLInpaintPipeline.from_pretrained(src)
    d.set_progress_bar_config(disable=True)
    ref = d(
        PROMPT, negative_prompt=NEGATIVE, image=init, mask_image=mask, num_inference_steps=6,
        guidance_scale=5.0, strength=1.0, latents=torch.from_numpy(latents), width=64,
        height=64, output_type="np",
    ).images  # fmt: skip
    got = pipe.generate(
        PROMPT, NEGATIVE, image=init, mask=mask, steps=6, guidance=5.0, scheduler="diffusers",
        latents=latents, output="np",
    )  # fmt: skip
    assert np.abs(got - ref).max() <= IMAGE_TOL


def test_nan_clip_l_last_layer_gives_the_same_image(base, pipes, tmp_path):
    """Merged checkpoints with a NaN CLIP-L last layer: bit-identical images to the clean one."""
    src, _ = base
    broken = shutil.copytree(src, tmp_path / "src")
    weights = broken / "text_encoder" / "model.safetensors"
    sd = load_file(weights)
    layers = json.loads((broken / "text_encoder" / "config.json").read_text())["num_hidden_layers"]
    poisoned = [k for k in sd if f"layers.{layers - 1}." in k or "final_layer_norm" in k]
    assert poisoned
    for k in poisoned:
        sd[k] = torch.full_like(sd[k], float("nan"))
    save_file(sd, weights)
    nan_bundle = export_bundle(broken, tmp_path / "bundle")
    latents = _unit_latents(5, (1, 4, 8, 8))
    kw = dict(width=64, height=64, steps=4, guidance=5.0, latents=latents, output="np")
    clean = pipes["base"].generate(PROMPT, NEGATIVE, **kw)
    got = Pipeline.load(nan_bundle).generate(PROMPT, NEGATIVE, **kw)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, clean)


def test_long_prompt_windows_pool_the_first_window(pipes):
    """BREAK windows: both encoders' windows side by side, bigG pooled from the first window."""
    enc = pipes["base"].prompt_encoder
    (ctx, pooled), (first, p_first), (second, _) = (
        enc.encode_pooled([p]) for p in ("a lighthouse BREAK at dusk", "a lighthouse", "at dusk")
    )
    assert ctx.shape == (1, 154, 96)
    np.testing.assert_allclose(ctx[:, :77], first, atol=1e-6)
    np.testing.assert_allclose(ctx[:, 77:], second, atol=1e-6)
    np.testing.assert_allclose(pooled, p_first, atol=1e-6)


def test_latent_image_and_split_errors(pipes):
    pipe = pipes["base"]
    with pytest.raises(InputError, match="denoising_start= needs image="):
        pipe.generate(PROMPT, width=64, height=64, steps=4, denoising_start=0.5)
    with pytest.raises(InputError, match="must be below denoising_end"):
        pipe.generate(
            PROMPT, image=np.zeros((1, 4, 8, 8), np.float32), steps=4,
            denoising_start=0.6, denoising_end=0.4,
        )  # fmt: skip
    with pytest.raises(InputError, match="needs 4 channels"):
        pipe.generate(PROMPT, image=np.zeros((1, 3, 8, 8), np.float32), steps=4)
    with pytest.raises(InputError, match="no step to run"):
        pipe.generate(PROMPT, width=64, height=64, steps=4, sampler="ddim", denoising_end=0.01)
