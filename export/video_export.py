"""Chunked ONNX export of a causal video VAE, with its caches as explicit inputs and outputs.

Four graphs, so that a video of any length runs in constant memory (`latentrt.runtime.video`):

- `encoder_first`: video (B, 3, 1, H, W) -> moments, cache_out_*;
- `encoder_step`:  video (B, 3, 4k, H, W), cache_in_* -> moments, cache_out_*;
- `decoder_first`: latent (B, z, 1, h, w) -> video, cache_out_*;
- `decoder_step`:  latent (B, z, T, h, w), cache_in_* -> video, cache_out_*.

Moments are raw (logvar unclamped) and decoded frames unclamped, so the runtime can blend
spatial tiles first and then clamp, as diffusers does. Every time convolution is a
`latentrt::Conv3d` node (causal zero padding fused in the first graphs); with `lower=True`
(the default, for ORT CPU) they are rewritten to standard ONNX by `latentrt.graphs.lower_plugins`.
`video_vae.json` beside the graphs names the inputs and outputs and each cache's shape rule.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from latentrt.errors import ExportError
from latentrt.export.custom_ops import CUSTOM_OPSETS, plugin_ops
from latentrt.export.models.vae3d import AutoencoderKLWan
from latentrt.graphs.lower_plugins import MAX_IR_VERSION, count_plugin_nodes, lower_plugins
from latentrt.runtime.atomic import replace_dir

__all__ = ["MANIFEST", "OPSET", "export_video_vae"]

OPSET = 17
MANIFEST = "video_vae.json"
FORMAT_VERSION = 1


class _EncoderChunk(nn.Module):
    """(video[, caches...]) -> (moments, new caches...) for the first or a later chunk."""

    def __init__(self, model: AutoencoderKLWan, first: bool) -> None:
        super().__init__()
        self.model = model
        self.first = first

    def forward(self, video: torch.Tensor, *caches: torch.Tensor):
        moments, new = self.model.encode_chunk(video, None if self.first else list(caches))
        return (moments, *new)


class _DecoderChunk(nn.Module):
    """(latent[, caches...]) -> (frames, new caches...) for the first or a later chunk."""

    def __init__(self, model: AutoencoderKLWan, first: bool) -> None:
        super().__init__()
        self.model = model
        self.first = first

    def forward(self, latent: torch.Tensor, *caches: torch.Tensor):
        frames, new = self.model.decode_chunk(latent, None if self.first else list(caches))
        return (frames, *new)


def _cache_specs(x: torch.Tensor, caches: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Each cache's channels, frames and spatial size as a fraction of the chunk input's."""
    specs = []
    h, w = x.shape[3:]
    for i, c in enumerate(caches):
        fh, fw = Fraction(c.shape[3], h), Fraction(c.shape[4], w)
        if fh != fw:
            raise ExportError(f"cache {i} scales height by {fh} but width by {fw}")
        specs.append(
            {
                "channels": int(c.shape[1]),
                "frames": int(c.shape[2]),
                "scale": [fh.numerator, fh.denominator],
            }
        )
    return specs


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    names_in: list[str],
    names_out: list[str],
    dynamic: dict[str, dict[int, str]],
    plugins: bool,
) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), plugin_ops(plugins):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                buf,
                dynamo=False,
                input_names=names_in,
                output_names=names_out,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                custom_opsets=CUSTOM_OPSETS if plugins else None,
                do_constant_folding=True,
            )
        except Exception as e:  # torch raises many kinds; name the graph
            raise ExportError(f"exporting {type(module).__name__} failed: {e}") from e
    model = onnx.load_from_string(buf.getvalue())
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "latentrt"
    return model


def _axes(name: str, time: bool, prefix: str = "") -> dict[int, str]:
    axes = {0: "batch", 3: f"{prefix}height", 4: f"{prefix}width"}
    if time:
        axes[2] = f"{name}_frames"
    return axes


