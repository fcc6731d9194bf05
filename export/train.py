"""Train the embedded default model on synthetic shapes: VAE, CLIP text encoder and UNet from scratch.

    python -m latentrt.export.train --out DIR [--device cuda|cpu] [--eval]

Everything is seeded (`Recipe.seed`): the dataset, the initial weights and every batch, noise
and timestep draw. On the CPU a rerun writes the same bytes (same library versions); CUDA runs
differ in the last bits (atomic-add kernels, TF32), and GPU and CPU runs draw different random
streams: such reruns are meant to reach the same quality, which `--eval` measures with the
checker. Stages:

1. `shapes_data` renders `Recipe.scenes` captioned 64x64 images.
2. An AutoencoderKL with downscale 4 (16x16x4 latents) learns to reconstruct random 32x32 crops
   of them (L1 + L2 and a small KL term); the latent scaling factor is 1 / std of the encoded
   dataset (whole images).
3. A CLIP-architecture text encoder (the real CLIP BPE vocabulary through `runtime.tokenizer`)
   and a cross-attention UNet learn epsilon prediction on the SD 1.x training noise schedule,
   with min-SNR loss weighting, offset noise, captions that drop their optional parts at random,
   classifier-free guidance dropout (the caption becomes the empty prompt, exactly what the
   runtime encodes for an empty negative prompt) and an EMA of both.
4. The EMA weights are written in the diffusers layout as fp16 safetensors.

The models are the project's reference modules, so the folder loads, exports and runs through
the normal `export_bundle` -> `Pipeline` path. `ReferenceSampler` generates with the same
modules in PyTorch (the samplers are `latentrt.samplers`), for `--eval` and the tests.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentrt import samplers
from latentrt.export import shapes_data
from latentrt.export.checkpoint import DEFAULT_SCHEDULER
from latentrt.export.models.clip import CLIPTextConfig, CLIPTextModel
from latentrt.export.models.unet import UNet2DCondition, UNetConfig
from latentrt.export.models.vae import AutoencoderKL, VAEConfig
from latentrt.export.tiny import write_diffusers_folder
from latentrt.runtime.denoiser import CFGDenoiser, Conditioning
from latentrt.runtime.tokenizer import CLIPTokenizer

PAD_TOKEN = "<|endoftext|>"  # OpenAI CLIP's padding, what sd1 bundles pad prompts with
RESOLUTION = shapes_data.RESOLUTION

# transformers / diffusers config.json dicts of the three models.
TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": RESOLUTION // 4,
    "in_channels": 4,
    "out_channels": 4,
    # Attention at 8x8 and 4x4 (and the mid block): global layout and text binding live there,
    # while the 16x16 level stays cheap convolutions.
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_dim": 64,
    "norm_num_groups": 16,
}
VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
    "scaling_factor": 1.0,  # replaced by the measured one
}


INIT_LOGVAR = -4.0


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every number the training depends on; the defaults made the shipped weights."""

    seed: int = 0
    scenes: int = 30000
    vae_steps: int = 3000
    vae_batch: int = 16
    # Side of the random square crops the VAE trains on (RESOLUTION: whole images). The VAE is
    # convolutional: 32-pixel crops cost a quarter of a whole image per step and, given 1.5x the
    # steps, reconstruct better (BENCHMARKS.md, "The embedded default model").
    vae_crop: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-5
    steps: int = 4000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1
    # Chance that a training caption keeps its size word, background and position: prompts that
    # name only a colour and a shape ("a red circle") are then seen in training too.
    p_size: float = 0.8
    p_background: float = 0.8
    p_position: float = 0.8
    min_snr_gamma: float = 5.0
    # Std of a per-image, per-channel constant added to the training noise ("offset noise"). The
    # SD 1.x schedule never reaches zero signal, so without it a model reads the background
    # colour off the initial noise's channel means and cannot draw a prompt's colour there.
    offset_noise: float = 0.1
    grad_clip: float = 1.0


# --- models -------------------------------------------------------------------------------------


