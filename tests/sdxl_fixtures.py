"""Tiny SDXL base and refiner pipelines built and saved by diffusers itself (the oracle side).

Two kinds, both with seeded random weights and written with `save_pretrained`:

* `sdxl_pipeline`: a coherent tiny SDXL (CLIP-L 32 wide + bigG 64 wide = 96-wide context,
  first level without attention, transformer depths 1/2/2, linear projections, text_time
  added conditioning) or refiner (bigG only, aesthetic-score time ids), for pipeline parity.
* `layout_pipeline`: models whose shapes follow the published families' conventions that
  single-file config inference relies on (64-wide CLIP/UNet heads, SD 1.x 8 heads, context
  768 / 1024 / 2048 / 1280, 256-wide SDXL time-id embeddings). Their text encoders are narrower
  than the context, so they are for weight round trips, not for running a pipeline.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from tests import sd_fixtures


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch and one ONNX Runtime thread: tiny models gain nothing from more, and on a
    shared 2-core machine spinning thread pools make them 50x slower."""
    torch_threads = torch.get_num_threads()
    ort_threads = os.environ.get("LATENTRT_THREADS")
    torch.set_num_threads(1)
    os.environ["LATENTRT_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        if ort_threads is None:
            os.environ.pop("LATENTRT_THREADS", None)
        else:
            os.environ["LATENTRT_THREADS"] = ort_threads


SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
}
# The token ids SD 1.x/2.x/XL text encoder configs carry (eos 2: transformers' legacy pooling).
TOKEN_IDS = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}


def clip(hidden: int, heads: int, act: str, layers: int = 3, projection: int | None = None):
    """A transformers CLIP text encoder (with projection when `projection` is set)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or hidden,
        **TOKEN_IDS,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def sdxl_unet(
    context: int,
    pooled: int,
    n_time_ids: int,
    channels=(32, 64, 64),
    heads=(2, 4, 4),
    time_dim: int = 8,
    in_channels: int = 4,
):
    """A diffusers SDXL-structured UNet: plain first level, transformer depth 1/2/2, text_time."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=heads,
        use_linear_projection=True,
        cross_attention_dim=context,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled + n_time_ids * time_dim,
        norm_num_groups=32,
    ).eval()


def vae(force_upcast: bool = True):
    """The tiny VAE of sd_fixtures with SDXL's scaling factor (near-deterministic encoder)."""
    m = sd_fixtures.vae()
    m.register_to_config(scaling_factor=0.13025, force_upcast=force_upcast)
    return m


def overflow_vae_weights(m: torch.nn.Module, factor: float = 1e5) -> None:
    """Scale the decoder's first conv so its activations pass fp16's 65504 (as SDXL's VAE does).

    The decoder's GroupNorms renormalize, so in fp32 the image stays an ordinary image.
    """
    with torch.no_grad():
        m.decoder.conv_in.weight.mul_(factor)
        m.decoder.conv_in.bias.mul_(factor)


# Keys the published SDXL scheduler_config.json carries for DDIM/PNDM beside Euler's own.
SDXL_SCHEDULER_EXTRA = {
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "sample_max_value": 1.0,
}


def _save(pipe, root: Path) -> Path:
    pipe.save_pretrained(root, safe_serialization=True)
    path = root / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **SDXL_SCHEDULER_EXTRA}, indent=2))
    return root


def sdxl_pipeline(
    root: Path,
    refiner: bool = False,
    seed: int = 0,
    vae_overflow: bool = False,
    inpaint: bool = False,
) -> Path:
    """Save a coherent tiny SDXL base (9-channel inpainting base, or refiner) pipeline to `root`."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    torch.manual_seed(seed)
    big_g = clip(64, 4, "gelu", projection=48)
    sched = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    tok_g = sd_fixtures.tokenizer(root.parent, pad="!")
    va = vae()
    if refiner:
        un = sdxl_unet(64, 48, 5)
        for i, m in enumerate((big_g, un, va)):
            sd_fixtures.randomize(m, seed * 10 + i, std=0.05 if m is un else 0.08)
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=va, text_encoder=None, text_encoder_2=big_g, tokenizer=None, tokenizer_2=tok_g,
            unet=un, scheduler=sched, requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
        )  # fmt: skip
        return _save(pipe, root)
    clip_l = clip(32, 4, "quick_gelu")
    un = sdxl_unet(32 + 64, 48, 6, in_channels=9 if inpaint else 4)
    for i, m in enumerate((clip_l, big_g, un, va)):
        sd_fixtures.randomize(m, seed * 10 + i, std=0.05 if m is un else 0.08)
    if vae_overflow:
        overflow_vae_weights(va)
    tok_l = sd_fixtures.tokenizer(root.parent, pad="<|endoftext|>")
    cls = StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline
    pipe = cls(
        vae=va, text_encoder=clip_l, text_encoder_2=big_g, tokenizer=tok_l, tokenizer_2=tok_g,
        unet=un, scheduler=sched,
    )  # fmt: skip
    return _save(pipe, root)


def layout_pipeline(root: Path, family: str, seed: int = 0) -> Path:
    """Save a diffusers pipeline of `family` whose shapes single-file inference recognizes."""
    import diffusers

    torch.manual_seed(seed)
    tok_l = sd_fixtures.tokenizer(root.parent, pad="<|endoftext|>")
    tok_g = sd_fixtures.tokenizer(root.parent, pad="!")
    sched = diffusers.EulerDiscreteScheduler(**SDXL_SCHEDULER)
    va = vae() if family.startswith("sdxl") else sd_fixtures.vae()
    wide = dict(channels=(64, 128, 128), heads=(1, 2, 2), time_dim=256)
    if family == "sd1":
        te = clip(64, 1, "quick_gelu")
        un = sd_fixtures.unet("sd1", context=768)
        models = [te, un, va]
        kw = dict(text_encoder=te, tokenizer=tok_l)
        cls = diffusers.StableDiffusionPipeline
    elif family == "sd2":
        te = clip(64, 1, "gelu")
        un = _sd2_unet()
        models = [te, un, va]
        kw = dict(text_encoder=te, tokenizer=tok_g)
        cls = diffusers.StableDiffusionPipeline
    elif family == "sdxl":
        clip_l, big_g = clip(64, 1, "quick_gelu"), clip(128, 2, "gelu", projection=96)
        un = sdxl_unet(2048, 96, 6, **wide)
        models = [clip_l, big_g, un, va]
        kw = dict(text_encoder=clip_l, text_encoder_2=big_g, tokenizer=tok_l, tokenizer_2=tok_g)
        cls = diffusers.StableDiffusionXLPipeline
    elif family == "sdxl-refiner":
        big_g = clip(128, 2, "gelu", projection=96)
        un = sdxl_unet(1280, 96, 5, **wide)
        models = [big_g, un, va]
        kw = dict(
            text_encoder=None, text_encoder_2=big_g, tokenizer=None, tokenizer_2=tok_g,
            requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        )  # fmt: skip
        cls = diffusers.StableDiffusionXLImg2ImgPipeline
    else:
        raise ValueError(family)
    for i, m in enumerate(models):
        sd_fixtures.randomize(m, seed * 10 + i)
    if family.startswith("sd") and not family.startswith("sdxl"):
        kw |= dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return _save(cls(vae=va, unet=un, scheduler=sched, **kw), root)


def _sd2_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(1, 2, 2),
        use_linear_projection=True,
        upcast_attention=True,
        norm_num_groups=32,
    ).eval()