def export_video_vae(
    model: AutoencoderKLWan,
    out: str | Path,
    *,
    plugins: bool = True,
    lower: bool = True,
) -> dict[str, Any]:
    """Write the four chunk graphs and `video_vae.json` into the folder `out`; returns the manifest.

    plugins: emit `latentrt::Conv3d` nodes; lower: rewrite them to standard ONNX (ORT CPU).
    The folder is written atomically (temporary sibling, then rename); fp32 only.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty")
    model = model.float().eval()
    cfg = model.config
    sf, tf = cfg.spatial_factor, cfg.temporal_factor
    gen = torch.Generator().manual_seed(0)
    video1 = torch.rand(1, cfg.in_channels, 1, 2 * sf, 3 * sf, generator=gen) * 2 - 1
    video4 = torch.rand(1, cfg.in_channels, tf, 2 * sf, 3 * sf, generator=gen) * 2 - 1
    latent = torch.randn(1, cfg.z_dim, 1, 2, 3, generator=gen)
    with torch.no_grad():
        _, enc_caches = model.encode_chunk(video1)
        _, dec_caches = model.decode_chunk(latent)
    enc_specs = _cache_specs(video1, enc_caches)
    dec_specs = _cache_specs(latent, dec_caches)
    ins_e = [f"cache_in_{i}" for i in range(len(enc_caches))]
    outs_e = [f"cache_out_{i}" for i in range(len(enc_caches))]
    ins_d = [f"cache_in_{i}" for i in range(len(dec_caches))]
    outs_d = [f"cache_out_{i}" for i in range(len(dec_caches))]

    def cache_axes(names: list[str], specs: list[dict]) -> dict[str, dict[int, str]]:
        return {
            n: {
                0: "batch",
                3: f"c{s['scale'][0]}_{s['scale'][1]}_h",
                4: f"c{s['scale'][0]}_{s['scale'][1]}_w",
            }
            for n, s in zip(names, specs, strict=True)
        }

    jobs = {
        "encoder_first": (
            _EncoderChunk(model, True),
            (video1,),
            ["video"],
            ["moments", *outs_e],
            {"video": _axes("video", False), "moments": _axes("moments", False, "latent_")}
            | cache_axes(outs_e, enc_specs),
        ),
        "encoder_step": (
            _EncoderChunk(model, False),
            (video4, *enc_caches),
            ["video", *ins_e],
            ["moments", *outs_e],
            {"video": _axes("video", True), "moments": _axes("moments", True, "latent_")}
            | cache_axes(ins_e, enc_specs)
            | cache_axes(outs_e, enc_specs),
        ),
        "decoder_first": (
            _DecoderChunk(model, True),
            (latent,),
            ["latent"],
            ["video", *outs_d],
            {"latent": _axes("latent", False), "video": _axes("video", False, "video_")}
            | cache_axes(outs_d, dec_specs),
        ),
        "decoder_step": (
            _DecoderChunk(model, False),
            (latent, *dec_caches),
            ["latent", *ins_d],
            ["video", *outs_d],
            {"latent": _axes("latent", True), "video": _axes("video", True, "video_")}
            | cache_axes(ins_d, dec_specs)
            | cache_axes(outs_d, dec_specs),
        ),
    }
    graphs: dict[str, Any] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, (module, args, names_in, names_out, dynamic) in jobs.items():
            graph = _export(module, args, names_in, names_out, dynamic, plugins)
            counts = count_plugin_nodes(graph)
            if lower and counts:
                graph = lower_plugins(graph)
            else:
                _check(graph, name)
            onnx.save_model(graph, str(tmp / f"{name}.onnx"))
            graphs[name] = {
                "file": f"{name}.onnx",
                "inputs": names_in,
                "outputs": names_out,
                "plugin_nodes": counts,
            }
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "wan2.1-vae",
            "ops": "latentrt" if plugins and not lower else "standard",
            "dtype": "float32",
            "config": cfg.to_diffusers(),
            "z_dim": cfg.z_dim,
            "in_channels": cfg.in_channels,
            "out_channels": cfg.out_channels,
            "temporal_factor": tf,
            "spatial_factor": sf,
            "latents_mean": list(cfg.latents_mean),
            "latents_std": list(cfg.latents_std),
            "graphs": graphs,
            "encoder_caches": enc_specs,
            "decoder_caches": dec_specs,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        replace_dir(tmp, out)  # `out` is absent or empty (checked above)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check(graph: onnx.ModelProto, name: str) -> None:
    """Run the ONNX checker on graphs that hold only standard ops (custom domains are opaque)."""
    if count_plugin_nodes(graph):
        return
    try:
        onnx.checker.check_model(graph, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{name}: exported graph is not valid ONNX: {e}") from e
