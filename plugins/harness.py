"""Launch harness: runs the plugin CUDA sources from Python through CuPy's NVRTC backend.

The same .cu files build the TensorRT plugin library (see build_shared_library). Arrays may be
CuPy arrays, objects exposing __cuda_array_interface__, or torch CUDA tensors (duck-typed, so
torch is never imported here). CuPy is imported lazily: this module imports without it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentrt.errors import BackendError, InputError
from latentrt.plugins import driver
from latentrt.plugins.reference import conv3d_output_shape, resolve_conv3d_pads

__all__ = [
    "ConvPlan",
    "GroupNormPlan",
    "TmaPlan",
    "build_shared_library",
    "conv3d",
    "conv3d_plan",
    "conv3d_narrow_plan",
    "narrow_workspace_bytes",
    "conv3d_smallc_plan",
    "conv3d_tma_plan",
    "fast_divisor",
    "groupnorm_divisor",
    "groupnorm_plan",
    "groupnorm_silu",
    "inline_common",
    "kernel_module",
    "kernel_source",
    "nvrtc_include_options",
    "pack_conv3d_weights",
]

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
_SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
_CHANNELS_LAST = {"NHWC": True, "NDHWC": True, "NCHW": False, "NCDHW": False}


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise BackendError("the plugin harness needs CuPy (pip install cupy-cuda13x)") from exc
    return cupy


def inline_common(text: str) -> str:
    """CUDA source `text` with its #include "common.cuh" replaced by the header (for NVRTC)."""
    common = (CUDA_DIR / "common.cuh").read_text().replace("#pragma once", "")
    return text.replace('#include "common.cuh"', common)


def kernel_source(name: str) -> str:
    """Source of plugins/cuda/<name> with its local #include "common.cuh" inlined (for NVRTC)."""
    return inline_common((CUDA_DIR / name).read_text())


def nvrtc_include_options() -> list[str]:
    """The -I option NVRTC needs for common.cuh's cuda_fp16.h / cuda_bf16.h (the CUDA toolkit's
    include folder, from CUDA_PATH, CUDA_HOME or /usr/local/cuda), or none if none has them."""
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").exists():
            return [f"-I{Path(root) / 'include'}"]
    return []


@functools.cache
def _module(name: str, defines: tuple[str, ...] = ()) -> Any:
    """plugins/cuda/<name> compiled by NVRTC, with `defines` as -D options (profiling builds)."""
    cupy = _cupy()
    options = [f"-D{d}" for d in defines]  # NVRTC 13 defaults to C++17, which the sources need
    options += nvrtc_include_options()
    return cupy.RawModule(code=kernel_source(name), options=tuple(options))


def kernel_module(name: str, defines: tuple[str, ...] = ()) -> Any:
    """The CuPy module of plugins/cuda/<name> the harness launches (its globals, for profiling)."""
    return _module(name, tuple(defines))


def find_nvcc() -> str | None:
    """nvcc on PATH, else the CUDA toolkit's default /usr/local/cuda/bin/nvcc, else None."""
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


