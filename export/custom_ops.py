"""Torch-side emission of the `latentrt` ONNX ops (domain `latentrt`, version 1).

`groupnorm_silu` and `conv3d` compute plain PyTorch math. Inside `with plugin_ops():` they run
through autograd Functions whose `symbolic` writes one `latentrt::GroupNormSiLU` or
`latentrt::Conv3d` node when the TorchScript exporter traces them; the eager result is the same
math either way. Semantics are those of `latentrt.plugins.reference` (ONNX pad order
[d0, h0, w0, d1, h1, w1]; causal_time 1 pads time in front with zeros, 2 with the first frame).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from latentrt.plugins.reference import resolve_conv3d_pads

__all__ = [
    "CUSTOM_OPSETS",
    "DOMAIN",
    "conv3d",
    "groupnorm_silu",
    "plugin_ops",
    "plugin_ops_enabled",
]

DOMAIN = "latentrt"
CUSTOM_OPSETS = {DOMAIN: 1}

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "latentrt_plugin_ops", default=False
)


@contextmanager
def plugin_ops(enabled: bool = True) -> Iterator[None]:
    """Emit `latentrt` nodes for GroupNormSiLU and Conv3d while the block runs (export time)."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def plugin_ops_enabled() -> bool:
    """Whether `groupnorm_silu` / `conv3d` currently emit `latentrt` nodes."""
    return _ENABLED.get()


# --- plain math ---------------------------------------------------------------------------------


def _groupnorm_silu_math(
    x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, groups: int, eps: float, act: int
) -> torch.Tensor:
    y = F.group_norm(x, groups, gamma, beta, eps)
    return F.silu(y) if act else y


def _conv3d_math(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pads: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    causal_time: int,
) -> torch.Tensor:
    p = list(resolve_conv3d_pads(weight.shape[2:], pads, dilations, causal_time))
    if causal_time == 2 and p[0]:
        first = x[:, :, :1].expand(-1, -1, p[0], -1, -1)
        x = torch.cat([first, x], dim=2)
        p[0] = 0
    if any(p):
        x = F.pad(x, (p[2], p[5], p[1], p[4], p[0], p[3]))
    return F.conv3d(x, weight, bias, stride=strides, dilation=dilations)


# --- export-time Functions ----------------------------------------------------------------------


def _unknown_sizes(g_value, rank: int):
    """The value's type (dtype kept) with `rank` unknown sizes, for nodes torch cannot infer."""
    return g_value.type().with_sizes([None] * rank)


class _GroupNormSiLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, groups: int, eps: float, act: int):  # noqa: D102
        return _groupnorm_silu_math(x, gamma, beta, groups, eps, act)

    @staticmethod
    def symbolic(g, x, gamma, beta, groups: int, eps: float, act: int):  # noqa: D102
        out = g.op(
            f"{DOMAIN}::GroupNormSiLU",
            x,
            gamma,
            beta,
            num_groups_i=int(groups),
            epsilon_f=float(eps),
            activation_i=int(act),
        )
        out.setType(x.type())
        return out


class _Conv3dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, pads, strides, dilations, causal_time):  # noqa: D102
        return _conv3d_math(x, weight, bias, pads, strides, dilations, causal_time)

    @staticmethod
    def symbolic(g, x, weight, bias, pads, strides, dilations, causal_time):  # noqa: D102
        out = g.op(
            f"{DOMAIN}::Conv3d",
            x,
            weight,
            bias,
            pads_i=list(pads),
            strides_i=list(strides),
            dilations_i=list(dilations),
            causal_time_i=int(causal_time),
        )
        out.setType(_unknown_sizes(x, 5))
        return out


# --- public functions ---------------------------------------------------------------------------


def groupnorm_silu(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    num_groups: int,
    eps: float,
    activation: bool = True,
) -> torch.Tensor:
    """GroupNorm then (when `activation`) SiLU; one `latentrt::GroupNormSiLU` node under `plugin_ops`."""
    act = int(bool(activation))
    if not torch.compiler.is_compiling() and _ENABLED.get():
        return _GroupNormSiLUFn.apply(x, gamma, beta, int(num_groups), float(eps), act)
    return _groupnorm_silu_math(x, gamma, beta, num_groups, eps, act)


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pads: Sequence[int] = (0, 0, 0, 0, 0, 0),
    strides: Sequence[int] = (1, 1, 1),
    dilations: Sequence[int] = (1, 1, 1),
    causal_time: int = 0,
) -> torch.Tensor:
    """Conv3d with ONNX-order pads and fused causal time padding; a `latentrt::Conv3d` node under `plugin_ops`."""
    p = tuple(int(v) for v in pads)
    s = tuple(int(v) for v in strides)
    d = tuple(int(v) for v in dilations)
    ct = int(causal_time)
    resolve_conv3d_pads(weight.shape[2:], p, d, ct)
    if not torch.compiler.is_compiling() and _ENABLED.get():
        if bias is None:
            bias = weight.new_zeros(weight.shape[0])
        return _Conv3dFn.apply(x, weight, bias, p, s, d, ct)
    return _conv3d_math(x, weight, bias, p, s, d, ct)
