"""numpy references for the latentrt plugin ops (GroupNormSiLU, Conv3d), computed in float64.

They define the ops' semantics for the CUDA kernels' tests and for CPU lowering checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latentrt.errors import InputError

__all__ = ["conv3d_output_shape", "conv3d_ref", "groupnorm_silu_ref", "resolve_conv3d_pads"]

_CHANNELS_FIRST = {"NCHW", "NCDHW", "NCW"}
_CHANNELS_LAST = {"NHWC", "NDHWC", "NWC"}


def _channels_last(layout: str) -> bool:
    if layout in _CHANNELS_FIRST:
        return False
    if layout in _CHANNELS_LAST:
        return True
    raise InputError(f"unknown layout {layout!r}: expected NCHW/NCDHW or NHWC/NDHWC")


def _silu(y: np.ndarray) -> np.ndarray:
    # y * sigmoid(y), with sigmoid written through tanh so no exp overflows.
    return y * 0.5 * (1.0 + np.tanh(0.5 * y))


def groupnorm_silu_ref(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    num_groups: int,
    epsilon: float = 1e-5,
    activation: int = 1,
    layout: str = "NCHW",
) -> np.ndarray:
    """GroupNorm (population variance per (sample, group)) then SiLU when activation == 1.

    x is (N, C, *spatial) for channels-first layouts or (N, *spatial, C) for channels-last.
    The result has x's dtype; the arithmetic is float64.
    """
    if activation not in (0, 1):
        raise InputError(f"activation must be 0 (identity) or 1 (silu), got {activation}")
    last = _channels_last(layout)
    xf = np.asarray(x, dtype=np.float64)
    if xf.ndim < 2:
        raise InputError(f"GroupNormSiLU needs a (N, C, ...) tensor, got shape {xf.shape}")
    if last:
        xf = np.moveaxis(xf, -1, 1)
    n, c = xf.shape[:2]
    if num_groups <= 0 or c % num_groups != 0:
        raise InputError(f"{c} channels do not split into {num_groups} groups")
    if np.shape(gamma) != (c,) or np.shape(beta) != (c,):
        raise InputError(f"gamma/beta must have shape ({c},)")
    g = xf.reshape(n, num_groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((g - mean) / np.sqrt(var + epsilon)).reshape(xf.shape)
    bshape = (1, c) + (1,) * (xf.ndim - 2)
    y = y * np.asarray(gamma, np.float64).reshape(bshape) + np.asarray(beta, np.float64).reshape(
        bshape
    )
    if activation == 1:
        y = _silu(y)
    if last:
        y = np.moveaxis(y, 1, -1)
    return y.astype(np.asarray(x).dtype, copy=False)


def resolve_conv3d_pads(
    kernel: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    causal_time: int,
) -> tuple[int, int, int, int, int, int]:
    """Effective ONNX-order pads [d0, h0, w0, d1, h1, w1] once causal_time is applied.

    With causal_time 1 or 2 the temporal pads become (dilation_t * (kT - 1), 0); the given
    temporal pads must then be zeros or already equal to that.
    """
    if len(pads) != 6:
        raise InputError(f"pads must have 6 entries (d0 h0 w0 d1 h1 w1), got {list(pads)}")
    if causal_time not in (0, 1, 2):
        raise InputError(f"causal_time must be 0, 1 (zeros) or 2 (replicate), got {causal_time}")
    p = [int(v) for v in pads]
    if min(p) < 0:
        raise InputError(f"negative pads {p}")
    if causal_time:
        front = int(dilations[0]) * (int(kernel[0]) - 1)
        if (p[0], p[3]) not in ((0, 0), (front, 0)):
            raise InputError(
                f"causal_time={causal_time} pads time by ({front}, 0); pads give ({p[0]}, {p[3]})"
            )
        p[0], p[3] = front, 0
    return (p[0], p[1], p[2], p[3], p[4], p[5])


def conv3d_output_shape(
    spatial: Sequence[int],
    kernel: Sequence[int],
    pads: Sequence[int] = (0, 0, 0, 0, 0, 0),
    strides: Sequence[int] = (1, 1, 1),
    dilations: Sequence[int] = (1, 1, 1),
    causal_time: int = 0,
) -> tuple[int, int, int]:
    """Output (D, H, W) of Conv3d for input (D, H, W) and kernel (kT, kH, kW)."""
    p = resolve_conv3d_pads(kernel, pads, dilations, causal_time)
    out = []
    for i in range(3):
        span = int(spatial[i]) + p[i] + p[i + 3] - int(dilations[i]) * (int(kernel[i]) - 1) - 1
        if span < 0 or int(strides[i]) <= 0:
            raise InputError(f"Conv3d window does not fit: input {tuple(spatial)}, kernel {kernel}")
        out.append(span // int(strides[i]) + 1)
    return (out[0], out[1], out[2])


def conv3d_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    pads: Sequence[int] = (0, 0, 0, 0, 0, 0),
    strides: Sequence[int] = (1, 1, 1),
    dilations: Sequence[int] = (1, 1, 1),
    causal_time: int = 0,
    layout: str = "NCDHW",
) -> np.ndarray:
    """Conv3d with ONNX pads, strides, dilations and causal temporal padding (float64 math).

    x: (N, Cin, D, H, W) or (N, D, H, W, Cin) for NDHWC; w: (Cout, Cin, kT, kH, kW) in both.
    causal_time 1 pads time in front with zeros, 2 with copies of the first frame.
    """
    last = _channels_last(layout)
    xf = np.asarray(x, dtype=np.float64)
    wf = np.asarray(w, dtype=np.float64)
    if xf.ndim != 5 or wf.ndim != 5:
        raise InputError(f"Conv3d needs 5-D x and w, got {xf.shape} and {wf.shape}")
    if last:
        xf = np.moveaxis(xf, -1, 1)
    if wf.shape[1] != xf.shape[1]:
        raise InputError(f"weight has {wf.shape[1]} input channels, x has {xf.shape[1]}")
    kernel = wf.shape[2:]
    p = resolve_conv3d_pads(kernel, pads, dilations, causal_time)
    conv3d_output_shape(xf.shape[2:], kernel, p, strides, dilations, 0)
    if causal_time == 2:
        xf = np.pad(xf, ((0, 0), (0, 0), (p[0], 0), (0, 0), (0, 0)), mode="edge")
        p = (0, p[1], p[2], p[3], p[4], p[5])
    xf = np.pad(xf, ((0, 0), (0, 0), (p[0], p[3]), (p[1], p[4]), (p[2], p[5])))
    span = tuple(int(dilations[i]) * (int(kernel[i]) - 1) + 1 for i in range(3))
    win = np.lib.stride_tricks.sliding_window_view(xf, span, axis=(2, 3, 4))
    win = win[
        :,
        :,
        :: int(strides[0]),
        :: int(strides[1]),
        :: int(strides[2]),
        :: int(dilations[0]),
        :: int(dilations[1]),
        :: int(dilations[2]),
    ]
    y = np.tensordot(win, wf, axes=([1, 5, 6, 7], [1, 2, 3, 4]))  # (N, Do, Ho, Wo, Cout)
    if b is not None:
        y = y + np.asarray(b, np.float64)
    y = y if last else np.moveaxis(y, -1, 1)
    return np.ascontiguousarray(y).astype(np.asarray(x).dtype, copy=False)
