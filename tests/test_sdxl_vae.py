"""SDXL's VAE in fp16 bundles: an overflowing fp16 decode never reaches the image.

The fixture's VAE has a decoder whose first activations pass fp16's range (as SDXL's VAE does):
diffusers' own fp16 decode of it is NaN/Inf. The oracle is diffusers' fp32 `AutoencoderKL.decode`
and `StableDiffusionXLPipeline`. ONNX Runtime's CPU provider runs fp16 convolutions through fp32,
so on CPU the NaN/Inf fallback is provoked with latents beyond fp16's range instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentrt import Pipeline
from latentrt.errors import NumericsError
from latentrt.export import export_bundle
from tests import sdxl_fixtures

PROMPT = "a watercolor painting of a lighthouse at dusk"


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with sdxl_fixtures.single_thread():
        yield


@pytest.fixture(scope="module")
def overflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl_fp16_vae")
    src = sdxl_fixtures.sdxl_pipeline(root / "src", seed=2, vae_overflow=True)
    return src, Pipeline.load(export_bundle(src, root / "bundle", precision="fp16"))


@pytest.fixture(scope="module")
def fp32_vae(overflow):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(overflow[0] / "vae").eval()


def _latents(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 4, 8, 8)).astype(np.float32)


def test_fp16_bundle_carries_an_fp32_decoder(overflow):
    _, pipe = overflow
    m = pipe.bundle.manifest
    assert m["precision"] == "fp16" and m["latent"]["force_upcast"] is True
    assert m["latent"]["fp32_decoder"] == "vae_decoder_fp32"
    assert m["components"]["vae_decoder_fp32"]["inputs"]["latent"]["dtype"] == "float32"
    assert m["components"]["vae_decoder"]["inputs"]["latent"]["dtype"] == "float16"
    assert pipe.vae_upcast  # force_upcast: the fp32 decoder runs from the start


def test_the_vae_overflows_in_fp16(overflow, fp32_vae):
    """Precondition of this module: diffusers' fp16 decode of the fixture's VAE is not finite."""
    z = torch.from_numpy(_latents(1) / np.float32(0.13025))
    half = type(fp32_vae).from_config(fp32_vae.config)
    half.load_state_dict(fp32_vae.state_dict())
    with torch.no_grad():
        assert torch.isfinite(fp32_vae.decode(z).sample).all()
        assert not torch.isfinite(half.half().decode(z.half()).sample).all()


def _reference(fp32_vae, latents: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = torch.from_numpy(latents / np.float32(0.13025))
        return fp32_vae.decode(z).sample.numpy()


def test_force_upcast_decodes_with_the_fp32_graph(overflow, fp32_vae):
    _, pipe = overflow
    latents = _latents(1)
    got = pipe.decode(latents)
    assert np.isfinite(got).all()
    assert np.abs(got - _reference(fp32_vae, latents)).max() <= 1e-3


def test_nan_from_the_fp16_decoder_is_redone_in_fp32(overflow, fp32_vae):
    _, pipe = overflow
    latents = _latents(4) * np.float32(1e4)  # z = latents / 0.13025 is past fp16's 65504
    raw = pipe.components["vae_decoder"](latent=latents / np.float32(0.13025))["image"]
    assert not np.isfinite(raw).all()  # the fp16 graph really fails on these latents
    pipe.vae_upcast = False  # fp16 first, NaN/Inf detected, redone in fp32
    try:
        got = pipe.decode(latents)
    finally:
        pipe.vae_upcast = True
    assert np.isfinite(got).all()
    assert np.abs(got - _reference(fp32_vae, latents)).max() <= 1e-3


def test_no_fp32_decoder_is_an_error_not_a_black_image(overflow):
    _, pipe = overflow
    fp32, pipe.fp32_decoder, pipe.vae_upcast = pipe.fp32_decoder, None, False
    try:
        with pytest.raises(NumericsError, match="NaN/Inf"):
            pipe.decode(_latents(2) * np.float32(1e4))
    finally:
        pipe.fp32_decoder, pipe.vae_upcast = fp32, True


def test_fp16_generation_is_a_finite_image_close_to_diffusers_fp32(overflow):
    from diffusers import StableDiffusionXLPipeline

    src, pipe = overflow
    latents = _latents(3)
    d = StableDiffusionXLPipeline.from_pretrained(src)
    d.set_progress_bar_config(disable=True)
    ref = d(
        PROMPT, num_inference_steps=5, guidance_scale=5.0, latents=torch.from_numpy(latents),
        width=64, height=64, output_type="np",
    ).images  # fmt: skip
    got = pipe.generate(
        PROMPT, width=64, height=64, steps=5, guidance=5.0, scheduler="diffusers",
        latents=latents, output="np",
    )  # fmt: skip
    assert np.isfinite(got).all() and got.std() > 0.05
    assert np.abs(got - ref).max() <= 2e-2
