"""Building blocks shared by the reference models.

`GroupNormSiLU` stands wherever the original networks apply GroupNorm and then SiLU, so that
the ONNX exporter can later emit one fused node for the pair. Its parameters are named
`weight` and `bias`, exactly like `torch.nn.GroupNorm`, so diffusers state dicts load as-is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNormSiLU(nn.Module):
    """GroupNorm followed (optionally) by SiLU; plain PyTorch math, fused only at export time."""

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
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.silu(x) if self.act else x

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, act={self.act}"
