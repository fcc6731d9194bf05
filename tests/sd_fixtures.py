"""Tiny Stable Diffusion pipelines built and saved by diffusers itself (the oracle side).

Each pipeline has seeded random weights and realistic structure (several levels, 32-group
GroupNorm, attention at two levels), and is written with `save_pretrained` in the diffusers
folder layout, so latentrt loads exactly what diffusers writes.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import torch

VOCAB_GZ = next(
    Path(p) / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    for p in __import__("sys").path
    if (Path(p) / "open_clip" / "bpe_simple_vocab_16e6.txt.gz").is_file()
)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def write_clip_vocab(dest: str) -> tuple[str, str]:
    """vocab.json + merges.txt of the real CLIP vocabulary, built as the original CLIP does."""
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(VOCAB_GZ).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(d / "vocab.json"), str(d / "merges.txt")


def tokenizer(tmp: Path, pad: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    vocab, merges = write_clip_vocab(str(tmp / "clip_vocab"))
    return CLIPTokenizer(vocab, merges, pad_token=pad, model_max_length=77)


def text_encoder(hidden_act: str = "quick_gelu", hidden: int = 32, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def unet(family: str = "sd1", in_channels: int = 4, context: int = 32):
    from diffusers import UNet2DConditionModel

    kw = dict(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=context,
        norm_num_groups=32,
    )
    if family == "sd1":
        kw["attention_head_dim"] = 8
    else:  # SD 2.x: heads of 8 channels here (64 in the real model), linear projections
        kw.update(attention_head_dim=(4, 8, 8), use_linear_projection=True, upcast_attention=True)
    return UNet2DConditionModel(**kw).eval()


def vae():
    from diffusers import AutoencoderKL

    m = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    ).eval()
    # A near-deterministic encoder (log-variance -30, std 3e-7): diffusers samples the latent
    # distribution with torch's RNG, latentrt with numpy's; this way both get its mean.
    with torch.no_grad():
        m.quant_conv.weight[4:] = 0
        m.quant_conv.bias[4:] = -30
    return m


def randomize(module: torch.nn.Module, seed: int, std: float = 0.08) -> None:
    """Re-draw every parameter so zero-initialized layers matter too; norms stay near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("quant_conv"):
                continue
            noise = torch.randn(p.shape, generator=g) * std
            is_norm_weight = p.ndim == 1 and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_weight else noise)


def sd_pipeline(
    root: Path,
    family: str = "sd1",
    prediction_type: str = "epsilon",
    inpaint: bool = False,
    scheduler: dict | None = None,
    seed: int = 0,
) -> Path:
    """Save a tiny diffusers SD pipeline to `root` and return the folder."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    torch.manual_seed(seed)
    act = "quick_gelu" if family == "sd1" else "gelu"
    te = text_encoder(act)
    un = unet(family, 9 if inpaint else 4)
    va = vae()
    for i, m in enumerate((te, un, va)):
        randomize(m, seed * 10 + i, std=0.05 if m is un else 0.08)
    sched = DDIMScheduler(
        **{
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
            "prediction_type": prediction_type,
        }
        | (scheduler or {})
    )
    tok = tokenizer(root.parent, pad="<|endoftext|>" if family == "sd1" else "!")
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(
        vae=va,
        text_encoder=te,
        tokenizer=tok,
        unet=un,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root, safe_serialization=True)
    return root
