"""CUDA driver-API calls the TMA-fed kernels need, through ctypes on libcuda.

A kernel that takes a CUtensorMap by value (`const __grid_constant__`) cannot be launched
through CuPy's argument packing, so these kernels are launched with cuLaunchKernel directly;
the tensor maps come from cuTensorMapEncodeTiled. Nothing here imports CuPy or torch.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

from latentrt.errors import BackendError

__all__ = ["TensorMap", "encode_im2col", "encode_tiled", "launch", "max_active_clusters"]

# CUtensorMapDataType / Swizzle / L2promotion values (cuda.h); 16-bit elements move as UINT16,
# whose out-of-range fill (zero bits) is +0.0 in fp16 and bf16 alike.
_U16 = 1
_SWIZZLE_NONE = 0
_SWIZZLE_128B = 3
_L2_PROMOTION_128B = 2


class TensorMap(ctypes.Structure):
    """CUtensorMap: 128 opaque bytes, passed to a kernel by value."""

    _fields_ = [("opaque", ctypes.c_uint64 * 16)]


class _LaunchConfig(ctypes.Structure):
    """CUlaunchConfig (cuda.h), without attributes: a kernel's cluster shape is compiled in."""

    _fields_ = [
        *((f, ctypes.c_uint32) for f in ("gx", "gy", "gz", "bx", "by", "bz", "smem")),
        ("stream", ctypes.c_void_p),
        ("attrs", ctypes.c_void_p),
        ("num_attrs", ctypes.c_uint32),
    ]


@functools.cache
def _libcuda() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise BackendError(f"the TMA kernels need the CUDA driver (libcuda.so.1): {exc}") from exc
    u32, u64, vp = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p
    lib.cuTensorMapEncodeTiled.argtypes = [
        ctypes.POINTER(TensorMap), ctypes.c_int, u32, vp, ctypes.POINTER(u64),
        ctypes.POINTER(u64), ctypes.POINTER(u32), ctypes.POINTER(u32),
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    lib.cuTensorMapEncodeTiled.restype = ctypes.c_int
    ip = ctypes.POINTER(ctypes.c_int)
    lib.cuTensorMapEncodeIm2col.argtypes = [
        ctypes.POINTER(TensorMap), ctypes.c_int, u32, vp, ctypes.POINTER(u64),
        ctypes.POINTER(u64), ip, ip, u32, u32, ctypes.POINTER(u32),
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    lib.cuTensorMapEncodeIm2col.restype = ctypes.c_int
    lib.cuLaunchKernel.argtypes = [vp, u32, u32, u32, u32, u32, u32, u32, vp, vp, vp]
    lib.cuLaunchKernel.restype = ctypes.c_int
    lib.cuOccupancyMaxActiveClusters.argtypes = [
        ctypes.POINTER(ctypes.c_int),
        vp,
        ctypes.POINTER(_LaunchConfig),
    ]
    lib.cuOccupancyMaxActiveClusters.restype = ctypes.c_int
    return lib


def _strides(dims: Sequence[int]) -> list[int]:
    """Byte strides of a dense 16-bit tensor's outer dimensions, `dims` innermost first."""
    strides, acc = [], 2
    for d in dims[:-1]:
        acc *= int(d)
        strides.append(acc)
    return strides


def encode_tiled(
    ptr: int, dims: Sequence[int], box: Sequence[int], swizzle: bool = True
) -> TensorMap:
    """Tensor map of a dense 16-bit tensor, `dims` innermost first, loaded in `box` tiles with
    128-byte swizzling (the layout wgmma reads) or, `swizzle` off, row after row as in memory;
    coordinates outside `dims` read as zeros."""
    rank = len(dims)
    strides = _strides(dims)
    tmap = TensorMap()
    err = _libcuda().cuTensorMapEncodeTiled(
        ctypes.byref(tmap),
        _U16,
        rank,
        ctypes.c_void_p(ptr),
        (ctypes.c_uint64 * rank)(*dims),
        (ctypes.c_uint64 * max(rank - 1, 1))(*strides),
        (ctypes.c_uint32 * rank)(*box),
        (ctypes.c_uint32 * rank)(*([1] * rank)),
        0,
        _SWIZZLE_128B if swizzle else _SWIZZLE_NONE,
        _L2_PROMOTION_128B,
        0,
    )
    if err:
        raise BackendError(
            f"cuTensorMapEncodeTiled failed (CUresult {err}) for dims {list(dims)}, box {list(box)}"
        )
    return tmap


def encode_im2col(
    ptr: int,
    dims: Sequence[int],
    lower: Sequence[int],
    upper: Sequence[int],
    channels: int,
    pixels: int,
) -> TensorMap:
    """Im2col tensor map of a dense 16-bit channels-last tensor, `dims` innermost first (C, W,
    H, D, N): a load takes `channels` channels of `pixels` consecutive positions of the bounding
    box whose corners, innermost first, are `lower` and `upper` (offsets from the tensor's first
    and last positions), 128-byte swizzled; positions outside the tensor read as zeros."""
    rank = len(dims)
    spatial = rank - 2
    tmap = TensorMap()
    err = _libcuda().cuTensorMapEncodeIm2col(
        ctypes.byref(tmap),
        _U16,
        rank,
        ctypes.c_void_p(ptr),
        (ctypes.c_uint64 * rank)(*dims),
        (ctypes.c_uint64 * (rank - 1))(*_strides(dims)),
        (ctypes.c_int * spatial)(*lower),
        (ctypes.c_int * spatial)(*upper),
        channels,
        pixels,
        (ctypes.c_uint32 * rank)(*([1] * rank)),
        0,
        _SWIZZLE_128B,
        _L2_PROMOTION_128B,
        0,
    )
    if err:
        raise BackendError(
            f"cuTensorMapEncodeIm2col failed (CUresult {err}) for dims {list(dims)}, corners "
            f"{list(lower)} / {list(upper)}, {channels} x {pixels}"
        )
    return tmap


def launch(
    function: int,
    grid: Sequence[int],
    block: int,
    smem: int,
    stream: int,
    args: Sequence[ctypes._SimpleCData | ctypes.Structure],
) -> None:
    """cuLaunchKernel on a CUfunction handle with ctypes-typed arguments, in kernel order."""
    params = (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))
    err = _libcuda().cuLaunchKernel(
        ctypes.c_void_p(function), *grid, block, 1, 1, smem, ctypes.c_void_p(stream), params, None
    )
    if err:
        raise BackendError(f"cuLaunchKernel failed (CUresult {err})")


def max_active_clusters(function: int, cluster: int, block: int, smem: int) -> int:
    """How many clusters of a kernel (compiled with `cluster` CTAs each) the GPU holds at once."""
    config = _LaunchConfig(cluster, 1, 1, block, 1, 1, smem, None, None, 0)
    count = ctypes.c_int(0)
    err = _libcuda().cuOccupancyMaxActiveClusters(
        ctypes.byref(count), ctypes.c_void_p(function), ctypes.byref(config)
    )
    if err:
        raise BackendError(f"cuOccupancyMaxActiveClusters failed (CUresult {err})")
    return count.value
