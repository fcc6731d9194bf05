"""latentrt.graphs: ONNX -> ONNX passes per target (cleanup, fp16, fusions) and their recipes."""

from latentrt.graphs.cleanup import cleanup, fix_shapes
from latentrt.graphs.fp16 import convert_fp16
from latentrt.graphs.fuse_attention import fuse_attention
from latentrt.graphs.fuse_bias import fuse_bias_split_gelu, fuse_skip_layernorm
from latentrt.graphs.fuse_groupnorm import (
    cancel_transposes,
    expand_groupnorm_plugin,
    fuse_groupnorm,
)
from latentrt.graphs.recipes import TARGETS, optimize, passes

__all__ = [
    "TARGETS",
    "cancel_transposes",
    "cleanup",
    "convert_fp16",
    "expand_groupnorm_plugin",
    "fix_shapes",
    "fuse_attention",
    "fuse_bias_split_gelu",
    "fuse_groupnorm",
    "fuse_skip_layernorm",
    "optimize",
    "passes",
]
