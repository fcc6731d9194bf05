"""Whole pipelines: diffusers' own StableDiffusion pipelines vs latentrt on ORT CPU, same latents."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from latentrt import Pipeline
from latentrt.export import export_bundle
from tests import sd_fixtures

IMAGE_TOL = 5e-3
PROMPT = "a watercolor painting of a lighthouse at dusk"
NEGATIVE = "blurry, low quality"


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    src = sd_fixtures.sd_pipeline(root / "src", "sd1")
    return src, export_bundle(src, root / "bundle")


@pytest.fixture(scope="module")
def sd2v(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd2v")
    src = sd_fixtures.sd_pipeline(
        root / "src",
        "sd2",
        prediction_type="v_prediction",
        scheduler={"timestep_spacing": "trailing", "set_alpha_to_one": True, "steps_offset": 0},
    )
    return src, export_bundle(src, root / "bundle")


@pytest.fixture(scope="module")
def sd1_inpaint(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1_inpaint")
    src = sd_fixtures.sd_pipeline(root / "src", "sd1", inpaint=True, seed=3)
    return src, export_bundle(src, root / "bundle")


def _unit_latents(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _diffusers(src, cls_name: str = "StableDiffusionPipeline", scheduler: str | None = None):
    import diffusers

    pipe = getattr(diffusers, cls_name).from_pretrained(src, safety_checker=None)
    if scheduler:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3))
    arr = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.mark.parametrize(("w", "h", "batch"), [(64, 64, 1), (80, 64, 2)])
def test_sd1_ddim_txt2img_matches_diffusers(sd1, w, h, batch):
    src, bundle = sd1
    latents = _unit_latents(1, (batch, 4, h // 8, w // 8))
    ref = _diffusers(src)(
        [PROMPT] * batch,
        negative_prompt=[NEGATIVE] * batch,
        num_inference_steps=8,
        guidance_scale=7.5,
        latents=torch.from_numpy(latents),
        width=w,
        height=h,
        output_type="np",
    ).images
    got = Pipeline.load(bundle).generate(
        PROMPT, NEGATIVE, width=w, height=h, steps=8, guidance=7.5, sampler="ddim",
        latents=latents, batch=batch, output="np",
    )  # fmt: skip
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= IMAGE_TOL


def test_sd1_euler_matches_diffusers(sd1):
    src, bundle = sd1
    latents = _unit_latents(2, (1, 4, 8, 8))
    ref = _diffusers(src, scheduler="EulerDiscreteScheduler")(
        PROMPT, num_inference_steps=6, guidance_scale=5.0, latents=torch.from_numpy(latents),
        width=64, height=64, output_type="np",
    ).images  # fmt: skip
    got = Pipeline.load(bundle).generate(
        PROMPT, width=64, height=64, steps=6, guidance=5.0, sampler="euler",
        scheduler="diffusers", latents=latents, output="np",
    )  # fmt: skip
    assert np.abs(got - ref).max() <= IMAGE_TOL


def test_sd2_v_prediction_matches_diffusers(sd2v):
    src, bundle = sd2v
    latents = _unit_latents(3, (1, 4, 8, 8))
    ref = _diffusers(src)(
        PROMPT, negative_prompt=NEGATIVE, num_inference_steps=7, guidance_scale=6.0,
        latents=torch.from_numpy(latents), width=64, height=64, output_type="np",
    ).images  # fmt: skip
    pipe = Pipeline.load(bundle)
    assert pipe.prediction_type == "v_prediction"
    got = pipe.generate(
        PROMPT, NEGATIVE, width=64, height=64, steps=7, guidance=6.0, sampler="ddim",
        latents=latents, output="np",
    )  # fmt: skip
    assert np.abs(got - ref).max() <= IMAGE_TOL


def test_img2img_matches_diffusers(sd1):
    src, bundle = sd1
    init = _image(4, 64, 64)
    g = torch.Generator().manual_seed(11)
    pipe = _diffusers(src, "StableDiffusionImg2ImgPipeline")
    ref = pipe(
        PROMPT, image=init, strength=0.6, num_inference_steps=10, guidance_scale=7.5,
        generator=g, output_type="np",
    ).images  # fmt: skip
    # Replay diffusers' draws: first the VAE sample (std ~0 here), then the added noise.
    g = torch.Generator().manual_seed(11)
    torch.randn((1, 4, 8, 8), generator=g)
    noise = torch.randn((1, 4, 8, 8), generator=g).numpy()
    got = Pipeline.load(bundle).generate(
        PROMPT, image=init, strength=0.6, steps=10, guidance=7.5, sampler="ddim",
        latents=noise, output="np",
    )  # fmt: skip
    assert np.abs(got - ref).max() <= IMAGE_TOL


def _mask(w: int, h: int) -> Image.Image:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 8 : w // 2] = 255
    return Image.fromarray(m)


def test_inpaint_unet_matches_diffusers(sd1_inpaint):
    src, bundle = sd1_inpaint
    init, mask = _image(5, 64, 64), _mask(64, 64)
    latents = _unit_latents(6, (1, 4, 8, 8))
    ref = _diffusers(src, "StableDiffusionInpaintPipeline")(
        PROMPT, image=init, mask_image=mask, num_inference_steps=8, guidance_scale=7.5,
        latents=torch.from_numpy(latents), width=64, height=64, output_type="np",
    ).images  # fmt: skip
    pipe = Pipeline.load(bundle)
    assert pipe.inpainting
    got = pipe.generate(
        PROMPT, image=init, mask=mask, steps=8, guidance=7.5, sampler="ddim",
        latents=latents, output="np",
    )  # fmt: skip
    assert np.abs(got - ref).max() <= IMAGE_TOL


def test_mask_blending_keeps_the_unmasked_latent(sd1):
    _, bundle = sd1
    pipe = Pipeline.load(bundle)
    init, mask = _image(7, 64, 64), _mask(64, 64)
    out = pipe.generate(PROMPT, image=init, mask=mask, steps=5, seed=3, output="latent")
    rng = np.random.default_rng(0)
    source = pipe.encode(np.asarray(init, np.float32)[None].transpose(0, 3, 1, 2) / 127.5 - 1, rng)
    keep = (np.asarray(mask)[::8, ::8] < 128)[None, None]
    keep = np.broadcast_to(keep, out.shape)
    np.testing.assert_allclose(out[keep], source[keep], atol=1e-4)
    assert np.abs(out[~keep] - source[~keep]).max() > 0.05  # the masked area was repainted


def test_same_seed_same_image_and_png_parameters(sd1, tmp_path):
    _, bundle = sd1
    pipe = Pipeline.load(bundle)
    a = pipe.generate(PROMPT, width=64, height=64, steps=4, seed=42, sampler="euler_ancestral")
    b = pipe.generate(PROMPT, width=64, height=64, steps=4, seed=42, sampler="euler_ancestral")
    c = pipe.generate(PROMPT, width=64, height=64, steps=4, seed=43, sampler="euler_ancestral")
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    path = pipe.save(a[0], tmp_path / "out.png")
    params = Image.open(path).text["parameters"]
    assert params.startswith(PROMPT + "\n")
    assert "Steps: 4, Sampler: Euler a," in params and "Seed: 42" in params
    assert "Size: 64x64" in params and "Model hash: " in params


def test_generation_without_torch(sd1, tmp_path):
    """A whole generation in a process where `import torch` fails."""
    _, bundle = sd1
    latents = _unit_latents(8, (1, 4, 8, 8))
    np.save(tmp_path / "latents.npy", latents)
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this process")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from latentrt import Pipeline
        pipe = Pipeline.load({str(bundle)!r})
        img = pipe.generate({PROMPT!r}, width=64, height=64, steps=5, sampler="ddim",
                            latents=np.load({str(tmp_path / "latents.npy")!r}), output="np")
        np.save({str(tmp_path / "out.npy")!r}, img)
        (pil,) = pipe.generate({PROMPT!r}, width=64, height=64, steps=3, seed=1)
        pipe.save(pil, {str(tmp_path / "out.png")!r})
        assert "torch" not in sys.modules
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    here = Pipeline.load(bundle).generate(
        PROMPT, width=64, height=64, steps=5, sampler="ddim", latents=latents, output="np"
    )
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), here)
    assert (tmp_path / "out.png").is_file()