@functools.cache
def _module_sm90a(name: str) -> Any:
    """plugins/cuda/<name> built by nvcc for sm_90a (wgmma needs the arch-specific target).

    NVRTC through CuPy targets plain sm_90, where the wgmma kernels trap; the cubin is cached
    under ~/.cache/latentrt by a digest of the sources and written through a temp file.
    """
    cupy = _cupy()
    nvcc = find_nvcc()
    if nvcc is None:
        raise BackendError("the sm_90a kernels need nvcc (CUDA toolkit)")
    digest = hashlib.sha256()
    for part in ("common.cuh", name):
        digest.update((CUDA_DIR / part).read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentrt"
    cubin = cache / f"{Path(name).stem}.{digest.hexdigest()[:16]}.sm_90a.cubin"
    if not cubin.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cubin.with_name(cubin.name + f".tmp-{os.getpid()}")
        cmd = [nvcc, "-cubin", "-arch=sm_90a", "-std=c++17", "-O3", "-o", str(tmp)]
        res = subprocess.run(cmd + [str(CUDA_DIR / name)], capture_output=True, text=True)
        if res.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise BackendError(f"nvcc failed ({res.returncode}):\n{res.stderr[-4000:]}")
        os.replace(tmp, cubin)
    return cupy.RawModule(path=str(cubin))


@functools.cache
def _has_wgmma(device: int) -> bool:
    """Whether `device` is an sm_90 GPU (Hopper) and nvcc can build its wgmma kernels."""
    props = _cupy().cuda.runtime.getDeviceProperties(device)
    return (int(props["major"]), int(props["minor"])) == (9, 0) and find_nvcc() is not None


@functools.cache
def _device_limits(device: int) -> tuple[int, int]:
    """(multiprocessor count, opt-in shared memory per block) of a device."""
    cupy = _cupy()
    props = cupy.cuda.runtime.getDeviceProperties(device)
    return int(props["multiProcessorCount"]), int(props["sharedMemPerBlockOptin"])


@dataclass(frozen=True)
class _Dev:
    ptr: int
    shape: tuple[int, ...]
    dtype: str
    obj: Any


def _describe(a: Any, what: str) -> _Dev:
    if hasattr(a, "data_ptr") and hasattr(a, "is_contiguous"):  # a torch tensor
        if not a.is_cuda:
            raise InputError(f"{what} is a CPU tensor; the plugin kernels need CUDA memory")
        if not a.is_contiguous():
            raise InputError(f"{what} must be contiguous")
        dtype = str(a.dtype).removeprefix("torch.")
        if dtype not in _SUFFIX:
            raise InputError(f"{what} has dtype {dtype}; expected float32, float16 or bfloat16")
        return _Dev(int(a.data_ptr()), tuple(int(s) for s in a.shape), dtype, a)
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is None:
        raise InputError(f"{what} is not a CUDA array (no __cuda_array_interface__)")
    dtype = np.dtype(cai["typestr"]).name
    if dtype not in _SUFFIX:
        raise InputError(f"{what} has dtype {dtype}; expected float32, float16 or bfloat16")
    shape = tuple(int(s) for s in cai["shape"])
    strides = cai.get("strides")
    if strides is not None:
        expect, acc = [], _ITEMSIZE[dtype]
        for s in reversed(shape):
            expect.append(acc)
            acc *= s
        if tuple(reversed(expect)) != tuple(strides):
            raise InputError(f"{what} must be C-contiguous")
    return _Dev(int(cai["data"][0]), shape, dtype, a)


def _output(like: _Dev, shape: tuple[int, ...], out: Any, what: str, stream: Any = None) -> _Dev:
    if out is not None:
        d = _describe(out, what)
        if d.shape != shape or d.dtype != like.dtype:
            raise InputError(f"{what} must be {like.dtype} {shape}, got {d.dtype} {d.shape}")
        return d
    if hasattr(like.obj, "new_empty"):
        return _describe(like.obj.new_empty(shape), what)
    if like.dtype == "bfloat16":
        raise InputError("bfloat16 CuPy inputs need an explicit out= array")
    return _describe(_cupy_empty(shape, like.dtype, stream, what), what)


def _scratch(like: _Dev, nbytes: int, stream: Any, what: str) -> _Dev:
    """At least nbytes of device scratch from the allocator `like` came from: torch's caching
    allocator for torch tensors (it serves torch.cuda.graph captures), else CuPy's pool."""
    if hasattr(like.obj, "new_empty"):
        return _describe(like.obj.new_empty((-(-nbytes // _ITEMSIZE[like.dtype]),)), what)
    return _describe(_cupy_empty((-(-nbytes // 4),), "float32", stream, what), what)


def _cupy_empty(shape: tuple[int, ...], dtype: str, stream: Any, what: str) -> Any:
    """cupy.empty, refused while `stream` is being captured: CuPy's pool cannot allocate inside
    a CUDA graph capture, so the caller passes the buffer in instead."""
    cupy = _cupy()
    if cupy.cuda.runtime.streamIsCapturing(_stream(stream).ptr):
        raise InputError(f"{what} cannot be allocated during a CUDA graph capture; pass it in")
    return cupy.empty(shape, dtype=dtype)


def _stream(stream: Any) -> Any:
    cupy = _cupy()
    if stream is None:
        return cupy.cuda.get_current_stream()
    handle = getattr(stream, "cuda_stream", getattr(stream, "ptr", stream))
    return cupy.cuda.ExternalStream(int(handle))


def _p(ptr: int) -> np.uint64:
    return np.uint64(ptr)


def _i(v: int) -> np.int32:
    return np.int32(v)


@dataclass(frozen=True)
class GroupNormPlan:
    """Launch plan of the GroupNormSiLU kernel (mirrors plan_groupnorm in groupnorm_silu.cu)."""

    cluster: int
    threads: int
    vec: int  # elements per vector access: 16 bytes' worth, 2 or 1
    cached: int  # 0 two reads; else the slice cached by: 1 the threads' loads, 2 bulk copies, 3
    # bulk copies in and bulk stores out (channels-first 16-byte vectors, channels-last TMA
    # boxes; kCache* in the .cu)
    smem: int
    tile: int = 1  # channels-last groups per cluster (1: one group, the general body)
    cap: int = 0  # vectors of a block's slice in the cache (fewer than the slice: partial)
    box: int = 0  # channels-last cached >= 2: positions a TMA box


MAX_TILE_GROUPS = 32  # kMaxTileGroups
SPLIT_STAT_BYTES = 2 * 512 * 4  # kSplitStatBytes: a straddling tile's second statistics
STATIC_SMEM_RESERVE = 8192  # both bodies' static shared memory (7.5 KB)
BLOCK_SMEM_RESERVE = 1024  # shared memory the GPU reserves per resident block (sm_80, sm_90)


def resident_clusters(cs: int, per_sm: int, sms: int) -> int:
    """Clusters of `cs` blocks resident at once at `per_sm` blocks per SM: all slots for single
    blocks and pairs, ~90% of them for larger clusters, whose placement is bound to GPCs (H100:
    30 of 8 at two per SM)."""
    return sms * per_sm // cs if cs <= 2 else sms * per_sm * 9 // 10 // cs


def one_wave_blocks(units: int, cs: int, sms: int) -> int:
    """The fewest blocks per SM (1-4) at which all `units` clusters of `cs` are resident at
    once, or 2 where none is (the clusters then run in waves)."""
    return next((b for b in (1, 2, 3, 4) if units <= resident_clusters(cs, b, sms)), 2)


@dataclass(frozen=True)
class _GnUnits:
    """The units of one GroupNormSiLU launch: `tile` groups (1: one group) read in vectors of
    `v` elements (mirrors GnUnits in groupnorm_silu.cu)."""

    n: int
    groups: int
    cg: int
    spatial: int
    tile: int
    v: int
    itemsize: int

    @property
    def count(self) -> int:
        return self.n * self.groups // self.tile

    @property
    def row_vectors(self) -> int:
        return self.tile * self.cg // self.v

    @property
    def split(self) -> bool:
        """Vectors straddle groups (a tile of 16-byte vectors the groups' channels do not fill)."""
        return self.tile > 1 and self.cg % self.v != 0

    @property
    def affine(self) -> int:
        """Dynamic shared memory ahead of the cache: per-channel scale and shift, and a
        straddling tile's second statistics."""
        split = SPLIT_STAT_BYTES if self.split else 0
        return (2 * self.tile * self.cg * 4 + 15) // 16 * 16 + split

    def slice(self, k: int) -> int:
        """Vectors of a block's slice in a cluster of k (a tile's blocks split its rows)."""
        if self.tile > 1:
            return -(-self.spatial // k) * self.row_vectors
        return -(-(self.cg * self.spatial // self.v) // k)

    def cache_bytes(self, k: int) -> int:
        return self.slice(k) * self.v * self.itemsize

    def cluster(self, sms: int, smem_optin: int) -> int:
        """Cluster size: the rule of GnUnits::cluster in the .cu."""
        cs = 1
        while cs < 8 and self.slice(cs) > 2048 and self.count * cs * 2 <= sms:
            cs *= 2
        while (
            cs < 8
            and self.slice(cs) >= 8192
            and self.count * cs * 2 <= 2 * sms
            and (self.tile == 1 or self.count <= resident_clusters(cs * 2, 2, sms))
        ):
            cs *= 2
        budget = smem_optin - STATIC_SMEM_RESERVE
        while cs < 8 and self.affine + self.cache_bytes(cs) > budget:
            cs *= 2
        return cs


def groupnorm_plan(
    n: int,
    c: int,
    spatial: int,
    num_groups: int,
    channels_last: bool,
    itemsize: int,
    aligned: bool,
    sms: int,
    smem_optin: int,
    cluster: int | None = None,
    threads: int | None = None,
    cache: int | None = None,
    per_sm: int | None = None,
    tile: int | None = None,
) -> GroupNormPlan:
    """Cluster size, block size, vector width, caching and tiling of one GroupNormSiLU launch.

    `cluster` (1, 2, 4 or 8), `threads` (256 or 512; not for tiles), `cache` (GroupNormPlan
    .cached; 1-3 cache whole slices where they fit) and `per_sm` (blocks per SM a partial cache
    is sized for) override the planner, for benchmark sweeps, and so does `tile` (channels-last
    groups a cluster normalizes: a power of two that divides the groups, read in 16-byte vectors
    where whole ones fill a row). fp16 and bf16 plan alike.
    """
    cg = c // num_groups
    vmax = 16 // itemsize
    run = cg if channels_last else spatial  # a group's contiguous runs
    v = run_v = 1 if not aligned else vmax if run % vmax == 0 else 2 if run % 2 == 0 else 1
    forced_tile, tile = tile, 1
    # Where one group's slice is not cached whole even in a cluster of 8 (it is read twice), runs
    # shorter than 64 bytes are tiled, and tiles double only while sms / 16 of them remain; else
    # runs shorter than a sector, with no such floor (see the .cu).
    one = _GnUnits(n, num_groups, cg, spatial, 1, v, itemsize)
    uncached = one.affine + one.cache_bytes(8) > smem_optin - STATIC_SMEM_RESERVE
    floor, short = (sms // 16, 64) if uncached else (1, 32)

    def widens(t: int) -> bool:  # a tile of t groups may double
        return (
            2 * t <= MAX_TILE_GROUPS
            and num_groups % (2 * t) == 0
            and n * num_groups // (2 * t) >= floor
        )

    if channels_last and cg * itemsize < short:
        while tile * cg * itemsize < 64 and widens(tile):
            tile *= 2
    # 16-byte vectors straddling groups, in tiles of whole 16-byte vectors of 64 bytes a row or
    # more; not where the clusters grow beyond two blocks and the plan above. fp32 runs of 32 to
    # 63 bytes: rows of 128 bytes or more in clusters of 8 of 512 rows a block or more, wherever
    # they grow (see the .cu).
    short32 = itemsize == 4 and 32 <= cg * itemsize < 64 and spatial >= 8 * 512
    row_min = 128 if short32 else 64
    if channels_last and aligned and cg % vmax and (vmax <= cg or 2 * cg == vmax):
        t = 1
        while widens(t):
            t *= 2
            if t * cg % vmax == 0 and (t * cg * itemsize >= row_min or not widens(t)):
                before = _GnUnits(n, num_groups, cg, spatial, tile, v, itemsize)
                after = _GnUnits(n, num_groups, cg, spatial, t, vmax, itemsize)
                if short32 or after.cluster(sms, smem_optin) <= max(
                    2, before.cluster(sms, smem_optin)
                ):
                    tile, v = t, vmax
                break
    if forced_tile is not None:
        tile, v = _forced_tile(forced_tile, num_groups, cg, channels_last, aligned, vmax, run_v)
    u = _GnUnits(n, num_groups, cg, spatial, tile, v, itemsize)
    row_vectors, units, affine = u.row_vectors, u.count, u.affine
    slice_, cache_bytes = u.slice, u.cache_bytes
    budget = smem_optin - STATIC_SMEM_RESERVE
    cs = 8 if short32 and u.split else u.cluster(sms, smem_optin)
    # Channels-last one-group slices of 16-byte vectors that clusters of 4 would cache: clusters
    # of 8 where a block's slice is still 16 KB or more and moves by TMA boxes (see the .cu).
    if (
        channels_last
        and tile == 1
        and v == vmax
        and cs == 4
        and cache_bytes(8) >= 16384
        and affine + cache_bytes(8) <= budget
        and groupnorm_tma_box(n, c, spatial, num_groups, itemsize, 8)
    ):
        cs = 8
    if cluster is not None:
        if cluster not in (1, 2, 4, 8):
            raise InputError(f"cluster must be 1, 2, 4 or 8, got {cluster}")
        cs = cluster
    if per_sm is not None and per_sm not in (1, 2, 3, 4):
        raise InputError(f"per_sm must be 1, 2, 3 or 4, got {per_sm}")
    # Blocks per SM that run all clusters in one wave, and the head of a slice each can cache.
    b = per_sm or one_wave_blocks(units, cs, sms)
    share = (smem_optin + BLOCK_SMEM_RESERVE) // b - BLOCK_SMEM_RESERVE - STATIC_SMEM_RESERVE
    cap = min(slice_(cs), max(0, share - affine) // (v * itemsize))
    cap = cap // row_vectors * row_vectors if tile > 1 else cap  # tiles cache whole rows
    # Whole slices where they fit, unless their clusters would run in uneven waves (under 90%
    # full; 256-thread blocks let three of a cluster of 8 share an SM, see the .cu).
    fits = affine + cache_bytes(cs) <= budget
    threads_whole = 256 if cs == 8 and 3 * (affine + cache_bytes(cs)) <= smem_optin else 512
    fit = (smem_optin + BLOCK_SMEM_RESERVE) // (
        affine + cache_bytes(cs) + BLOCK_SMEM_RESERVE + STATIC_SMEM_RESERVE
    )
    resident = resident_clusters(cs, max(1, min(fit, 2 if threads_whole == 512 else 4)), sms)
    waves = -(-units // resident)
    uneven = waves > 1 and 10 * units < 9 * waves * resident
    # Channels-first slices are cached in part, all clusters in one wave, where whole slices do
    # not fit or run in uneven waves and half a slice or more fits (H100: 1.02-1.12x; two reads
    # of all of it measured faster below half, channels-last re-reads 11-21% slower).
    partial = per_sm is not None or (
        cache is None and not channels_last and (not fits or uneven) and 2 * cap >= slice_(cs)
    )
    whole = fits and not partial
    # Clusters of 8 over 16-bit slices: bulk copies in and bulk stores out (6-10% faster on H100
    # at 1x512x128x128 and 1x256x256x256; slower for smaller clusters, even for fp32).
    bulk = not channels_last and v == vmax
    cached = (3 if bulk and cs == 8 and itemsize == 2 else 1) if whole else int(partial and cap > 0)
    cap = slice_(cs) if whole else cap
    # Channels-last one-group slices of 16-byte vectors cached whole may move by TMA boxes: the
    # planner's choice for clusters of 8, in and (16-bit) out (see the .cu).
    box = 0
    if channels_last and whole and tile == 1 and v == vmax:
        box = groupnorm_tma_box(n, c, spatial, num_groups, itemsize, cs)
        cached = (3 if itemsize == 2 else 2) if box and cs == 8 else cached
    if cache is not None:
        if cache not in (0, 1, 2, 3) or (cache >= 2 and not (whole and (bulk or box))):
            raise InputError(
                f"cache {cache} does not apply: 0 or 1, or 2 and 3 where a slice of 16-byte "
                f"vectors is cached whole, channels-first or in TMA boxes channels-last (it is: "
                f"{whole and bulk or bool(box)})"
            )
        cached = cache
    cap = cap if cached else 0
    box = box if channels_last and cached >= 2 else 0
    smem = affine + cap * v * itemsize + (128 if box else 0)  # the boxes' 128-byte alignment
    if tile > 1:  # whole rows per pass
        if threads is not None:
            raise InputError("threads cannot be forced for a channels-last tile")
        t = (256 if partial and b >= 3 else 512) // row_vectors * row_vectors
        return GroupNormPlan(cs, t, v, cached, smem, tile, cap)
    if threads is None:  # channels-first clusters in one wave: as many blocks as it takes
        small = b >= 3 and (partial or not channels_last)
        threads = threads_whole if whole else 256 if small else 512
    elif threads not in (256, 512):
        raise InputError(f"threads must be 256 or 512, got {threads}")
    return GroupNormPlan(cs, threads, v, cached, smem, tile, cap, box)


def groupnorm_tma_box(
    n: int, c: int, spatial: int, num_groups: int, itemsize: int, cluster: int
) -> int:
    """Positions a TMA box of a channels-last group's slice holds: the largest power of two up
    to 256 that divides a block's positions, or 0 where that is under 8 (boxes then cannot keep
    the cache's 128-byte alignment) or the maps cannot hold the tensor (rows of 16-byte
    multiples, a group at most 256 16-bit units wide, 2^31 positions)."""
    row, run = c * itemsize, c // num_groups * itemsize
    if spatial % cluster or row % 16 or run % 16 or run > 512 or n * spatial >= 2**31:
        return 0
    per = spatial // cluster
    box = math.gcd(per, 256)
    return box if box >= 8 else 0


def _forced_tile(
    tile: int, groups: int, cg: int, channels_last: bool, aligned: bool, vmax: int, v: int
) -> tuple[int, int]:
    """A forced tile and its vector width `v` (which divides the group's channels) or 16 bytes
    where whole 16-byte vectors fill a row and straddle at most two groups (the tile body's
    SPLIT)."""
    if tile & (tile - 1) or not 1 <= tile <= MAX_TILE_GROUPS or groups % tile:
        raise InputError(
            f"tile must be a power of two up to {MAX_TILE_GROUPS} that divides the {groups} "
            f"groups, got {tile}"
        )
    if tile > 1 and not channels_last:
        raise InputError("tiles are for channels-last layouts only")
    two_at_most = cg % vmax == 0 or vmax <= cg or 2 * cg == vmax  # groups a vector holds parts of
    if tile > 1 and aligned and tile * cg % vmax == 0 and two_at_most:
        return tile, vmax
    return tile, v


def fast_divisor(d: int) -> tuple[int, int]:
    """Multiply-high magic m and shift s with n // d == (mulhi(m, n) + n) >> s for every 32-bit n
    (Granlund and Montgomery), for the kernels' per-vector index math (FastDivisor in the .cu)."""
    if not 1 <= d < 1 << 32:
        raise InputError(f"divisor must be in [1, 2**32), got {d}")
    s = (d - 1).bit_length()  # ceil(log2 d)
    return (((1 << s) - d) << 32) // d + 1, s


def groupnorm_divisor(
    plan: GroupNormPlan, c: int, spatial: int, num_groups: int, channels_last: bool
) -> tuple[int, int]:
    """fast_divisor of the one-group body's divisor: the spatial size (channels-first) or vectors
    a position (channels-last); tiles index by rows and divide by nothing (1)."""
    if not channels_last:
        return fast_divisor(spatial)
    return fast_divisor(1 if plan.tile > 1 else c // num_groups // plan.vec)


def groupnorm_silu(
    x: Any,
    gamma: Any,
    beta: Any,
    num_groups: int,
    eps: float = 1e-5,
    activation: int = 1,
    layout: str = "NCHW",
    out: Any = None,
    stream: Any = None,
    cluster: int | None = None,
    threads: int | None = None,
    cache: int | None = None,
    per_sm: int | None = None,
    tile: int | None = None,
    defines: tuple[str, ...] = (),
) -> Any:
    """Fused GroupNorm + optional SiLU on the GPU; returns `out` (allocated when None).

    x is (N, C, *spatial) for NCHW/NCDHW or (N, *spatial, C) for NHWC/NDHWC. `cluster`,
    `threads`, `cache`, `per_sm` and `tile` override the planner's choices (benchmark sweeps,
    tests); `defines` builds the kernel with -D options (("LATENTRT_GN_TRACE",): the phase trace
    of the .cu).
    """
    cupy = _cupy()
    if layout not in _CHANNELS_LAST:
        raise InputError(f"unknown layout {layout!r}")
    if activation not in (0, 1):
        raise InputError(f"activation must be 0 or 1, got {activation}")
    last = _CHANNELS_LAST[layout]
    xd = _describe(x, "x")
    if len(xd.shape) < 3:
        raise InputError(f"x must be (N, C, spatial...), got {xd.shape}")
    n = xd.shape[0]
    c = xd.shape[-1] if last else xd.shape[1]
    spatial = int(np.prod(xd.shape[1:-1] if last else xd.shape[2:]))
    if num_groups <= 0 or c % num_groups:
        raise InputError(f"{c} channels do not split into {num_groups} groups")
    if c // num_groups * spatial >= 2**32 or spatial >= 2**31:
        raise InputError(f"group of {c // num_groups} x {spatial} elements is too large")
    gd, bd = _describe(gamma, "gamma"), _describe(beta, "beta")
    for d, name in ((gd, "gamma"), (bd, "beta")):
        if d.shape != (c,) or d.dtype != xd.dtype:
            raise InputError(f"{name} must be {xd.dtype} ({c},), got {d.dtype} {d.shape}")
    yd = _output(xd, xd.shape, out, "out")
    dev = cupy.cuda.runtime.getDevice()
    sms, optin = _device_limits(dev)
    plan = groupnorm_plan(
        n,
        c,
        spatial,
        num_groups,
        last,
        _ITEMSIZE[xd.dtype],
        xd.ptr % 16 == 0 and yd.ptr % 16 == 0,
        sms,
        optin,
        cluster,
        threads,
        cache,
        per_sm,
        tile,
    )
    div = groupnorm_divisor(plan, c, spatial, num_groups, last)
    if plan.box:
        _groupnorm_silu_tma(xd, gd, bd, yd, plan, (c, spatial, num_groups), eps, activation, div,
                            defines, stream)  # fmt: skip
        return yd.obj
    name = f"latentrt_gn_silu_{'nhwc' if last else 'nchw'}_{_SUFFIX[xd.dtype]}_c{plan.cluster}"
    kern = _module("groupnorm_silu.cu", tuple(defines)).get_function(name)
    kern.max_dynamic_shared_size_bytes = plan.smem
    args = (
        _p(xd.ptr),
        _p(gd.ptr),
        _p(bd.ptr),
        _p(yd.ptr),
        _i(c),
        _i(spatial),
        _i(num_groups),
        np.float32(eps),
        _i(activation),
        _i(plan.cached),
        np.uint32(plan.cap),
        _i(plan.vec),
        _i(plan.tile),
        *map(np.uint32, div),
    )
    with _stream(stream):
        kern((n * num_groups // plan.tile * plan.cluster,), (plan.threads,), args,
             shared_mem=plan.smem)  # fmt: skip
    return yd.obj


class _GnMaps(ctypes.Structure):
    """GnMaps in the .cu: the tensor maps of x and y, passed by value."""

    _fields_ = [("x", driver.TensorMap), ("y", driver.TensorMap)]


def _groupnorm_silu_tma(
    xd: _Dev,
    gd: _Dev,
    bd: _Dev,
    yd: _Dev,
    plan: GroupNormPlan,
    geometry: tuple[int, int, int],
    eps: float,
    activation: int,
    div: tuple[int, int],
    defines: Sequence[str],
    stream: Any,
) -> None:
    """Launch the channels-last kernel whose slices move by TMA boxes (plan.box positions of a
    group's channels; tensor maps of x and y as 16-bit units, positions by channels)."""
    c, spatial, groups = geometry
    units, run = c * _ITEMSIZE[xd.dtype] // 2, c // groups * _ITEMSIZE[xd.dtype] // 2
    dims, box = (units, xd.shape[0] * spatial), (run, plan.box)
    maps = _GnMaps(*(driver.encode_tiled(d.ptr, dims, box, swizzle=False) for d in (xd, yd)))
    name = f"latentrt_gn_silu_nhwc_tma_{_SUFFIX[xd.dtype]}_c{plan.cluster}"
    kern = _module("groupnorm_silu.cu", tuple(defines)).get_function(name)
    kern.max_dynamic_shared_size_bytes = plan.smem
    u64, i32, u32 = ctypes.c_uint64, ctypes.c_int32, ctypes.c_uint32
    args = [maps, *(u64(d.ptr) for d in (xd, gd, bd, yd)), *(i32(v) for v in geometry)]
    args += [ctypes.c_float(eps), i32(activation), i32(plan.cached), u32(plan.cap), u32(plan.box)]
    args += [u32(v) for v in div]
    grid = (xd.shape[0] * groups * plan.cluster, 1, 1)
    st = _stream(stream)
    with st:
        driver.launch(kern.kernel.ptr, grid, plan.threads, plan.smem, st.ptr, args)


@dataclass(frozen=True)
class ConvPlan:
    """Which Conv3d kernel runs (mirrors launch_conv3d in conv3d.cu)."""

    kernel: str
    grid: tuple[int, int, int]
    block: int
    smem: int
    tail: tuple[int, ...] = ()  # the kernel's int arguments after the ConvShape ones
    workspace: int = 0  # bytes of stream-K's workspace (the narrow-output kernel); 0: none


WGMMA_TILES_N = (128, 96, 64)
WGMMA_DEEP_STAGES = 6  # the one-CTA-per-SM pipeline, 128-wide tiles only


def wgmma_stages(tile_n: int) -> int:
    """Stages of the default (two CTAs per SM) wgmma pipeline."""
    return 4 if tile_n == 64 else 3


def wgmma_smem_bytes(tile_n: int, stages: int | None = None) -> int:
    """Dynamic shared memory of the wgmma kernel (WgmmaTiles<BN, STAGES>::SMEM_BYTES)."""
    stages = wgmma_stages(tile_n) if stages is None else stages
    return stages * (128 + tile_n) * 64 * 2 + 1024


def wgmma_tile_n(cout: int) -> int:
    """Output-channel tile of the wgmma kernel (mirrors wgmma_tile_n in conv3d.cu)."""
    if cout % 96 == 0 and cout % 128:
        return 96
    return 128 if cout > 64 else 64


def conv3d_plan(
    dtype: str,
    channels_last: bool,
    n: int,
    cin: int,
    cout: int,
    taps: int,
    positions: int,
    aligned: bool,
    sms: int,
    wgmma: bool = False,
    tile_n: int | None = None,
    stages: int | None = None,
) -> ConvPlan:
    """Which kernel: Hopper wgmma (`wgmma`: an sm_90 GPU; fp16/bf16 channels-last, Cin and Cout
    % 8 == 0), else the WMMA implicit GEMM (fp16/bf16, Cin % 32 == 0, Cin and
    Cout >= 64), else the direct kernel.

    The wgmma kernel runs the deep pipeline (6 stages, one CTA per SM) where 128-wide tiles
    leave at most one CTA per SM. `tile_n` (128, 96 or 64) and `stages` override the output-channel
    tile and the pipeline (benchmark sweeps).
    """
    lname = "ndhwc" if channels_last else "ncdhw"
    suf = _SUFFIX[dtype]
    if wgmma and aligned and dtype != "float32" and channels_last and cin % 8 == 0 == cout % 8:
        bn = wgmma_tile_n(cout) if tile_n is None else tile_n
        if bn not in WGMMA_TILES_N:
            raise InputError(f"tile_n must be one of {WGMMA_TILES_N}, got {bn}")
        grid = (-(-positions // 128), -(-cout // bn), n)
        if stages is None:
            one_per_sm = bn == 128 and grid[0] * grid[1] * grid[2] <= sms
            stages = WGMMA_DEEP_STAGES if one_per_sm else wgmma_stages(bn)
        kernel = f"latentrt_conv3d_wgmma_ndhwc_{suf}_n{bn}"
        if stages != wgmma_stages(bn):
            if bn != 128 or stages != WGMMA_DEEP_STAGES:
                raise InputError(
                    f"stages must be {wgmma_stages(bn)} or, for 128-wide tiles, "
                    f"{WGMMA_DEEP_STAGES}; got {stages}"
                )
            kernel += f"_s{stages}"
        return ConvPlan(kernel, grid, 256, wgmma_smem_bytes(bn, stages))
    if dtype != "float32" and cin % 32 == 0 and cin >= 64 and cout >= 64 and aligned:
        tiles_n = -(-positions // 128)
        bm = 128 if cout >= 128 and tiles_n * -(-cout // 128) * n >= 2 * sms else 64
        grid = (tiles_n, -(-cout // bm), n)
        # 3 stages of A (bm x 40) and B (128 x 40 channels-last, 32 x 136 channels-first) halves.
        smem = 3 * (bm * 40 + (128 * 40 if channels_last else 32 * 136)) * 2
        return ConvPlan(f"latentrt_conv3d_igemm_{lname}_{suf}_m{bm}", grid, 256, smem)
    chunk = 16384 // (taps * 32)
    if chunk >= 8:
        chunk -= chunk % 8
    chunk = min(max(chunk, 1), cin)
    v = 16 // _ITEMSIZE[dtype]
    vec = channels_last and aligned and cin % v == 0 and chunk % v == 0
    grid = (-(-positions // 128), -(-cout // 8), n)
    return ConvPlan(
        f"latentrt_conv3d_direct_{lname}_{suf}", grid, 128, chunk * taps * 32, (chunk, int(vec))
    )


SMALLC_MAX_K = 256  # SmallcTiles::MAX_K: the reduction (taps * Cin, padded to 16) it stages
SMALLC_MAX_SMEM = 113 * 1024  # two CTAs per SM


def smallc_smem_bytes(tile_n: int, kp: int, halo_elems: int) -> int:
    """Dynamic shared memory of the small-Cin kernel (SmallcTiles<BN>::smem_bytes)."""
    stage = max(128 * (tile_n + 8), tile_n * (128 + 8))
    return (
        2 * tile_n * (kp + 8) + 2 * stage + 4 * kp + 4 * tile_n + (2 * halo_elems + 15) // 16 * 16
    )


def _halo_box(
    ho: int, wo: int, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> tuple[int, int, int, int]:
    """(log2 BW, tiles_h, tiles_w, halo pixels): the 128-position box of the small-channel
    kernels over an Ho x Wo frame, and the input pixels (frames x rows x columns) its kernel
    windows touch (SmallcHalo in conv3d.cu)."""
    bw_log2, tiles_h, tiles_w = tma_box(ho, wo, 128)
    bw, bh = 1 << bw_log2, 128 >> bw_log2
    pixels = (kernel[0] - 1) * dilations[0] + 1
    pixels *= (bh - 1) * strides[1] + (kernel[1] - 1) * dilations[1] + 1
    pixels *= (bw - 1) * strides[2] + (kernel[2] - 1) * dilations[2] + 1
    return bw_log2, tiles_h, tiles_w, pixels


def conv3d_smallc_plan(
    dtype: str,
    channels_last: bool,
    n: int,
    cin: int,
    cout: int,
    kernel: Sequence[int],
    out_dhw: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    sms: int,
    smem_limit: int = SMALLC_MAX_SMEM,
) -> ConvPlan | None:
    """The small-Cin tensor-core kernel (conv3d_smallc in conv3d.cu) where it applies: fp16/bf16
    and a reduction taps * Cin of at most 256 (the RGB input conv); None otherwise. A tile is
    128 positions (a box of one output frame) x 64 or 128 channels; two CTAs per SM loop over
    the tiles. Mirrors smallc_plan in conv3d.cu."""
    kt, kh, kw = kernel
    kp = -(-(kt * kh * kw * cin) // 16) * 16
    if dtype == "float32" or kp > SMALLC_MAX_K:
        return None
    do, ho, wo = out_dhw
    bw_log2, tiles_h, tiles_w, pixels = _halo_box(ho, wo, kernel, strides, dilations)
    halo = pixels * cin
    bn = 64 if cout <= 64 else 128
    smem = smallc_smem_bytes(bn, kp, halo)
    if halo > (2**31 - 1) // 4 or smem > min(smem_limit, SMALLC_MAX_SMEM):
        return None
    tiles_n = -(-cout // bn)
    grid_x = min(n * do * tiles_h * tiles_w, max(1, 2 * sms // tiles_n))
    name = f"latentrt_conv3d_smallc_{'ndhwc' if channels_last else 'ncdhw'}_{_SUFFIX[dtype]}_n{bn}"
    return ConvPlan(name, (grid_x, tiles_n, 1), 256, smem, (n, bw_log2, tiles_h, tiles_w, kp))


def narrow_smem_bytes(taps: int, cc: int, halo_pixels: int) -> int:
    """Dynamic shared memory of the narrow-output kernel (NarrowTiles::smem_bytes)."""
    return (
        2 * 16 * (taps * cc + 8)
        + 2 * halo_pixels * (cc + 8)
        + 4 * (taps * cc // 8)
        + 4 * 2048
        + 4 * halo_pixels
    )


def narrow_workspace_bytes(ctas: int) -> int:
    """Stream-K's workspace of the narrow-output kernel: a 2048-float slot and a flag per CTA."""
    return ctas * (2048 + 1) * 4


def conv3d_narrow_plan(
    dtype: str,
    channels_last: bool,
    n: int,
    cin: int,
    cout: int,
    kernel: Sequence[int],
    out_dhw: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    smem_limit: int = SMALLC_MAX_SMEM,
    sms: int | None = None,
    ctas: int | None = None,
) -> ConvPlan | None:
    """The narrow-output tensor-core kernel (conv3d_narrow in conv3d.cu) where it applies:
    fp16/bf16 channels-last, Cin % 8 == 0 and Cout <= 16 (a VAE decoder's RGB output conv);
    None otherwise. One CTA per 128-position box; Cin in chunks of 32, 16 or 8 channels, the
    widest that fits two CTAs per SM and makes whole k16 steps. Given `sms`, more boxes than two
    CTAs per SM hold, in a count that is not a multiple of them, are shared out by stream-K over
    (box, chunk) units among 2 * sms CTAs; `ctas` (at most the boxes) forces that CTA count.
    Mirrors narrow_plan in conv3d.cu."""
    if dtype == "float32" or not channels_last or cin % 8 or cout > 16:
        return None
    taps = kernel[0] * kernel[1] * kernel[2]
    do, ho, wo = out_dhw
    bw_log2, tiles_h, tiles_w, pixels = _halo_box(ho, wo, kernel, strides, dilations)
    tiles = n * do * tiles_h * tiles_w
    if pixels > 1 << 20 or tiles >= 2**31:
        return None
    for cc in (32, 16, 8):  # the reduction of a chunk, taps x cc, must be whole k16 steps
        smem = narrow_smem_bytes(taps, cc, pixels)
        if cin % cc == 0 and taps * cc % 16 == 0 and smem <= min(smem_limit, SMALLC_MAX_SMEM):
            if ctas is None:
                slots = 2 * sms if sms else tiles
                ctas = slots if tiles > slots and tiles % slots else tiles
            elif not 1 <= ctas <= tiles:
                raise InputError(f"the narrow kernel's CTAs must be 1 to {tiles}, got {ctas}")
            return ConvPlan(
                f"latentrt_conv3d_narrow_ndhwc_{_SUFFIX[dtype]}",
                (ctas, 1, 1),
                256,
                smem,
                (n, bw_log2, tiles_h, tiles_w, cc),
                narrow_workspace_bytes(ctas) if ctas < tiles else 0,
            )
    return None


# (tile_m, tile_n, stages) of the TMA kernel; (128, 128, 3) fits two CTAs per SM, the rest one.
TMA_VARIANTS = ((128, 128, 3), (128, 192, 5), (128, 256, 4), (256, 128, 4))


@dataclass(frozen=True)
class TmaPlan:
    """Launch plan of the TMA-fed Conv3d kernel (conv3d_tma in conv3d.cu). Work comes in units
    of `cluster` tiles (neighbouring position tiles share B by multicast): `dp_tiles` units
    one cluster each, then (stream-K) the last `sk_tiles` units shared by `sk_ctas` clusters of
    `sk_iters` (unit, K step) iterations, which hand partial sums over through a float32
    workspace. `tiles_m` (position tiles) is rounded up to a multiple of `cluster`."""

    kernel: str
    smem: int
    tile_m: int
    tile_n: int
    bw_log2: int
    tiles_h: int
    tiles_w: int
    tiles_m: int
    nk: int
    dp_tiles: int
    sk_tiles: int
    sk_ctas: int
    sk_iters: int
    cluster: int = 1
    sub_log2: int = 0  # a tile is 1 << sub_log2 boxes of tile_m >> sub_log2 positions
    im2col: bool = False  # A by one im2col load of tile_m consecutive positions (no boxes)

    @property
    def workspace_elems(self) -> int:
        """float32 elements of stream-K's workspace: a partial tile per CTA, then a flag each."""
        return self.sk_ctas * self.cluster * (self.tile_m * self.tile_n + 1)


def tma_smem_bytes(tile_m: int, tile_n: int, stages: int) -> int:
    """Dynamic shared memory of the TMA kernel (TmaTiles<BM, BN, STAGES>::SMEM_BYTES)."""
    return stages * (tile_m + tile_n) * 128 + 1024 + 16 * stages


def tma_boxes(ho: int, wo: int, tile_m: int = 128, max_sub_log2: int = 2) -> tuple[int, ...]:
    """(log2 boxes per tile, log2 BW, tiles_h, tiles_w): the BH x BW boxes that cover an Ho x Wo
    frame with the fewest idle positions, a tile of `tile_m` positions being 1, 2, 4 or 8 boxes
    (up to 1 << max_sub_log2; the TMA kernel takes up to 4 at 128 positions, 8 at 256); on a
    tie the fewest boxes, then the widest. Smaller boxes fit frames like 60 x 104 (4 x 8 boxes,
    none idle, against 6.7% idle in 16 x 8 ones)."""
    best = None
    for sub in range(max_sub_log2 + 1):
        pb = tile_m >> sub
        for lg in range(pb.bit_length() - 1, 2, -1):
            bw, bh = 1 << lg, pb >> lg
            th, tw = -(-ho // bh), -(-wo // bw)
            if best is None or th * bh * tw * bw < best[0]:
                best = (th * bh * tw * bw, sub, lg, th, tw)
    return best[1:]


def tma_box(ho: int, wo: int, tile_m: int = 128) -> tuple[int, int, int]:
    """(log2 BW, tiles_h, tiles_w): the one BH x BW box of `tile_m` positions with the fewest
    idle positions over an Ho x Wo frame (the wider box on a tie)."""
    return tma_boxes(ho, wo, tile_m, 0)[1:]


def tma_supported(
    dtype: str,
    channels_last: bool,
    cin: int,
    cout: int,
    strides: Sequence[int],
    dilations: Sequence[int],
) -> bool:
    """Whether the TMA kernel covers the case (a Hopper GPU is checked by the caller)."""
    return (
        dtype in ("float16", "bfloat16")
        and channels_last
        and cin % 64 == 0
        and cout % 8 == 0
        and tuple(strides) == (1, 1, 1)
        and tuple(dilations) == (1, 1, 1)
    )


def tma_im2col_supported(kernel: Sequence[int], pads: Sequence[int], causal_time: int) -> bool:
    """Whether TMA's im2col mode can load the TMA kernel's input tiles: zero padding (not
    replicate), bounding-box corners in [-16, 15] (pads <= 15) and at most 16 taps a dimension.
    Mirrors tma_im2col_supported in conv3d.cu."""
    return causal_time != 2 and max(pads) <= 15 and max(kernel) <= 16


def tma_tiles_for(cout: int, tiles_m: int, sms: int) -> tuple[int, int, int]:
    """The (tile_m, tile_n, stages) variant with the fewest idle output channels; on a tie the
    one whose CTA does the most work per byte of shared memory read (n256, n192, then m256).
    Where 128 channels win (m256) but leave SMs idle and 128 x 128 tiles still fit one wave,
    those (two CTAs per SM) win. Wider tiles with small grids are left to clusters and stream-K
    (H100, 1x384x5x32x32: n192 in clusters with stream-K 0.0847 ms, 128 x 128 0.0944)."""
    order = [(128, 256, 4), (128, 192, 5), (256, 128, 4)]
    bm, bn, st = min(order, key=lambda v: -(-cout // v[1]) * v[1])
    m = tiles_m * 128 // bm  # position tiles at this variant's tile_m (approximately)
    if bn == 128 and m * -(-cout // bn) < sms and tiles_m * -(-cout // 128) <= sms:
        return 128, 128, 3
    return bm, bn, st


def conv3d_tma_plan(
    dtype: str,
    n: int,
    cin: int,
    cout: int,
    kernel: Sequence[int],
    out_shape: Sequence[int],
    sms: int,
    tile_n: int | None = None,
    stages: int | None = None,
    tile_m: int | None = None,
    streamk: int | None = None,
    cluster: int | None = None,
    resident: int | None = None,
    im2col: bool | None = None,
) -> TmaPlan:
    """Tile variant, cluster size and stream-K split of the TMA kernel.

    By default tiles 192 or 256 channels wide run in clusters of two (B multicast halves their
    L2 traffic, which bounds these shapes), and stream-K takes all units unless the last wave is
    at least 90% full. Without stream-K (`streamk` 0, as in the C launcher) they run one CTA per
    tile. 128-channel tiles run one CTA per tile, with stream-K for a last partial wave under a
    quarter of the SMs after full ones. `tile_m`, `tile_n`, `stages`, `cluster` (1, 2, or 4
    for 128 x 192 and 128 x 256 tiles: B shared by four position tiles) and
    `streamk` (how many of the last units stream-K shares) force the plan (tests and sweeps).
    `resident` bounds the stream-K clusters to those the GPU holds at once (their hand-over
    waits on each other); sms // cluster by default. `im2col` loads A by TMA's im2col mode:
    a tile is `tile_m` consecutive output positions, across rows and frames (zero padding only;
    the caller says False where it does not apply). By default it does where the boxes would
    leave idle positions or split a tile (H100, 60 x 104 frames: 1.14-1.22x over four 4 x 8 boxes;
    frames boxes tile exactly ran 0-4% faster in boxes).
    """
    do, ho, wo = out_shape
    sub, _, th, tw = tma_boxes(ho, wo)
    bm, bn, st = tma_tiles_for(cout, -(-n * do * th * tw // (1 << sub)), sms)
    if tile_n is not None or tile_m is not None or stages is not None:
        bm, bn = tile_m or 128, tile_n or 128
        st = stages or {(v[0], v[1]): v[2] for v in TMA_VARIANTS}.get((bm, bn), 0)
    if (bm, bn, st) not in TMA_VARIANTS:
        raise InputError(
            f"(tile_m, tile_n, stages) must be one of {TMA_VARIANTS}, got {(bm, bn, st)}"
        )
    cl = cluster or (2 if bn > 128 and streamk != 0 else 1)
    if cl not in (1, 2, 4) or (cl == 4 and (bm, bn) not in ((128, 192), (128, 256))):
        raise InputError(
            f"cluster must be 1 or 2 (or 4 for 128 x 192 and 128 x 256 tiles), got {cl} "
            f"for {bm} x {bn} tiles"
        )
    sub, lg, th, tw = tma_boxes(ho, wo, bm, 3 if bm == 256 else 2)  # boxes >= 32 positions
    tiles = -(-n * do * th * tw // (1 << sub))  # the last tile's boxes may lie past the batch
    if im2col is None:
        im2col = sub > 0 or th * tw * bm != ho * wo << sub
    if im2col:
        sub, lg, th, tw = 0, 0, 1, 1
        tiles = -(-n * do * ho * wo // bm)
    tiles_m = -(-tiles // cl) * cl
    units = tiles_m * -(-cout // bn) // cl
    slots = sms // cl  # clusters one wave holds
    nk = kernel[0] * kernel[1] * kernel[2] * cin // 64
    rem = units % slots
    if streamk is None and cl == 2:  # H100: all units 1.0-1.16x faster, except 62 after 198
        sk = units if 0 < rem < 0.9 * slots else 0
    elif streamk is None:  # H100: a tail of 24 tiles after 264 gained 13%; 48 after 528 lost 7%
        sk = rem if units > slots and rem <= 0.25 * slots else 0
    else:
        sk = min(max(streamk, 0), units)
    ctas = min(slots if resident is None else max(resident, 1), slots, sk * nk)
    iters = -(-sk * nk // ctas) if sk else 0
    return TmaPlan(
        f"latentrt_conv3d_tma_ndhwc_{_SUFFIX[dtype]}_m{bm}_n{bn}_s{st}{f'_c{cl}' if cl > 1 else ''}",
        tma_smem_bytes(bm, bn, st),
        bm,
        bn,
        lg,
        th,
        tw,
        tiles_m,
        nk,
        units - sk,
        sk,
        -(-sk * nk // iters) if sk else 0,
        iters,
        cl,
        sub,
        im2col,
    )


@functools.cache
def _resident_clusters(device: int, kernel: str, cluster: int, smem: int) -> int:
    """Clusters of a TMA kernel `device` (the current one) holds at once."""
    kern = _module_sm90a("conv3d.cu").get_function(kernel)
    kern.max_dynamic_shared_size_bytes = smem
    return driver.max_active_clusters(kern.kernel.ptr, cluster, 288, smem)


def _conv3d_tma(
    xd: _Dev,
    pd: _Dev,
    bptr: int,
    yd: _Dev,
    geometry: tuple[int, ...],
    plan: TmaPlan,
    workspace: Any,
    stream: Any,
) -> None:
    """Launch the TMA kernel: the one-cluster-per-unit part, then the stream-K part (its flags
    zeroed, then the kernel) when the plan has one."""
    n, cin, d, h, w, cout, kt, kh, kw, do, ho, wo, pt, ph, pw, replicate = geometry
    cl = plan.cluster
    if plan.im2col:  # the box of positions of tap (0, 0, 0): front pads to back ones
        corners = (-pw, -ph, -pt), (wo - w - pw, ho - h - ph, do - d - pt)
        ta = driver.encode_im2col(xd.ptr, (cin, w, h, d, n), *corners, 64, plan.tile_m)
    else:
        box = (64, 1 << plan.bw_log2, (plan.tile_m >> plan.sub_log2) >> plan.bw_log2, 1, 1)
        ta = driver.encode_tiled(xd.ptr, (cin, w, h, d, n), box)
    tb = driver.encode_tiled(pd.ptr, (kt * kh * kw * cin, cout), (64, plan.tile_n // cl))
    kern = _module_sm90a("conv3d.cu").get_function(plan.kernel)
    kern.max_dynamic_shared_size_bytes = plan.smem
    ints = [n, cin, cout, kt, kh, kw, do, ho, wo, pt, ph, pw, replicate]
    ints += [plan.bw_log2, plan.sub_log2, plan.tiles_h, plan.tiles_w, plan.tiles_m]
    c64, c32 = ctypes.c_uint64, ctypes.c_int32
    cupy = _cupy()
    st = _stream(stream)
    with st:
        if plan.dp_tiles:
            args = [ta, tb, c64(bptr), c64(yd.ptr), c64(0)]
            args += [c32(v) for v in (*ints, 0, plan.dp_tiles, plan.nk, plan.im2col)]
            grid = (plan.dp_tiles * cl, 1, 1)
            driver.launch(kern.kernel.ptr, grid, 288, plan.smem, st.ptr, args)
        if plan.sk_tiles:
            wsd = _streamk_workspace(xd, plan.workspace_elems * 4, workspace, stream)
            ctas = plan.sk_ctas * cl
            flags = ctas * plan.tile_m * plan.tile_n * 4
            cupy.cuda.runtime.memsetAsync(wsd.ptr + flags, 0, ctas * 4, st.ptr)
            sk = (plan.dp_tiles, plan.sk_tiles, plan.sk_iters, plan.im2col)
            args = [ta, tb, c64(bptr), c64(yd.ptr), c64(wsd.ptr)] + [c32(v) for v in (*ints, *sk)]
            driver.launch(kern.kernel.ptr, (ctas, 1, 1), 288, plan.smem, st.ptr, args)


def layout_change_bytes(
    dtype: str,
    n: int,
    cin: int,
    cout: int,
    kernel: tuple[int, int, int],
    in_dhw: tuple[int, int, int],
    out_dhw: tuple[int, int, int],
    strides: Sequence[int],
    dilations: Sequence[int],
    sms: int,
    smem_limit: int,
    hopper: bool,
) -> int:
    """Bytes of the channels-last copies (input and output, each 256-byte aligned) through which
    a channels-first Conv3d runs faster, or 0 where the channels-first kernels run it: fp16/bf16
    with Cin % 8 == 0, where a channels-last kernel the channels-first side lacks applies
    (Hopper's wgmma/TMA ones with Cout % 8 == 0, or the narrow-output one) and the small-Cin
    kernel does not. Mirrors layout_change_bytes in conv3d.cu."""
    dhw, positions = math.prod(in_dhw), math.prod(out_dhw)
    if dtype == "float32" or cin % 8 or dhw >= 2**31 or positions >= 2**31:
        return 0
    args = (n, cin, cout, kernel, out_dhw, strides, dilations)
    if conv3d_smallc_plan(dtype, False, *args, sms, smem_limit) is not None:
        return 0
    if (
        not (hopper and cout % 8 == 0)
        and conv3d_narrow_plan(dtype, True, *args, smem_limit) is None
    ):
        return 0
    return -(-2 * n * cin * dhw // 256) * 256 + -(-2 * n * cout * positions // 256) * 256


def _transpose_2b(src: _Dev, dst: _Dev, batch: int, rows: int, cols: int, stream: Any) -> None:
    """[batch, rows, cols] -> [batch, cols, rows] of 16-bit elements (latentrt_transpose_2b*)."""
    pairs = rows % 2 == 0 == cols % 2 and src.ptr % 4 == 0 == dst.ptr % 4
    kern = _module("conv3d.cu").get_function(
        "latentrt_transpose_2b_pairs" if pairs else "latentrt_transpose_2b"
    )
    grid = (-(-rows // 64) * -(-cols // 64), batch, 1)
    with _stream(stream):
        kern(grid, (256,), (_p(src.ptr), _p(dst.ptr), _i(rows), _i(cols)))


def pack_conv3d_weights(w: Any, out: Any = None, stream: Any = None) -> Any:
    """Repack (Cout, Cin, kT, kH, kW) weights to the kernels' (Cout, kT, kH, kW, Cin)."""
    wd = _describe(w, "w")
    if len(wd.shape) != 5:
        raise InputError(f"w must be (Cout, Cin, kT, kH, kW), got {wd.shape}")
    cout, cin, kt, kh, kw = wd.shape
    od = _output(wd, (cout, kt, kh, kw, cin), out, "packed weights")
    kern = _module("conv3d.cu").get_function(f"latentrt_conv3d_pack_{_SUFFIX[wd.dtype]}")
    total = cout * cin * kt * kh * kw
    with _stream(stream):
        kern(
            (min(total // 256 + 1, 4096),),
            (256,),
            (_p(wd.ptr), _p(od.ptr), _i(cout), _i(cin), _i(kt * kh * kw)),
        )
    return od.obj


def conv3d(
    x: Any,
    w: Any,
    b: Any = None,
    pads: Sequence[int] = (0, 0, 0, 0, 0, 0),
    strides: Sequence[int] = (1, 1, 1),
    dilations: Sequence[int] = (1, 1, 1),
    causal_time: int = 0,
    layout: str = "NCDHW",
    out: Any = None,
    stream: Any = None,
    weights_packed: bool = False,
    tile_n: int | None = None,
    stages: int | None = None,
    tma: bool | None = None,
    streamk: int | None = None,
    workspace: Any = None,
    tile_m: int | None = None,
    cluster: int | None = None,
    layout_change: bool | None = None,
    narrow_ctas: int | None = None,
    im2col: bool | None = None,
) -> Any:
    """Conv3d with fused causal padding on the GPU; returns `out` (allocated when None).

    w is (Cout, Cin, kT, kH, kW), or (Cout, kT, kH, kW, Cin) from pack_conv3d_weights when
    weights_packed is True (as a plugin would hold constant weights). On Hopper the TMA kernel
    runs where it applies (`tma` False forbids it, True demands it). `tile_n`, `stages`,
    `tile_m` (TMA kernel: 128 or 256 positions), `cluster` (TMA kernel: 2 or 4 position tiles
    that share B by multicast) and `streamk` (TMA kernel: how many of the last units stream-K
    shares) force the plan (tests, sweeps); stream-K hands partial sums over through `workspace`
    (any CUDA array of enough bytes), allocated like x when None. A channels-first input runs
    through channels-last copies where layout_change_bytes says a channels-last kernel is faster
    (`layout_change` False keeps the channels-first kernels, True demands the copies).
    `narrow_ctas` forces the narrow-output kernel's CTA count (stream-K below one per box).
    `im2col` True has the TMA kernel load its input tiles in TMA's im2col mode (zero padding of
    at most 15 a side, kernels up to 16 taps a dimension), False in boxes of output frames.
    """
    cupy = _cupy()
    if layout not in ("NCDHW", "NDHWC"):
        raise InputError(f"Conv3d layout must be NCDHW or NDHWC, got {layout!r}")
    last = layout == "NDHWC"
    xd = _describe(x, "x")
    if len(xd.shape) != 5:
        raise InputError(f"x must be 5-D, got {xd.shape}")
    n, cin, d, h, wd_ = (xd.shape[0], xd.shape[4], *xd.shape[1:4]) if last else xd.shape
    wdesc = _describe(w, "w")
    if len(wdesc.shape) != 5 or wdesc.dtype != xd.dtype:
        raise InputError(f"w must be 5-D {xd.dtype}, got {wdesc.dtype} {wdesc.shape}")
    if weights_packed:
        cout, kt, kh, kw, wcin = wdesc.shape
    else:
        cout, wcin, kt, kh, kw = wdesc.shape
    if wcin != cin:
        raise InputError(f"w has {wcin} input channels, x has {cin}")
    if n > 65535:
        raise InputError(f"batch {n} exceeds the grid limit 65535")
    p = resolve_conv3d_pads((kt, kh, kw), pads, dilations, causal_time)
    do, ho, wo = conv3d_output_shape((d, h, wd_), (kt, kh, kw), p, strides, dilations, 0)
    positions = do * ho * wo
    if positions >= 2**31 or kt * kh * kw > 512:
        raise InputError("Conv3d output or kernel too large for the plugin kernels")
    bptr = 0
    if b is not None:
        bd = _describe(b, "b")
        if bd.shape != (cout,) or bd.dtype != xd.dtype:
            raise InputError(f"b must be {xd.dtype} ({cout},), got {bd.dtype} {bd.shape}")
        bptr = bd.ptr
    packed = w if weights_packed else pack_conv3d_weights(w, stream=stream)
    pd = _describe(packed, "packed weights")
    oshape = (n, do, ho, wo, cout) if last else (n, cout, do, ho, wo)
    yd = _output(xd, oshape, out, "out", stream)
    dev = cupy.cuda.runtime.getDevice()
    sms, optin = _device_limits(dev)
    aligned = xd.ptr % 16 == 0 and pd.ptr % 16 == 0 and yd.ptr % 16 == 0
    if not last and layout_change is not False:
        args = (n, cin, cout, (kt, kh, kw), (d, h, wd_), (do, ho, wo), strides, dilations)
        if layout_change_bytes(xd.dtype, *args, sms, optin, _has_wgmma(dev)):
            xl = _output(xd, (n, d, h, wd_, cin), None, "x's channels-last copy", stream)
            yl = _output(xd, (n, do, ho, wo, cout), None, "out's channels-last copy", stream)
            _transpose_2b(xd, xl, n, cin, d * h * wd_, stream)
            forced = dict(tile_n=tile_n, stages=stages, tma=tma, streamk=streamk)
            forced.update(workspace=workspace, tile_m=tile_m, cluster=cluster)
            forced.update(narrow_ctas=narrow_ctas, im2col=im2col)
            conv3d(xl.obj, packed, b, pads, strides, dilations, causal_time, "NDHWC", yl.obj,
                   stream, weights_packed=True, **forced)  # fmt: skip
            _transpose_2b(yl, yd, n, positions, cout, stream)
            return yd.obj
    if layout_change:
        raise InputError("no channels-last kernel runs this Conv3d faster on this GPU")
    use_tma = (
        _has_wgmma(dev) and aligned and tma_supported(xd.dtype, last, cin, cout, strides, dilations)
    )
    if tma and not use_tma:
        raise InputError(
            "the TMA kernel needs a Hopper GPU, fp16/bf16 NDHWC, Cin % 64 == 0, Cout % 8 == 0, "
            "stride and dilation 1 and 16-byte-aligned buffers"
        )
    fits = use_tma and tma_im2col_supported((kt, kh, kw), p, causal_time)
    if im2col and not fits:
        raise InputError(
            "im2col loads need the TMA kernel, zero padding of at most 15 and at most 16 taps a "
            "dimension"
        )
    im2col = im2col if im2col is not None or fits else False
    if use_tma and tma is not False:
        forced = (tile_n, stages, tile_m, streamk, cluster)
        shape = (xd.dtype, n, cin, cout, (kt, kh, kw), (do, ho, wo), sms)
        tplan = conv3d_tma_plan(*shape, *forced, im2col=im2col)
        if tplan.sk_tiles and tplan.cluster > 1:  # stream-K's clusters must all be resident
            resident = _resident_clusters(dev, tplan.kernel, tplan.cluster, tplan.smem)
            tplan = conv3d_tma_plan(*shape, *forced, resident, im2col=im2col)
        geometry = (n, cin, d, h, wd_, cout, kt, kh, kw, do, ho, wo, p[0], p[1], p[2])
        rep = 1 if causal_time == 2 else 0
        _conv3d_tma(xd, pd, bptr, yd, (*geometry, rep), tplan, workspace, stream)
        return yd.obj
    plan = conv3d_plan(
        xd.dtype,
        last,
        n,
        cin,
        cout,
        kt * kh * kw,
        positions,
        xd.ptr % 16 == 0 and pd.ptr % 16 == 0,
        sms,
        wgmma=_has_wgmma(dev) and yd.ptr % 16 == 0,
        tile_n=tile_n,
        stages=stages,
    )
    if plan.kernel.startswith("latentrt_conv3d_direct"):
        small = conv3d_smallc_plan(
            xd.dtype, last, n, cin, cout, (kt, kh, kw), (do, ho, wo), strides, dilations, sms, optin
        )
        if small is None and xd.ptr % 16 == 0 and pd.ptr % 16 == 0:
            small = conv3d_narrow_plan(
                xd.dtype, last, n, cin, cout, (kt, kh, kw), (do, ho, wo), strides, dilations,
                optin, sms, narrow_ctas,
            )  # fmt: skip
        plan = plan if small is None else small
    if narrow_ctas is not None and "narrow" not in plan.kernel:
        raise InputError("narrow_ctas applies to the narrow-output kernel, which does not run this")
    shape_args = [cin, d, h, wd_, cout, kt, kh, kw, do, ho, wo, *strides, *dilations]
    shape_args += [p[0], p[1], p[2], 1 if causal_time == 2 else 0, *plan.tail]
    args = [_p(xd.ptr), _p(pd.ptr), _p(bptr), _p(yd.ptr)] + [_i(v) for v in shape_args]
    wg = plan.kernel.startswith("latentrt_conv3d_wgmma")
    kern = (_module_sm90a if wg else _module)("conv3d.cu").get_function(plan.kernel)
    kern.max_dynamic_shared_size_bytes = plan.smem
    st = _stream(stream)
    if "narrow" in plan.kernel:  # its last argument: stream-K's workspace, or null
        wsp = 0
        if plan.workspace:
            wsd = _streamk_workspace(xd, plan.workspace, workspace, stream)
            ctas = plan.grid[0]
            cupy.cuda.runtime.memsetAsync(wsd.ptr + ctas * 2048 * 4, 0, ctas * 4, st.ptr)
            wsp = wsd.ptr
        args.append(_p(wsp))
    with st:
        kern(plan.grid, (plan.block,), tuple(args), shared_mem=plan.smem)
    return yd.obj


def _streamk_workspace(xd: _Dev, nbytes: int, workspace: Any, stream: Any) -> _Dev:
    """Stream-K's workspace: `workspace` (any CUDA array of at least nbytes, 16-byte aligned),
    or scratch allocated like x."""
    if workspace is None:
        return _scratch(xd, nbytes, stream, "stream-K's workspace")
    wsd = _describe(workspace, "workspace")
    if math.prod(wsd.shape) * _ITEMSIZE[wsd.dtype] < nbytes or wsd.ptr % 16:
        raise InputError(f"workspace must hold at least {nbytes} bytes, 16-byte aligned")
    return wsd


def build_shared_library(out: str | os.PathLike[str], arch: str = "sm_90") -> Path:
    """Compile both .cu files with nvcc into one shared library exposing the C launchers.

    arch "sm_90a" adds the Hopper wgmma Conv3d kernel to the launchers' choices.
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise BackendError("nvcc not found: the plugin library needs the CUDA toolkit")
    target = Path(out)
    cmd = [
        nvcc,
        f"-arch={arch}",
        *(["-DLATENTRT_SM90A"] if arch == "sm_90a" else []),
        "-O3",
        "-std=c++17",
        "-shared",
        "-Xcompiler",
        "-fPIC",
        "-o",
        str(target),
        str(CUDA_DIR / "groupnorm_silu.cu"),
        str(CUDA_DIR / "conv3d.cu"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise BackendError(f"nvcc failed ({res.returncode}):\n{res.stderr[-4000:]}")
    return target
