"""latentrt.plugins: CUDA kernel sources for the custom ops, their numpy references, a harness.

The GPU harness lives in latentrt.plugins.harness (CuPy, imported lazily there).
"""

from latentrt.plugins.reference import (
    conv3d_output_shape,
    conv3d_ref,
    groupnorm_silu_ref,
    resolve_conv3d_pads,
)

__all__ = ["conv3d_output_shape", "conv3d_ref", "groupnorm_silu_ref", "resolve_conv3d_pads"]
