"""`latentrt check`: parity of a bundle's graphs on a backend against the PyTorch reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentrt.errors import BundleError
from latentrt.export import onnx as onnx_export
from latentrt.export.checkpoint import load_components
from latentrt.runtime.bundle import Bundle
from latentrt.runtime.pipeline import load_backend

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


def _inputs(bundle: Bundle, name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded inputs inside the component's valid range: batch 2, a non-square size."""
    comp = bundle.component(name)
    m = bundle.manifest
    f = m["latent"]["downscale"]
    h, w = 2 * f * 8, 2 * f * 6  # pixels; latents are h/f x w/f
    out = {}
    for key, spec in comp["inputs"].items():
        if key == "input_ids":
            te = next(t for t in m["text_encoders"] if t["component"] == name)
            ids = rng.integers(1, 400, size=(2, te["max_length"]))
            ids[:, 0], ids[:, -8:] = 49406, 49407
            out[key] = ids.astype(np.int64)
        elif key == "timestep":
            out[key] = np.array([999.0, 321.0], np.float32)
        elif key == "image":
            out[key] = rng.uniform(-1, 1, (2, spec["shape"][1], h, w)).astype(np.float32)
        elif key in ("sample", "latent"):
            out[key] = rng.standard_normal((2, spec["shape"][1], h // f, w // f)).astype(np.float32)
        else:
            shape = [2 if isinstance(s, str) and s == "batch" else s for s in spec["shape"]]
            shape = [77 if isinstance(s, str) else s for s in shape]
            out[key] = rng.standard_normal(shape).astype(np.float32)
    return out


def check_bundle(
    bundle_path: str | Path, source: str | Path | None = None, backend: str = "ort-cpu"
) -> dict:
    """Run every component on `backend` and on the PyTorch reference; report max abs errors."""
    bundle = Bundle.open(bundle_path)
    source = source or bundle.manifest["provenance"].get("source_path")
    if not source or not Path(source).exists():
        raise BundleError(
            f"{bundle.root}: the source checkpoint {source!r} is not here; pass --source"
        )
    comps = load_components(source, prediction_type=bundle.manifest["prediction_type"])
    graphs = {
        "unet": onnx_export.UNetGraph(comps.unet),
        "vae_encoder": onnx_export.VAEEncoderGraph(comps.vae),
        "vae_decoder": onnx_export.VAEDecoderGraph(comps.vae),
        "vae_decoder_fp32": onnx_export.VAEDecoderGraph(comps.vae),
    }
    for te_spec, te in zip(bundle.manifest["text_encoders"], comps.text_encoders, strict=True):
        graphs[te_spec["component"]] = onnx_export.TextEncoderGraph(
            te.model, penultimate_only=te_spec.get("layer") == -2
        )
    runners = load_backend(bundle, backend)
    rng = np.random.default_rng(0)
    report = {"backend": backend, "precision": bundle.manifest["precision"], "components": {}}
    for name, runner in runners.items():
        tol = TOLERANCE["fp32" if name.endswith("_fp32") else bundle.manifest["precision"]]
        feeds = _inputs(bundle, name, rng)
        got = runner(**feeds)
        with torch.no_grad():
            ref = graphs[name].float()(*(torch.from_numpy(v) for v in feeds.values()))
        ref = ref if isinstance(ref, tuple) else (ref,)
        err = 0.0
        finite = True
        for out_name, r in zip(bundle.component(name)["outputs"], ref, strict=True):
            g = got[out_name].astype(np.float32)
            finite &= bool(np.isfinite(g).all())
            err = max(err, float(np.abs(g - r.numpy()).max()))
        report["components"][name] = {
            "max_abs_err": err,
            "tolerance": tol,
            "finite": finite,
            "ok": finite and err <= tol,
        }
    return report
