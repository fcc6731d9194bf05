"""Load a Stable Diffusion checkpoint into the reference tree, from either published layout.

A *diffusers folder* (model_index.json + one folder per component with config.json) or a
*single file* in the original layout (CompVis/LDM for SD 1.x/2.x, SGM for SDXL), whose
configuration is inferred from tensor shapes. Both end as `Components`; nothing ever runs on
weights that did not load completely.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentrt.errors import CheckpointError
from latentrt.export.models.clip import CLIPTextConfig, CLIPTextModel
from latentrt.export.models.unet import UNet2DCondition, UNetConfig
from latentrt.export.models.vae import AutoencoderKL, VAEConfig
from latentrt.export.single_file import clip as sf_clip
from latentrt.export.single_file import unet as sf_unet
from latentrt.export.single_file import vae as sf_vae
from latentrt.export.weights import PICKLE_SUFFIXES, load_state, read_safetensors, read_sharded

# The training noise schedule every SD 1.x/2.x/XL checkpoint was trained with
# (diffusers' scheduler_config.json of the published models).
DEFAULT_SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "rescale_betas_zero_snr": False,
}

# Tensors single files carry that are not weights of any component (DDPM buffers, EMA copies).
_SCHEDULE_BUFFERS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "lvlb_weights",
}
_IGNORED_PREFIXES = ("model_ema.",)
# What the published SDXL pipelines do with an empty negative prompt (diffusers'
# `force_zeros_for_empty_prompt`: zero embeddings instead of encoding ""); the refiner's
# model_index.json turns it off.
SDXL_FORCE_ZEROS = {"sdxl": True, "sdxl-refiner": False}
SDXL_VAE_SCALING_FACTOR = 0.13025


@dataclass
class TextEncoder:
    """One text encoder with the tokenizer convention it was trained with."""

    model: CLIPTextModel
    pad_token: str  # "<|endoftext|>" for OpenAI CLIP, "!" for OpenCLIP models
    tokenizer_dir: Path | None = None  # a diffusers tokenizer folder, when the source has one


@dataclass
class Components:
    """Everything a bundle is made from: models, training schedule and provenance."""

    family: str  # sd1 | sd2 | sdxl | sdxl-refiner
    unet: UNet2DCondition
    vae: AutoencoderKL
    text_encoders: list[TextEncoder]
    scheduler: dict[str, Any]
    source: str
    source_hash: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.scheduler["prediction_type"]

    @property
    def inpainting(self) -> bool:
        return self.unet.config.in_channels == 9


def file_hash(path: Path, limit: int = 1 << 30) -> str:
    """sha256 of a file (of its first GiB for huge files), the bundle's provenance."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        remaining = limit
        while remaining > 0 and (chunk := f.read(min(1 << 22, remaining))):
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def source_hash(source: str | Path) -> str:
    """The provenance hash of a checkpoint: its file, or a diffusers folder's weights and index."""
    source = Path(source)
    if source.is_file():
        return file_hash(source)
    digest = hashlib.sha256((source / "model_index.json").read_bytes())
    for f in sorted(source.glob("*/*")):
        if f.suffix in (".safetensors", ".json", ".txt"):
            digest.update(f"{f.relative_to(source)}:{file_hash(f)}".encode())
    return digest.hexdigest()


def load_components(source: str | Path, prediction_type: str | None = None) -> Components:
    """Load a diffusers folder or a single `.safetensors` checkpoint into the reference tree."""
    source = Path(source)
    if source.is_dir():
        comps = _load_diffusers(source)
    elif source.suffix.lower() in PICKLE_SUFFIXES or source.suffix.lower() == ".safetensors":
        comps = _load_single_file(source)
    elif not source.exists():
        raise CheckpointError(f"{source}: no such file or directory")
    else:
        raise CheckpointError(
            f"{source}: expected a diffusers folder or a .safetensors checkpoint, got "
            f"{source.suffix or 'a file without extension'}"
        )
    if prediction_type is not None:
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise CheckpointError(f"unknown prediction type {prediction_type!r}")
        comps.scheduler["prediction_type"] = prediction_type
    for m in (comps.unet, comps.vae, *(t.model for t in comps.text_encoders)):
        m.eval().requires_grad_(False)
    return comps


