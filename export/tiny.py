"""Small SD 1.x-architecture checkpoints written in the diffusers folder layout.

The embedded default and the benchmarks need a model, and no weights can be downloaded here:
this writes one from the reference tree (seeded initialization, or given weights) with the
same files a diffusers `save_pretrained` writes, so it goes through the real loading path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from latentrt.export.checkpoint import DEFAULT_SCHEDULER
from latentrt.export.models.clip import CLIPTextConfig, CLIPTextModel
from latentrt.export.models.unet import UNet2DCondition, UNetConfig
from latentrt.export.models.vae import AutoencoderKL, VAEConfig
from latentrt.runtime.tokenizer import CLIPTokenizer

# (text encoder, unet, vae) configs as diffusers/transformers config.json dicts.
SIZES = {
    "tiny": (
        {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        {"block_out_channels": [32, 64, 64], "layers_per_block": 1, "attention_head_dim": 8},
        {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1},
    ),
    "medium": (
        {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        {"block_out_channels": [128, 256, 256], "layers_per_block": 2, "attention_head_dim": 8},
        {"block_out_channels": [64, 128, 128, 128], "layers_per_block": 1},
    ),
}


def configs(size: str = "tiny") -> tuple[dict, dict, dict]:
    """transformers / diffusers config.json dicts of an SD 1.x-layout model of `size`."""
    te, unet, vae = SIZES[size]
    text = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "projection_dim": te["hidden_size"],
        **te,
    }
    unet = {
        "_class_name": "UNet2DConditionModel",
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": te["hidden_size"],
        "norm_num_groups": 32,
        **unet,
    }
    n = len(vae["block_out_channels"])
    vae = {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
        **vae,
    }
    return text, unet, vae


def build_models(size: str = "tiny", seed: int = 0):
    """The three models of `size`, initialized from `seed`."""
    text, unet, vae = configs(size)
    torch.manual_seed(seed)
    return (
        CLIPTextModel(CLIPTextConfig.from_transformers(text)),
        UNet2DCondition(UNetConfig.from_diffusers(unet)),
        AutoencoderKL(VAEConfig.from_diffusers(vae)),
    )


def write_diffusers_folder(
    path: str | Path,
    text_encoder: CLIPTextModel,
    unet: UNet2DCondition,
    vae: AutoencoderKL,
    scheduler: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the models as a diffusers StableDiffusionPipeline folder (safetensors weights).

    `dtype` (e.g. torch.float16) stores the weights in that precision, as diffusers' fp16
    variants do; the loader casts them back to the model's dtype.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2))

    def component(name: str, config: dict, module: torch.nn.Module, weights: str) -> None:
        d = root / name
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text(json.dumps(config, indent=2))
        state = {
            k: (v.detach() if dtype is None else v.detach().to(dtype)).contiguous().cpu()
            for k, v in module.state_dict().items()
        }
        save_file(state, str(d / weights))

    component(
        "text_encoder", text_encoder.config.to_transformers(), text_encoder, "model.safetensors"
    )
    component("unet", unet.config.to_diffusers(), unet, "diffusion_pytorch_model.safetensors")
    component("vae", vae.config.to_diffusers(), vae, "diffusion_pytorch_model.safetensors")
    sched = {"_class_name": "DDIMScheduler", **DEFAULT_SCHEDULER, **(scheduler or {})}
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    CLIPTokenizer.from_bpe_gz(None, pad_token="<|endoftext|>").save(root / "tokenizer")
    return root
