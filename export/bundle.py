"""`export_bundle`: checkpoint in, bundle directory out (the contract of DESIGN.md).

The bundle is built in a temporary directory beside its destination and renamed into place,
so a failed or interrupted export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime
import torch

import latentrt
from latentrt.errors import BundleError, ExportError
from latentrt.export import onnx as onnx_export
from latentrt.export.checkpoint import Components, file_hash, load_components
from latentrt.runtime.atomic import replace_dir
from latentrt.runtime.bundle import FORMAT_NAME, FORMAT_VERSION, MANIFEST
from latentrt.runtime.tokenizer import CLIPTokenizer

PRECISIONS = ("fp32", "fp16")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")
# Valid generation sizes in pixels and batch sizes the bundle promises (dynamic axes allow more;
# these are what `check`, TensorRT profiles and the runtime's input validation use).
SHAPES = {
    "sd1": {"height": [64, 1024], "width": [64, 1024]},
    "sd2": {"height": [64, 1536], "width": [64, 1536]},
    "sdxl": {"height": [64, 2048], "width": [64, 2048]},
    "sdxl-refiner": {"height": [64, 2048], "width": [64, 2048]},
}
# Default generation size per family (the resolution each was trained at).
DEFAULT_SIZE = {"sd1": 512, "sd2": 768, "sdxl": 1024, "sdxl-refiner": 1024}
MAX_BATCH = 8


def export_bundle(
    source: str | Path,
    out: str | Path,
    *,
    precision: str = "fp32",
    prediction_type: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Export every component of `source` (diffusers folder or single .safetensors) to `out`."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file():
        raise BundleError(f"{out} exists and is not a bundle; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)

    say(f"loading {source}")
    comps = load_components(source, prediction_type=prediction_type)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest = _write_components(comps, tmp, precision, say)
        for comp in manifest["components"].values():
            comp["sha256"] = _digest(tmp / comp["file"])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"bundle written to {out}")
    return out


def _digest(onnx_file: Path) -> str:
    """sha256 of an ONNX file and its external data, the key its built engines hang on."""
    h = hashlib.sha256()
    for p in (onnx_file, onnx_file.with_name(onnx_file.name + ".data")):
        if p.is_file():
            h.update(file_hash(p).encode())
    return h.hexdigest()


def _default_size(comps: Components) -> int:
    """The size the model was trained at: the UNet's sample_size in pixels, else the family's."""
    size = comps.unet.config.sample_size
    if isinstance(size, int):
        return size * 2 ** (len(comps.vae.config.block_out_channels) - 1)
    return DEFAULT_SIZE[comps.family]


def _write_components(comps: Components, root: Path, precision: str, say) -> dict:
    components: dict[str, dict] = {}
    text_encoders = []
    sdxl = comps.family.startswith("sdxl")
    for i, te in enumerate(comps.text_encoders):
        name = "text_encoder" if i == 0 else f"text_encoder_{i + 1}"
        if comps.family == "sdxl-refiner":
            name = (
                "text_encoder_2"  # the refiner keeps only the bigG encoder, named as in diffusers
            )
        # SDXL conditions on the penultimate layer of both encoders and pools only the last one
        # (bigG): the other encoder's graph stops before its last layer.
        penultimate_only = sdxl and i < len(comps.text_encoders) - 1
        tok_dir = name.replace("text_encoder", "tokenizer")
        say(f"exporting {name}")
        spec = onnx_export.export_text_encoder(
            te.model, root / f"{name}.onnx", precision, penultimate_only=penultimate_only
        )
        cfg = te.model.config
        components[name] = {"file": f"{name}.onnx", **spec.to_json()}
        _write_tokenizer(te, root / tok_dir)
        entry = {
            "component": name,
            "tokenizer": tok_dir,
            "pad_token": te.pad_token,
            "max_length": cfg.max_position_embeddings,
            "hidden_size": cfg.hidden_size,
            "projection_dim": cfg.projection_dim,
            # SD 1.x/2.x condition on the last layer; SDXL on the penultimate layer.
            "hidden_state": "penultimate_hidden_state" if sdxl else "last_hidden_state",
        }
        if sdxl:
            entry["pooled"] = None if penultimate_only else "pooled"
            entry["layer"] = -2 if penultimate_only else None
        text_encoders.append(entry)
    say("exporting unet")
    pooled_dim = comps.text_encoders[-1].model.config.projection_dim if sdxl else None
    spec = onnx_export.export_unet(
        comps.unet, root / "unet.onnx", precision, text_embeds_dim=pooled_dim
    )
    components["unet"] = {"file": "unet.onnx", **spec.to_json()}
    # SDXL's VAE overflows in fp16 (diffusers upcasts it when its config says force_upcast):
    # fp16 bundles carry an fp32 decoder too. Exported first: the fp16 exports below cast the
    # VAE's weights in place.
    upcast = sdxl and precision == "fp16" and comps.vae.config.force_upcast
    if upcast:
        say("exporting vae_decoder_fp32")
        spec = onnx_export.export_vae_decoder(comps.vae, root / "vae_decoder_fp32.onnx", "fp32")
        components["vae_decoder_fp32"] = {"file": "vae_decoder_fp32.onnx", **spec.to_json()}
    say("exporting vae_encoder")
    spec = onnx_export.export_vae_encoder(comps.vae, root / "vae_encoder.onnx", precision)
    components["vae_encoder"] = {"file": "vae_encoder.onnx", **spec.to_json()}
    say("exporting vae_decoder")
    spec = onnx_export.export_vae_decoder(comps.vae, root / "vae_decoder.onnx", precision)
    components["vae_decoder"] = {"file": "vae_decoder.onnx", **spec.to_json()}

    vae_cfg = comps.vae.config
    unet_cfg = comps.unet.config
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "family": comps.family,
        "precision": precision,
        "components": components,
        "text_encoders": text_encoders,
        "latent": {
            "channels": vae_cfg.latent_channels,
            "scaling_factor": vae_cfg.scaling_factor,
            "shift_factor": vae_cfg.shift_factor or 0.0,
            "downscale": 2 ** (len(vae_cfg.block_out_channels) - 1),
            "image_channels": vae_cfg.in_channels,
            "force_upcast": vae_cfg.force_upcast,
            "fp32_decoder": "vae_decoder_fp32" if upcast else None,
        },
        "unet": {
            "in_channels": unet_cfg.in_channels,
            "inpainting": comps.inpainting,
            "cross_attention_dim": unet_cfg.cross_attention_dim,
            "addition_embed_type": unet_cfg.addition_embed_type,
        },
        "prediction_type": comps.prediction_type,
        "scheduler": {k: v for k, v in comps.scheduler.items() if k != "prediction_type"},
        "shapes": {"batch": [1, MAX_BATCH], **SHAPES[comps.family]},
        "default_size": _default_size(comps),
        **({"sdxl": _sdxl_manifest(comps, pooled_dim)} if sdxl else {}),
        "provenance": {
            "source": Path(comps.source).name,
            "source_path": str(Path(comps.source).resolve()),
            "source_sha256": comps.source_hash,
            "exporter": f"latentrt {latentrt.__version__}",
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": onnx_export.OPSET,
        },
    }


def _sdxl_manifest(comps: Components, pooled_dim: int) -> dict:
    """The SDXL added conditioning: pooled width, time ids layout, empty-negative rule."""
    _, n_time = onnx_export.sdxl_added_dims(comps.unet, pooled_dim)
    if n_time not in (5, 6):
        raise ExportError(
            f"SDXL UNet takes {n_time} time ids; expected 6 (base: original size, crop, target "
            "size) or 5 (refiner: original size, crop, aesthetic score)"
        )
    return {
        "text_embeds_dim": pooled_dim,
        "time_ids": ["original_size", "crops_coords_top_left"]
        + (["aesthetic_score"] if n_time == 5 else ["target_size"]),
        "requires_aesthetics_score": n_time == 5,
        "force_zeros_for_empty_prompt": comps.extra.get(
            "force_zeros_for_empty_prompt", comps.family == "sdxl"
        ),
    }


def _write_tokenizer(te, dest: Path) -> None:
    """Copy the source's tokenizer files, or write the shipped CLIP vocabulary for single files."""
    dest.mkdir()
    if te.tokenizer_dir is not None and (te.tokenizer_dir / "vocab.json").is_file():
        for name in TOKENIZER_FILES:
            if (te.tokenizer_dir / name).is_file():
                shutil.copyfile(te.tokenizer_dir / name, dest / name)
        return
    CLIPTokenizer.from_bpe_gz(None, pad_token=te.pad_token).save(dest)


def is_current(source: str | Path, out: str | Path, precision: str) -> bool:
    """True when `out` is a bundle of this exporter made from the same `source` bytes."""
    from latentrt.export.checkpoint import source_hash
    from latentrt.runtime.bundle import Bundle

    try:
        manifest = Bundle.open(out).manifest
    except BundleError:
        return False
    prov = manifest.get("provenance", {})
    return (
        manifest.get("precision") == precision
        and prov.get("exporter") == f"latentrt {latentrt.__version__}"
        and prov.get("source_sha256") == source_hash(source)
    )
