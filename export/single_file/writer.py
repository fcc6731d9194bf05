"""Write a checkpoint in the original single-file layout (CompVis LDM for SD 1.x/2.x, SGM for SDXL).

The inverse of `checkpoint.load_components` on single files: every component's diffusers-named
weights go through the layout mappings (`unet.from_diffusers`, `vae.from_diffusers`,
`clip.diffusers_to_hf` / `clip.diffusers_to_openclip`) under the family's prefixes:

    sd1           cond_stage_model.transformer.            (HF-named CLIP ViT-L)
    sd2           cond_stage_model.model.                  (OpenCLIP ViT-H)
    sdxl          conditioner.embedders.0.transformer.     (HF-named CLIP ViT-L)
                  conditioner.embedders.1.model.           (OpenCLIP bigG)
    sdxl-refiner  conditioner.embedders.0.model.           (OpenCLIP bigG)
    all           model.diffusion_model. (UNet), first_stage_model. (VAE)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from latentrt.errors import CheckpointError
from latentrt.export.checkpoint import (
    SINGLE_FILE_LAYOUTS,
    UNET_PREFIX,
    VAE_PREFIX,
    Components,
    load_components,
)
from latentrt.export.single_file import clip as sf_clip
from latentrt.export.single_file import unet as sf_unet
from latentrt.export.single_file import vae as sf_vae
from latentrt.runtime.atomic import publish_file


def single_file_state_dict(comps: Components) -> dict[str, torch.Tensor]:
    """Every weight of `comps` under its original single-file key."""
    layouts = SINGLE_FILE_LAYOUTS.get(comps.family)
    if layouts is None:
        raise CheckpointError(f"no single-file layout for family {comps.family!r}")
    if len(layouts) != len(comps.text_encoders):
        raise CheckpointError(
            f"{comps.family} single files hold {len(layouts)} text encoders, "
            f"the checkpoint has {len(comps.text_encoders)}"
        )
    out: dict[str, torch.Tensor] = {}

    def put(prefix: str, sd: dict[str, torch.Tensor]) -> None:
        for key, value in sd.items():
            out[prefix + key] = value.detach().contiguous()

    put(UNET_PREFIX, sf_unet.from_diffusers(comps.unet.state_dict(), comps.unet.config))
    put(VAE_PREFIX, sf_vae.from_diffusers(comps.vae.state_dict(), comps.vae.config))
    for (prefix, layout, _pad), te in zip(layouts, comps.text_encoders, strict=True):
        cfg = te.model.config
        state = te.model.state_dict()
        if layout == "hf":
            put(prefix, sf_clip.diffusers_to_hf(state, cfg))
            continue
        oc = sf_clip.diffusers_to_openclip(state, cfg)
        if comps.family == "sd2":
            oc.update(_unused_last_resblock(oc, cfg.num_hidden_layers))
        put(prefix, oc)
    return out


def _unused_last_resblock(oc: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """SD 2.x files hold one OpenCLIP resblock more than SD 2.x runs (it conditions on the
    penultimate layer; diffusers drops that block). Its weights are not in a diffusers folder,
    so the block is written as zeros of the right shapes: readers skip it."""
    last = f"transformer.resblocks.{n - 1}."
    return {
        f"transformer.resblocks.{n}.{k[len(last) :]}": torch.zeros_like(v)
        for k, v in oc.items()
        if k.startswith(last)
    }


def write_single_file(source: str | Path | Components, path: str | Path) -> Path:
    """Write a diffusers folder (or loaded `Components`) as one original-layout .safetensors."""
    comps = source if isinstance(source, Components) else load_components(source)
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path}: single files are written as .safetensors")
    sd = single_file_state_dict(comps)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(sd, tmp, metadata={"format": "pt", "latentrt_family": comps.family})
        publish_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