def build_models(seed: int) -> tuple[CLIPTextModel, UNet2DCondition, AutoencoderKL]:
    """The untrained text encoder, UNet and VAE, initialized from `seed`."""
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig.from_transformers(TEXT_CONFIG))
    # CLIP's own initialization scale for token and position embeddings.
    torch.nn.init.normal_(text.text_model.embeddings.token_embedding.weight, std=0.02)
    torch.nn.init.normal_(text.text_model.embeddings.position_embedding.weight, std=0.01)
    unet = UNet2DCondition(UNetConfig.from_diffusers(UNET_CONFIG))
    vae = AutoencoderKL(VAEConfig.from_diffusers(VAE_CONFIG))
    # Start the posterior narrow (std e^-2): a decoder trained through wide posterior noise
    # learns to blur, and a few thousand steps are too few for the KL balance to narrow it.
    with torch.no_grad():
        vae.quant_conv.bias[VAE_CONFIG["latent_channels"] :] = INIT_LOGVAR
    return text, unet, vae


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _random_crops(images: torch.Tensor, side: int, gen: torch.Generator) -> torch.Tensor:
    """A random (side, side) window of each of (B, H, W, C) images; the images when side = H."""
    b, h, w, _ = images.shape
    if side == h == w:
        return images
    if not 0 < side <= min(h, w):
        raise ValueError(f"crop side {side} does not fit {h}x{w} images")
    dev = images.device
    top = torch.randint(h - side + 1, (b, 1), generator=gen, device=dev)
    left = torch.randint(w - side + 1, (b, 1), generator=gen, device=dev)
    span = torch.arange(side, device=dev)
    rows, cols = (top + span)[:, :, None], (left + span)[:, None, :]  # (B, side, 1), (B, 1, side)
    return images[torch.arange(b, device=dev)[:, None, None], rows, cols]


# --- stage 2: the autoencoder -------------------------------------------------------------------


def train_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    recipe: Recipe,
    gen: torch.Generator,
    log: Callable[[str], None],
) -> dict:
    """Fit the VAE to `images` ((N, H, W, 3) uint8 on the training device); returns statistics."""
    opt = torch.optim.AdamW(
        vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0, **_adam_impl(images.device)
    )
    vae.train()
    t0 = time.perf_counter()
    rec = kl = torch.zeros(())
    for step in range(recipe.vae_steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe.vae_steps, recipe.vae_lr, recipe.warmup)
        idx = torch.randint(len(images), (recipe.vae_batch,), generator=gen, device=images.device)
        x = _to_pixels(_random_crops(images[idx], recipe.vae_crop, gen))
        mean, logvar = vae.encode(x)
        eps = torch.randn(mean.shape, generator=gen, device=mean.device)
        y = vae.decode(mean + torch.exp(0.5 * logvar) * eps)
        rec = (y - x).abs().mean() + ((y - x) ** 2).mean()
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).mean()
        loss = rec + recipe.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), recipe.grad_clip)
        opt.step()
        if step % 250 == 0 or step == recipe.vae_steps - 1:
            log(
                f"vae step {step:5d}  rec {rec.item():.4f}  kl {kl.item():.3f}  "
                f"{time.perf_counter() - t0:.0f}s"
            )
    vae.eval()
    return {
        "vae_rec_loss": rec.item(),
        "vae_kl": kl.item(),
        "vae_seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def reconstruction_accuracy(
    vae: AutoencoderKL, images: torch.Tensor, scenes: Sequence[shapes_data.Scene]
) -> float:
    """Share of VAE reconstructions (posterior means) in which the checker finds the right object."""
    from latentrt.export.shape_checker import default_checker

    mean, _ = vae.encode(_to_pixels(images))
    pixels = (vae.decode(mean).clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).cpu().numpy()
    verdicts = default_checker().classify_batch(pixels)
    hits = [v.matches(s.color, s.shape) for v, s in zip(verdicts, scenes, strict=True)]
    return float(np.mean(hits))


