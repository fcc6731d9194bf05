"""Building blocks shared by the reference models.

`GroupNormSiLU` stands wherever the original networks apply GroupNorm and then SiLU, so that
the ONNX exporter can emit one fused node for the pair: `latentrt::GroupNormSiLU` inside
`latentrt.export.custom_ops.plugin_ops()`, plain PyTorch math otherwise. Its parameters are
named `weight` and `bias`, exactly like `torch.nn.GroupNorm`, so diffusers state dicts load as-is.
"""

from __future__ import annotations

import torch
from torch import nn

from latentrt.export.custom_ops import groupnorm_silu


class GroupNormSiLU(nn.Module):
    """GroupNorm followed (optionally) by SiLU; plain PyTorch math, one fused node under plugin_ops."""

    def __init__(
        self, num_groups: int, num_channels: int, eps: float = 1e-6, act: bool = True
    ) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.act = act
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return groupnorm_silu(x, self.weight, self.bias, self.num_groups, self.eps, self.act)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, act={self.act}"