# --- diffusers folders -------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None


def _component_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of one diffusers component folder, whatever its file naming."""
    for stem in ("diffusion_pytorch_model", "model"):
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            return read_sharded(index), str(index)
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return read_safetensors(single), str(single)
    variants = sorted(folder.glob("*.safetensors"))
    if len(variants) == 1:  # e.g. diffusion_pytorch_model.fp16.safetensors
        return read_safetensors(variants[0]), str(variants[0])
    pickles = (
        [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES] if folder.is_dir() else []
    )
    if pickles:
        read_safetensors(pickles[0])  # raises the conversion hint
    if len(variants) > 1:
        raise CheckpointError(
            f"{folder}: several weight files ({', '.join(p.name for p in variants)}); keep one"
        )
    raise CheckpointError(f"{folder}: no .safetensors weights found")


def _pad_token(tokenizer_dir: Path, default: str) -> str:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = tokenizer_dir / name
        if p.is_file():
            pad = _read_json(p).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if pad:
                return pad
    return default


def _load_diffusers(root: Path) -> Components:
    index = _read_json(root / "model_index.json")

    def has(name: str) -> bool:
        entry = index.get(name)
        return isinstance(entry, list) and entry[0] is not None and entry[1] is not None

    def load(name: str, build, normalize=lambda sd: sd):
        folder = root / name
        config = _read_json(folder / "config.json")
        model = build(config)
        state, where = _component_weights(folder)
        return load_state(model, normalize(state), where)

    unet = load("unet", lambda c: UNet2DCondition(UNetConfig.from_diffusers(c)))
    vae = load("vae", lambda c: AutoencoderKL(VAEConfig.from_diffusers(c)))
    encoders = []
    for te, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        if has(te):
            # transformers writes CLIPTextModel keys without `text_model.`; normalize first.
            model = load(
                te,
                lambda c: CLIPTextModel(CLIPTextConfig.from_transformers(c)),
                CLIPTextModel.normalize_state_dict,
            )
            tok_dir = root / tok if (root / tok).is_dir() else None
            default_pad = "!" if model.config.hidden_act == "gelu" else "<|endoftext|>"
            pad = _pad_token(tok_dir, default_pad) if tok_dir else default_pad
            encoders.append(TextEncoder(model, pad, tok_dir))
    if not encoders:
        raise CheckpointError(f"{root}: model_index.json names no text encoder")
    scheduler = dict(DEFAULT_SCHEDULER)
    if (root / "scheduler" / "scheduler_config.json").is_file():
        sched = _read_json(root / "scheduler" / "scheduler_config.json")
        scheduler.update({k: v for k, v in sched.items() if k in DEFAULT_SCHEDULER})
        if sched.get("trained_betas") is not None:
            raise NotImplementedError("explicit trained_betas schedules are not supported yet")
    if unet.config.addition_embed_type == "text_time":
        family = "sdxl" if has("text_encoder") else "sdxl-refiner"
    else:
        family = "sd2" if encoders[0].model.config.hidden_act == "gelu" else "sd1"
    extra = {}
    if family.startswith("sdxl"):
        force_zeros = index.get("force_zeros_for_empty_prompt", SDXL_FORCE_ZEROS[family])
        extra["force_zeros_for_empty_prompt"] = bool(force_zeros)
    return Components(family, unet, vae, encoders, scheduler, str(root), source_hash(root), extra)


# --- single files ------------------------------------------------------------------------------

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SINGLE_FILE_LAYOUTS = {
    # family: [(prefix, clip layout, pad token), ...] in text-encoder order
    "sd1": [("cond_stage_model.transformer.", "hf", "<|endoftext|>")],
    "sd2": [("cond_stage_model.model.", "openclip", "!")],
    "sdxl": [
        ("conditioner.embedders.0.transformer.", "hf", "<|endoftext|>"),
        ("conditioner.embedders.1.model.", "openclip", "!"),
    ],
    "sdxl-refiner": [("conditioner.embedders.0.model.", "openclip", "!")],
}


def _detect_family(keys: list[str], path: Path) -> str:
    has = lambda p: any(k.startswith(p) for k in keys)  # noqa: E731
    if has("conditioner.embedders.1.model."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        return "sdxl-refiner"
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    raise CheckpointError(
        f"{path}: not a Stable Diffusion single-file checkpoint I know: no text-encoder keys "
        "(cond_stage_model.transformer./cond_stage_model.model./conditioner.embedders.N.); "
        f"first keys: {', '.join(sorted(keys)[:5])}"
    )


def _take(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove and return the entries under `prefix`, with the prefix stripped."""
    keys = [k for k in sd if k.startswith(prefix)]
    return {k[len(prefix) :]: sd.pop(k) for k in keys}


