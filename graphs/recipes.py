"""Per-target recipes: which passes run, in which order, at which precision.

| target | passes |
| --- | --- |
| `ort-cuda` | plugin nodes expanded, cleanup, GroupNorm(+SiLU) -> com.microsoft.GroupNorm (NHWC), or SkipGroupNorm with the Add before it and its conv biases, transpose cancellation, attention -> MultiHeadAttention (separate q, k, v: faster on CUDA than packed, BENCHMARKS.md), SkipLayerNormalization, BiasSplitGelu, fp16 (per component), cleanup |
| `ort-cpu` | plugin nodes expanded back to standard ops, cleanup, attention -> MultiHeadAttention (unpacked: the CPU kernel's form), SkipLayerNormalization, cleanup; fp32 |
| `tensorrt` | cleanup, GroupNorm(+SiLU) -> latentrt.GroupNormSiLU plugin nodes; precision is the builder's |
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from latentrt.graphs._graph import count_ops
from latentrt.graphs.cleanup import cleanup
from latentrt.graphs.fp16 import convert_fp16
from latentrt.graphs.fuse_attention import fuse_attention
from latentrt.graphs.fuse_bias import fuse_bias_split_gelu, fuse_skip_layernorm
from latentrt.graphs.fuse_groupnorm import (
    cancel_transposes,
    expand_groupnorm_plugin,
    fuse_groupnorm,
)

TARGETS = ("ort-cuda", "ort-cpu", "tensorrt")
RECIPE_VERSION = 3
# Precision per component on ort-cuda: fp16 everywhere (half the weights' memory). Text
# encoders and VAEs get an fp32 engine beside them that the runtime switches to when the fp16
# one returns NaN/Inf (the SDXL VAE does; `FALLBACK_COMPONENTS`).
CUDA_PRECISION = {
    "text_encoder": "fp16",
    "text_encoder_2": "fp16",
    "unet": "fp16",
    "vae_decoder": "fp16",
    "vae_encoder": "fp16",
}

FALLBACK_COMPONENTS = ("text_encoder", "vae")  # name prefixes

Pass = Callable[[onnx.ModelProto], onnx.ModelProto]


def passes(target: str, precision: str = "fp16") -> list[tuple[str, Pass]]:
    """The named passes `optimize` runs for `target` at `precision` ("fp16" or "fp32")."""
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
    if target == "ort-cuda":
        steps: list[tuple[str, Pass]] = [
            ("expand_plugins", expand_groupnorm_plugin),
            ("cleanup", cleanup),
            ("fuse_groupnorm", lambda m: fuse_groupnorm(m, "ort", skip=True)),
            ("cancel_transposes", cancel_transposes),
            ("fuse_attention", lambda m: fuse_attention(m, pack=False)),
            ("fuse_skip_layernorm", fuse_skip_layernorm),
            ("fuse_bias_split_gelu", fuse_bias_split_gelu),
        ]
        if precision == "fp16":
            steps.append(("fp16", convert_fp16))
        return [*steps, ("cleanup", cleanup)]
    if target == "ort-cpu":
        if precision != "fp32":
            raise ValueError("ort-cpu runs fp32 only")
        return [
            ("expand_plugins", expand_groupnorm_plugin),
            ("cleanup", cleanup),
            ("fuse_attention", lambda m: fuse_attention(m, pack=False)),
            ("fuse_skip_layernorm", fuse_skip_layernorm),
            ("cleanup", cleanup),
        ]
    if target == "tensorrt":
        return [
            ("expand_plugins", expand_groupnorm_plugin),
            ("cleanup", cleanup),
            ("fuse_groupnorm", lambda m: fuse_groupnorm(m, "plugin")),
        ]
    raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def component_precision(target: str, component: str) -> str:
    """The default precision of `component` on `target`."""
    if target == "ort-cuda":
        return CUDA_PRECISION.get(component, "fp16")
    return "fp32"


def optimize(
    model: onnx.ModelProto,
    target: str,
    component: str = "unet",
    precision: str | None = None,
    log: Callable[[str], None] | None = None,
) -> onnx.ModelProto:
    """Run `target`'s recipe on `model` (in place) and return it; `log` gets per-pass counts."""
    precision = precision or component_precision(target, component)
    for name, step in passes(target, precision):
        model = step(model)
        if log is not None:
            ops = count_ops(model)
            log(f"{component}: {name}: {len(model.graph.node)} nodes, {_fused(ops)}")
    return model


def _fused(ops: dict[str, int]) -> str:
    keys = [k for k in sorted(ops) if k.startswith(("com.microsoft.", "latentrt."))]
    return ", ".join(f"{k.split('.')[-1]} {ops[k]}" for k in keys) or "no fused ops"