@torch.no_grad()
def encode_dataset(
    vae: AutoencoderKL, images: torch.Tensor, batch: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, (N, 4, h, w) each."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        mean, logvar = vae.encode(_to_pixels(images[i : i + batch]))
        means.append(mean)
        stds.append(torch.exp(0.5 * logvar))
    return torch.cat(means), torch.cat(stds)


# --- stage 3: text encoder and UNet -------------------------------------------------------------


def caption_variants(
    scenes: Sequence[shapes_data.Scene],
    tokenizer: CLIPTokenizer,
    keep: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every scene's 8 caption variants (N, 8, 77) and each variant's probability.

    Variant bits: keep the size word, the background, the position; `keep` holds the chance of
    keeping each (`Recipe.p_size`, `p_background`, `p_position`).
    """
    keeps = [(s, b, p) for s in (0, 1) for b in (0, 1) for p in (0, 1)]
    probs = np.array(
        [
            np.prod([k if bit else 1.0 - k for bit, k in zip(bits, keep, strict=True)])
            for bits in keeps
        ]
    )
    texts = [
        shapes_data.caption_parts(scene, bool(s), bool(b), bool(p))
        for scene in scenes
        for s, b, p in keeps
    ]
    unique = sorted(set(texts))
    table = dict(zip(unique, tokenizer(unique), strict=True))
    ids = np.stack([table[t] for t in texts]).reshape(len(scenes), len(keeps), -1)
    return ids.astype(np.int64), probs


def training_noise(shape: torch.Size, offset: float, gen: torch.Generator) -> torch.Tensor:
    """Unit Gaussian noise of (B, C, H, W) `shape` plus `offset` x a per-image, per-channel
    Gaussian constant (offset noise: the channel means become unreliable evidence of colour)."""
    noise = torch.randn(shape, generator=gen, device=gen.device)
    if offset:
        noise = noise + offset * torch.randn((*shape[:2], 1, 1), generator=gen, device=gen.device)
    return noise


def _adam_impl(device: torch.device) -> dict:
    """AdamW's fused kernel on the CPU (its per-parameter loop is ~10% of a CPU step); the
    default (foreach) on CUDA, which made the shipped weights."""
    return {"fused": True} if device.type == "cpu" else {}


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, list(model.parameters()), 1.0 - decay)


def train_diffusion(
    text: CLIPTextModel,
    unet: UNet2DCondition,
    latents: tuple[torch.Tensor, torch.Tensor],
    ids: torch.Tensor,
    probs: torch.Tensor,
    empty_ids: torch.Tensor,
    recipe: Recipe,
    gen: torch.Generator,
    log: Callable[[str], None],
) -> tuple[CLIPTextModel, UNet2DCondition, dict]:
    """Train text encoder and UNet jointly on scaled latents; returns their EMA copies."""
    device = ids.device
    means, stds = latents
    ac = torch.from_numpy(
        samplers.alphas_cumprod_for(
            DEFAULT_SCHEDULER["beta_schedule"],
            DEFAULT_SCHEDULER["beta_start"],
            DEFAULT_SCHEDULER["beta_end"],
            DEFAULT_SCHEDULER["num_train_timesteps"],
        )
    ).to(device=device, dtype=torch.float32)
    snr = ac / (1.0 - ac)
    weight = torch.clamp(snr, max=recipe.min_snr_gamma) / snr  # min-SNR-gamma for epsilon

    ema_text, ema_unet = copy.deepcopy(text).eval(), copy.deepcopy(unet).eval()
    for m in (ema_text, ema_unet):
        m.requires_grad_(False)
    params = list(text.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0, **_adam_impl(device))
    text.train()
    unet.train()
    t0 = time.perf_counter()
    avg = None
    for step in range(recipe.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe.steps, recipe.lr, recipe.warmup)
        b = recipe.batch
        idx = torch.randint(len(means), (b,), generator=gen, device=device)
        variant = torch.multinomial(probs, b, replacement=True, generator=gen)
        tokens = ids[idx, variant]
        drop = torch.rand(b, generator=gen, device=device) < recipe.cfg_dropout
        tokens = torch.where(drop[:, None], empty_ids[None], tokens)
        z = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen, device=device)
        t = torch.randint(len(ac), (b,), generator=gen, device=device)
        noise = training_noise(z.shape, recipe.offset_noise, gen)
        a = ac[t][:, None, None, None]
        x_t = a.sqrt() * z + (1.0 - a).sqrt() * noise
        context = text(tokens).last_hidden_state
        pred = unet(x_t, t.float(), context)
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (weight[t] * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        decay = min(recipe.ema_decay, (1.0 + step) / (10.0 + step))
        _ema_update(ema_text, text, decay)
        _ema_update(ema_unet, unet, decay)
        avg = loss.detach() if avg is None else 0.98 * avg + 0.02 * loss.detach()
        if step % 500 == 0 or step == recipe.steps - 1:
            log(f"unet step {step:6d}  loss {avg.item():.4f}  {time.perf_counter() - t0:.0f}s")
    return ema_text, ema_unet, {"unet_loss": float(avg), "unet_seconds": time.perf_counter() - t0}


# --- the whole run ------------------------------------------------------------------------------


def _used_token_rows(ids: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Every token id that occurs in a training caption or the empty prompt."""
    return np.union1d(np.unique(ids), np.unique(empty))


def _with_scaling(vae: AutoencoderKL, scale: float) -> AutoencoderKL:
    """The same VAE weights under a config that records the measured latent scaling factor."""
    out = AutoencoderKL(dataclasses.replace(vae.config, scaling_factor=scale))
    out.load_state_dict(vae.state_dict())
    return out.to(next(vae.parameters()).device).eval()


def save_model(
    out: str | Path,
    text: CLIPTextModel,
    unet: UNet2DCondition,
    vae: AutoencoderKL,
    used_tokens: np.ndarray,
    info: dict,
) -> Path:
    """Write the diffusers folder (fp16 safetensors) and `training.json` with the run's record.

    Token-embedding rows of tokens that never occur in a caption got no gradient and hold their
    random initialization; they are stored as zeros, so unknown words map to "no token
    information" instead of noise, and the file compresses to the rows that were learned.
    """
    text = copy.deepcopy(text).cpu()
    table = text.text_model.embeddings.token_embedding.weight
    unused = torch.ones(table.shape[0], dtype=torch.bool)
    unused[torch.from_numpy(used_tokens)] = False
    with torch.no_grad():
        table[unused] = 0.0
    root = write_diffusers_folder(
        out, text, copy.deepcopy(unet).cpu(), copy.deepcopy(vae).cpu(), dtype=torch.float16
    )
    (root / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return root


def train(
    out: str | Path,
    device: str = "cpu",
    recipe: Recipe | None = None,
    log: Callable[[str], None] = print,
    workers: int = 1,
) -> Path:
    """Run every stage and write the diffusers folder `out`; returns its path."""
    recipe = recipe or Recipe()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    log(f"rendering {recipe.scenes} scenes")
    images_np, _, scenes = shapes_data.make_dataset(recipe.scenes, recipe.seed, workers=workers)
    gen = torch.Generator(device=dev)  # after the render workers fork: no CUDA state in them
    gen.manual_seed(recipe.seed)
    images = torch.from_numpy(images_np).to(dev)
    tokenizer = CLIPTokenizer.from_bpe_gz(None, pad_token=PAD_TOKEN)
    keep = (recipe.p_size, recipe.p_background, recipe.p_position)
    ids_np, probs_np = caption_variants(scenes, tokenizer, keep)
    empty_np = tokenizer([""])[0]
    log(f"data ready in {time.perf_counter() - started:.0f}s")

    text, unet, vae = (m.to(dev) for m in build_models(recipe.seed))
    stats = train_vae(vae, images, recipe, gen, log)
    stats["vae_checker_accuracy"] = reconstruction_accuracy(vae, images[:500], scenes[:500])
    log(f"checker on VAE reconstructions: {stats['vae_checker_accuracy']:.3f}")
    means, stds = encode_dataset(vae, images)
    del images
    variance = means.var() + (stds**2).mean()  # of latents sampled from the posteriors
    scale = float(f"{float(torch.rsqrt(variance)):.5g}")
    log(f"latent scaling factor {scale}")
    vae = _with_scaling(vae, scale)

    ema_text, ema_unet, unet_stats = train_diffusion(
        text,
        unet,
        (means * scale, stds * scale),
        torch.from_numpy(ids_np).to(dev),
        torch.from_numpy(probs_np).to(dev, torch.float32),
        torch.from_numpy(empty_np).to(dev),
        recipe,
        gen,
        log,
    )
    stats.update(unet_stats)
    info = {
        "command": "python -m latentrt.export.train " + " ".join(sys.argv[1:]),
        "recipe": dataclasses.asdict(recipe),
        "device": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "scaling_factor": scale,
        "seconds": round(time.perf_counter() - started, 1),
        **{k: round(v, 5) for k, v in stats.items()},
    }
    root = save_model(out, ema_text, ema_unet, vae, _used_token_rows(ids_np, empty_np), info)
    log(f"wrote {root} in {info['seconds']:.0f}s")
    return root


# --- generation with the PyTorch reference ------------------------------------------------------


def pipeline_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """The unit-variance noise `Pipeline.generate(seed=s)` starts from for a batch of 1 of
    latent `shape` (1, C, h, w), one row per seed: to batch single-seed generations."""
    return np.concatenate(
        [np.random.default_rng(s).standard_normal(shape, dtype=np.float32) for s in seeds]
    )


class ReferenceSampler:
    """txt2img with the reference modules of a diffusers folder and `latentrt.samplers`.

    Mirrors `Pipeline.generate` for plain prompts and the default (ComfyUI) schedulers: the
    same unit-variance noise per seed, the same CFG denoiser and sampler seed, PyTorch in place
    of ONNX Runtime. Used by `--eval` and by the tests as the PyTorch side.
    """

    def __init__(self, source: str | Path, device: str = "cpu") -> None:
        from latentrt.export.checkpoint import load_components

        comps = load_components(source)
        if comps.prediction_type != "epsilon":
            raise NotImplementedError("ReferenceSampler covers epsilon-prediction models only")
        self.device = torch.device(device)
        encoder = comps.text_encoders[0]
        self.text = encoder.model.to(self.device)
        self.unet = comps.unet.to(self.device)
        self.vae = comps.vae.to(self.device)
        tok_dir = encoder.tokenizer_dir
        self.tokenizer = (
            CLIPTokenizer.from_dir(tok_dir)
            if tok_dir is not None
            else CLIPTokenizer.from_bpe_gz(None, pad_token=encoder.pad_token)
        )
        s = comps.scheduler
        self.model_sigmas = samplers.sigmas_from_alphas_cumprod(
            samplers.alphas_cumprod_for(
                s["beta_schedule"], s["beta_start"], s["beta_end"], s["num_train_timesteps"]
            )
        )
        self.downscale = self.vae.downscale

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """(B, 77, D) last hidden states of the text encoder, as the sd1 runtime conditions."""
        ids = torch.from_numpy(self.tokenizer(list(prompts))).to(self.device)
        return self.text(ids).last_hidden_state.float().cpu().numpy()

    @torch.no_grad()
    def _unet(self, sample: np.ndarray, timestep: np.ndarray, encoder_hidden_states: np.ndarray):
        args = (  # as_tensor copies the read-only arrays CFGDenoiser passes
            torch.as_tensor(np.array(a), device=self.device)
            for a in (sample, timestep, encoder_hidden_states)
        )
        return self.unet(*args).float().cpu().numpy()

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        sampler: str = "euler",
        steps: int = 20,
        guidance: float = 7.5,
        scheduler: str = "normal",
        negative_prompt: str = "",
        width: int = RESOLUTION,
        height: int = RESOLUTION,
    ) -> np.ndarray:
        """(B, H, W, 3) images in [0, 1]; prompt i starts from `Pipeline`'s noise for seeds[i]."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
        shape = (
            1,
            self.vae.config.latent_channels,
            height // self.downscale,
            width // self.downscale,
        )
        noise = pipeline_noise(seeds, shape)
        guided = guidance > 1.0
        cond = Conditioning(
            self.encode(prompts), self.encode([negative_prompt] * len(prompts)) if guided else None
        )
        denoiser = CFGDenoiser(self._unet, self.model_sigmas, "epsilon", cond, guidance)
        sigmas = samplers.get_sigmas(scheduler, steps, self.model_sigmas)
        x = noise * np.float32(np.sqrt(sigmas[0] ** 2 + 1.0))
        sampler_seed = int(np.random.default_rng(seeds[0]).integers(2**63))
        x = samplers.sample(sampler, denoiser, x, sigmas, seed=sampler_seed)
        z = torch.from_numpy(x / np.float32(self.vae.config.scaling_factor)).to(self.device)
        image = self.vae.decode(z).float().cpu().numpy()
        return np.clip(image / 2.0 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)


EVAL_PROMPTS = (
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "a green star",
    "a purple diamond",
    "a white circle on a black background",
    "an orange square on a blue background",
    "a black triangle on a yellow background",
    "a red star on a white background",
    "a blue diamond on a green background",
)
EVAL_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc")


def evaluate(
    source: str | Path,
    device: str = "cpu",
    prompts: Sequence[str] = EVAL_PROMPTS,
    seeds: Sequence[int] = tuple(range(16)),
    sampler_names: Sequence[str] = EVAL_SAMPLERS,
    guidance: float = 7.5,
    steps: int = 20,
    batch: int = 256,
) -> dict:
    """Share of (prompt, seed) images whose foreground colour and shape the checker confirms."""
    from latentrt.export.shape_checker import default_checker, parse_prompt

    ref = ReferenceSampler(source, device)
    checker = default_checker()
    jobs = [(p, s) for p in prompts for s in seeds]
    report: dict = {"guidance": guidance, "steps": steps, "per_sampler": {}, "per_prompt": {}}
    for name in sampler_names:
        verdicts = []
        for i in range(0, len(jobs), batch):
            chunk = jobs[i : i + batch]
            images = ref.generate(
                [p for p, _ in chunk], [s for _, s in chunk], name, steps, guidance
            )
            verdicts += checker.classify_batch(images)
        ok = [v.matches(*parse_prompt(p)) for (p, _), v in zip(jobs, verdicts, strict=True)]
        report["per_sampler"][name] = float(np.mean(ok))
        for (p, _), hit in zip(jobs, ok, strict=True):
            report["per_prompt"].setdefault(p, []).append(bool(hit))
    report["per_prompt"] = {p: float(np.mean(v)) for p, v in report["per_prompt"].items()}
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: train (and optionally evaluate) the embedded default model."""
    p = argparse.ArgumentParser(
        prog="python -m latentrt.export.train", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True, help="diffusers folder to write")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--eval", action="store_true", help="then judge generations with the checker")
    p.add_argument("--eval-guidance", type=float, nargs="+", default=[7.5])
    p.add_argument("--grid", help="with --eval: write a PNG grid of euler samples here")
    defaults = Recipe()
    for f in dataclasses.fields(Recipe):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            help=f"recipe: {f.name} (default %(default)s)",
        )
    args = p.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    root = train(args.out, args.device, recipe, workers=args.workers)
    if args.eval:
        info = json.loads((root / "training.json").read_text())
        info["eval"] = [evaluate(root, args.device, guidance=g) for g in args.eval_guidance]
        for e in info["eval"]:
            print(f"eval guidance {e['guidance']}: {json.dumps(e['per_sampler'])}")
            print(f"  per prompt: {json.dumps(e['per_prompt'])}")
        (root / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        if args.grid:
            write_grid(root, args.grid, args.device, args.eval_guidance[-1])
    return 0


def write_grid(source: str | Path, path: str | Path, device: str, guidance: float) -> Path:
    """A PNG with one row per evaluation prompt and 8 seeds per row (euler, 20 steps)."""
    from PIL import Image

    ref = ReferenceSampler(source, device)
    prompts = [p for p in EVAL_PROMPTS for _ in range(8)]
    images = ref.generate(prompts, list(range(8)) * len(EVAL_PROMPTS), "euler", 20, guidance)
    n, h, w, _ = images.shape
    grid = images.reshape(len(EVAL_PROMPTS), 8, h, w, 3).transpose(0, 2, 1, 3, 4)
    grid = (grid.reshape(len(EVAL_PROMPTS) * h, 8 * w, 3) * 255).round().astype(np.uint8)
    Image.fromarray(grid).save(path)
    return Path(path)


if __name__ == "__main__":
    raise SystemExit(main())