def _load_single_file(path: Path) -> Components:
    sd = read_safetensors(path)
    family = _detect_family(list(sd), path)
    for k in [k for k in sd if k in _SCHEDULE_BUFFERS or k.startswith(_IGNORED_PREFIXES)]:
        del sd[k]

    unet_sd = _take(sd, UNET_PREFIX)
    vae_sd = _take(sd, VAE_PREFIX)
    if not unet_sd or not vae_sd:
        missing = "UNet (model.diffusion_model.)" if not unet_sd else "VAE (first_stage_model.)"
        raise CheckpointError(f"{path}: the checkpoint has no {missing} weights")
    try:
        unet_cfg = sf_unet.infer_config(unet_sd)
        vae_cfg = sf_vae.infer_config(
            vae_sd,
            scaling_factor=SDXL_VAE_SCALING_FACTOR if family.startswith("sdxl") else 0.18215,
        )
    except (KeyError, IndexError, ValueError, CheckpointError) as e:
        raise CheckpointError(f"{path}: cannot infer the model configuration ({e})") from None
    src = str(path)
    unet = load_state(UNet2DCondition(unet_cfg), sf_unet.to_diffusers(unet_sd, unet_cfg), src)
    vae = load_state(AutoencoderKL(vae_cfg), sf_vae.to_diffusers(vae_sd, vae_cfg), src)

    encoders = []
    for prefix, layout, pad in SINGLE_FILE_LAYOUTS[family]:
        te_sd = _take(sd, prefix)
        # SD 2.x conditions on OpenCLIP's penultimate layer: diffusers drops the last block.
        drop_last = family == "sd2"
        if layout == "openclip":
            cfg = sf_clip.infer_openclip_config(te_sd, drop_last_layer=drop_last)
            state = sf_clip.openclip_to_diffusers(te_sd, cfg)
        else:
            cfg = sf_clip.infer_hf_config(te_sd)
            state = sf_clip.hf_to_diffusers(te_sd)
        model = load_state(CLIPTextModel(cfg), state, f"{src} [{prefix}]")
        encoders.append(TextEncoder(model, pad))
    if sd:
        leftover = sorted(sd)
        raise CheckpointError(
            f"{path}: {len(leftover)} unexpected keys outside any component, first: "
            + ", ".join(leftover[:5])
        )
    scheduler = dict(DEFAULT_SCHEDULER)
    if family == "sd2" and unet_cfg.in_channels == 4:
        # Published SD 2.x single files at 768px are v-prediction; pass
        # prediction_type="epsilon" for the 512px base model.
        scheduler["prediction_type"] = "v_prediction"
    extra = (
        {"force_zeros_for_empty_prompt": SDXL_FORCE_ZEROS[family]}
        if family.startswith("sdxl")
        else {}
    )
    return Components(family, unet, vae, encoders, scheduler, src, file_hash(path), extra)
