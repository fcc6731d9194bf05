"""Times the plugin kernels against PyTorch on the GPU and prints tables.

GroupNorm+SiLU: fused kernel vs F.group_norm then F.silu, with achieved bandwidth against the
one-read + one-write floor (H100 HBM3 spec 3.35 TB/s, and a measured device-to-device copy).
Conv3d: fused causal padding vs F.pad + cuDNN F.conv3d (cudnn.benchmark on), fp16 and bf16.
Timing: CUDA graphs of several launches over rotating buffers (so inputs do not sit in the
50 MB L2), replayed between CUDA events; warm-up, then the median of REPS replays.

Run: python benchmarks/bench_plugins.py  [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import functools
import itertools
import statistics
from functools import partial

import torch
import torch.nn.functional as F

from latentrt.errors import InputError
from latentrt.plugins import harness

SPEC_TBPS = 3.35
REPS = 30
ROTATE_BYTES = 256 << 20  # working set per timed graph, well beyond L2


class _CurrentStream:
    """Resolves to torch's current stream at call time (the capture stream inside a graph)."""

    @property
    def cuda_stream(self) -> int:
        return torch.cuda.current_stream().cuda_stream


_CURRENT = _CurrentStream()


def _gn_silu_torch(x, g, b):
    return F.silu(F.group_norm(x, 32, g, b, 1e-5))


def _pad_conv_torch(x, w, b):
    return F.conv3d(F.pad(x, (0, 0, 0, 0, 2, 0)), w, b, padding=(0, 1, 1))


def _time_graph(fn_list: list, reps: int = REPS) -> tuple[float, str]:
    """Median milliseconds per call of the callables in fn_list (each one call)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fn_list[:3]:
            fn()
    torch.cuda.synchronize()
    mode = "graph"
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for fn in fn_list:
                fn()
        run = graph.replay
    except Exception as exc:  # eager fallback, reported in the table
        mode = f"eager ({type(exc).__name__})"
        torch.cuda.synchronize()

        def run():
            for fn in fn_list:
                fn()

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / len(fn_list))
    return statistics.median(times), mode


def _alternating_medians(variants: list[list], rounds: int = 3) -> list[float]:
    """Milliseconds per call of each variant's callables (_time_graph), the variants timed in
    turn `rounds` times and the median taken: A/B comparisons within one process."""
    times = [[] for _ in variants]
    for _ in range(rounds):
        for calls, t in zip(variants, times, strict=True):
            t.append(_time_graph(calls)[0])
    return [statistics.median(t) for t in times]


def _sets(nbytes: int) -> int:
    return max(2, min(64, ROTATE_BYTES // max(nbytes, 1)))


def _gn_inputs(shape, dtype, layout: str, k: int):
    """k input/output pairs of an NCHW `shape` stored in `layout`, plus gamma and beta."""
    n, c, h, w = shape
    stored = (n, h, w, c) if layout == "NHWC" else shape
    xs = [torch.randn(stored, device="cuda", dtype=dtype) for _ in range(k)]
    ys = [torch.empty_like(x) for x in xs]
    g = torch.randn(c, device="cuda", dtype=dtype)
    b = torch.randn(c, device="cuda", dtype=dtype)
    return xs, ys, g, b


def _gn_cases(shapes, dtypes, layout: str = "NCHW"):
    """Yields (shape, dtype name, itemsize, k, xs, ys, gamma, beta) per shape and dtype: k
    rotating input/output pairs in `layout` (_gn_inputs), freed before the next case."""
    for shape in shapes:
        for dt in dtypes:
            dtype = getattr(torch, dt)
            itemsize = torch.finfo(dtype).bits // 8
            k = _sets(2 * torch.Size(shape).numel() * itemsize)
            yield shape, dt, itemsize, k, *_gn_inputs(shape, dtype, layout, k)
            torch.cuda.empty_cache()


def _gn_calls(xs, ys, g, b, layout: str = "NCHW", **forced) -> list:
    """One harness.groupnorm_silu call per input/output pair (32 groups, SiLU), plan overrides
    in `forced`."""
    gn = harness.groupnorm_silu
    return [
        partial(gn, x, g, b, 32, 1e-5, 1, layout, out=y, stream=_CURRENT, **forced)
        for x, y in zip(xs, ys, strict=True)
    ]


def _gn_plan(shape, dt: str, layout: str) -> harness.GroupNormPlan:
    """The planner's choice for an NCHW `shape` (32 groups) of dtype `dt` stored in `layout`, on
    this GPU."""
    props = torch.cuda.get_device_properties(0)
    n, c, h, w = shape
    sms, optin = props.multi_processor_count, props.shared_memory_per_block_optin
    itemsize = torch.finfo(getattr(torch, dt)).bits // 8
    last = layout == "NHWC"
    return harness.groupnorm_plan(n, c, h * w, 32, last, itemsize, True, sms, optin)


def bench_groupnorm(shapes, dtypes, layout: str = "NCHW") -> list[str]:
    rows = [
        "| shape | layout | dtype | fused ms | unfused ms | speedup | fused TB/s | % of 3.35 spec "
        "| copy TB/s | % of copy | plan | timing |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape, dt, itemsize, k, xs, ys, g, b in _gn_cases(shapes, dtypes, layout):
        nbytes = torch.Size(shape).numel() * itemsize
        fused = _gn_calls(xs, ys, g, b, layout)
        # PyTorch on the same memory: NHWC as channels_last NCHW views.
        views = [x.permute(0, 3, 1, 2) for x in xs] if layout == "NHWC" else xs
        unfused = [partial(_gn_silu_torch, views[i], g, b) for i in range(k)]
        copy = [partial(ys[i].copy_, xs[i]) for i in range(k)]
        t_f, mode_f = _time_graph(fused)
        t_u, _ = _time_graph(unfused)
        t_c, _ = _time_graph(copy)
        bw = 2 * nbytes / (t_f * 1e-3) / 1e12
        bw_c = 2 * nbytes / (t_c * 1e-3) / 1e12
        plan = _gn_plan(shape, dt, layout)
        rows.append(
            f"| {'x'.join(map(str, shape))} | {layout} | {dt} | {t_f:.4f} | {t_u:.4f} | {t_u / t_f:.2f}x "
            f"| {bw:.2f} | {100 * bw / SPEC_TBPS:.0f}% | {bw_c:.2f} | {100 * bw / bw_c:.0f}% "
            f"| cs{plan.cluster}/{plan.threads}t/{('2-read', 'cached', 'bulk', 'bulk+store')[plan.cached]} "
            f"| {mode_f} |"
        )
        print(rows[-1], flush=True)
    return rows


def bench_gn_cache(shapes, dtypes) -> list[str]:
    """Channels-first GroupNorm+SiLU with the slice cached by the threads' loads (1), by bulk
    copies (2), and by bulk copies with bulk stores out (3), at the planner's cluster and block
    sizes, beside a copy of the tensor."""
    rows = [
        "| shape | dtype | plan | loads ms | bulk ms | bulk+store ms | copy ms | best % of copy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape, dt, _itemsize, _k, xs, ys, g, b in _gn_cases(shapes, dtypes):
        plan = _gn_plan(shape, dt, "NCHW")
        times = []
        for cache in (1, 2, 3):
            if not plan.cached:
                times.append(float("nan"))
                continue
            calls = _gn_calls(xs, ys, g, b, cache=cache)
            times.append(_time_graph(calls)[0])
        t_c = _copy_ms(xs, ys)
        rows.append(
            f"| {'x'.join(map(str, shape))} | {dt} | cs{plan.cluster}/{plan.threads}t "
            f"| {times[0]:.4f} | {times[1]:.4f} | {times[2]:.4f} | {t_c:.4f} "
            f"| {100 * t_c / min(times):.0f}% |"
        )
        print(rows[-1], flush=True)
    return rows


# (cluster, threads, blocks per SM the cache is sized for) of the partial-cache sweep
PARTIAL_PLANS = [
    (1, 512, 2),
    (1, 256, 3),
    (2, 512, 2),
    (2, 256, 3),
    (4, 512, 1),
    (4, 512, 2),
    (4, 256, 3),
    (8, 512, 2),
    (8, 256, 3),
    (8, 256, 4),
]


def bench_gn_partial(shapes, dtypes) -> list[str]:
    """Channels-first GroupNorm+SiLU whose slices outgrow shared memory: the slice's head cached
    for a given count of blocks per SM, its tail read again (from L2 where it still is), beside
    two reads of everything, the planner's plan and a copy."""
    rows = [
        "| shape | dtype | planner | "
        + " | ".join(f"cs{cs}/{t}t/{b}" for cs, t, b in PARTIAL_PLANS)
        + " | two reads | copy | planner % of copy |",
        "| --- |" + " --- |" * (len(PARTIAL_PLANS) + 6),
    ]
    for shape, dt, _itemsize, _k, xs, ys, g, b in _gn_cases(shapes, dtypes):
        plan = _gn_plan(shape, dt, "NCHW")
        t_plan = _time_graph(_gn_calls(xs, ys, g, b))[0]
        cells = []
        for cs, threads, per_sm in PARTIAL_PLANS:
            calls = _gn_calls(xs, ys, g, b, cluster=cs, threads=threads, per_sm=per_sm)
            cells.append(f"{_time_graph(calls)[0]:.4f}")
        t_two = _time_graph(_gn_calls(xs, ys, g, b, cluster=8, cache=0))[0]
        t_c = _copy_ms(xs, ys)
        n, c, h, w = shape
        slice_ = -(-(c // 32 * h * w // plan.vec) // plan.cluster)
        rows.append(
            f"| {'x'.join(map(str, shape))} | {dt} | cs{plan.cluster}/{plan.threads}t "
            f"cache {plan.cached} {plan.cap}/{slice_} {t_plan:.4f} | {' | '.join(cells)} "
            f"| {t_two:.4f} "
            f"| {t_c:.4f} | {100 * t_c / t_plan:.0f}% |"
        )
        print(rows[-1], flush=True)
    return rows


def bench_gn_waves(shapes, dtypes) -> list[str]:
    """The planner against whole-slice caches (or two reads where a slice does not fit), at the
    shapes where the planner caches part of each slice to run its clusters in one wave."""
    rows = [
        "| shape | layout | dtype | planner | ms | whole or two reads | ms | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape, layout in itertools.product(shapes, ("NCHW", "NHWC")):
        for dt in dtypes:
            dtype = getattr(torch, dt)
            itemsize = torch.finfo(dtype).bits // 8
            plan = _gn_plan(shape, dt, layout)
            props = torch.cuda.get_device_properties(0)
            n, c, h, w = shape
            limits = (props.multi_processor_count, props.shared_memory_per_block_optin)
            args = (n, c, h * w, 32, layout == "NHWC", itemsize, True, *limits)
            cache = 1
            other = harness.groupnorm_plan(*args, cluster=plan.cluster, cache=1)
            rows_ = -(-h * w // plan.cluster)
            whole = rows_ * plan.tile * (c // 32) // plan.vec if plan.tile > 1 else None
            whole = whole or -(-(c // 32 * h * w // plan.vec) // plan.cluster)
            threads = None
            if other.cap < whole:
                cache, threads = 0, None if plan.tile > 1 else 512  # no fit: two reads
            elif layout == "NCHW" and plan.vec == 16 // itemsize and plan.cluster == 8:
                cache = 3 if itemsize == 2 else 1  # the planner's whole-slice modes
            forced = {"cluster": plan.cluster, "cache": cache, "threads": threads}
            other = harness.groupnorm_plan(*args, **forced)
            if other == plan:
                continue
            k = _sets(2 * torch.Size(shape).numel() * itemsize)
            xs, ys, g, b = _gn_inputs(shape, dtype, layout, k)
            t_plan = _time_graph(_gn_calls(xs, ys, g, b, layout))[0]
            t_other = _time_graph(_gn_calls(xs, ys, g, b, layout, **forced))[0]

            def desc(p):
                return f"cs{p.cluster}/{p.threads}t/tile{p.tile} cache {p.cached} {p.cap}"

            rows.append(
                f"| {'x'.join(map(str, shape))} | {layout} | {dt} | {desc(plan)} | {t_plan:.4f} "
                f"| {desc(other)} | {t_other:.4f} | {t_other / t_plan:.2f}x |"
            )
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
    return rows


NO_L2_HINTS = ("LATENTRT_GN_NO_L2_HINTS",)


def bench_gn_l2(shapes, dtypes) -> list[str]:
    """Partial caches with and without L2 eviction priorities (the cached head evict-first,
    the re-read tail evict-last): the planner's plans, three alternating rounds, medians."""
    rows = [
        "| shape | dtype | plan | no hints ms | hints ms | no hints / hints | copy ms | % of copy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape, dt, _itemsize, _k, xs, ys, g, b in _gn_cases(shapes, dtypes):
        plan = _gn_plan(shape, dt, "NCHW")
        t_off, t_on = _alternating_medians(
            [_gn_calls(xs, ys, g, b, defines=defines) for defines in (NO_L2_HINTS, ())]
        )
        t_c = _copy_ms(xs, ys)
        rows.append(
            f"| {'x'.join(map(str, shape))} | {dt} | cs{plan.cluster}/{plan.threads}t cache "
            f"{plan.cached} cap {plan.cap} | {t_off:.4f} | {t_on:.4f} | {t_off / t_on:.3f} "
            f"| {t_c:.4f} | {100 * t_c / t_on:.0f}% |"
        )
        print(rows[-1], flush=True)
    return rows


# A copy shaped like GroupNorm+SiLU's launch: each block reads its contiguous share of the tensor
# into shared memory, waits on its cluster's barrier, then writes the share out. No statistics,
# no math: the cost of "read everything, one cross-block dependency, write everything" in one
# wave at the planner's geometry, the floor of any kernel built that way.
_SERIAL_COPY = r"""
#include "common.cuh"

template <int CS>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(512, 2)
serial_copy(const uint4* __restrict__ x, uint4* __restrict__ y, unsigned per, unsigned n16) {
  extern __shared__ uint4 buf[];
  const unsigned start = blockIdx.x * per, end = min(n16, start + per), bs = blockDim.x;
  for (unsigned v = start + threadIdx.x; v < end; v += 4 * bs) {
    uint4 p[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (v + u * bs < end) p[u] = x[v + u * bs];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      if (v + u * bs < end) buf[v + u * bs - start] = p[u];
  }
  if constexpr (CS == 1)
    __syncthreads();
  else
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;" ::: "memory");
  for (unsigned v = start + threadIdx.x; v < end; v += bs) y[v] = buf[v - start];
}

// The same share read by bulk copies in PARTS consecutive parts, each completing its own
// mbarrier: part k is waited for, the cluster synchronized and part k written while the later
// parts' reads are still in flight (PARTS = 2: read-then-write pipelined over two halves).
template <int CS, int PARTS>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(512, 2)
serial_copy_parts(const uint4* __restrict__ x, uint4* __restrict__ y, unsigned per, unsigned n16) {
  using namespace latentrt;
  extern __shared__ uint4 buf[];
  __shared__ __align__(8) unsigned long long bar[PARTS];
  const unsigned start = min(n16, blockIdx.x * per), nv = min(n16, start + per) - start;
  const unsigned part = (nv + PARTS - 1) / PARTS;
  if (threadIdx.x == 0) {
    for (int k = 0; k < PARTS; ++k) mbar_init(smem_addr(&bar[k]), 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    for (unsigned k = 0; k < PARTS; ++k) {
      const unsigned a = min(nv, k * part), b = min(nv, a + part);
      if (b == a) {
        mbar_arrive(smem_addr(&bar[k]));
        continue;
      }
      mbar_expect_tx(smem_addr(&bar[k]), (b - a) * 16u);
      bulk_load(smem_addr(buf + a), x + start + a, (b - a) * 16u, smem_addr(&bar[k]));
    }
  }
  __syncthreads();
  for (unsigned k = 0; k < PARTS; ++k) {
    const unsigned a = min(nv, k * part), b = min(nv, a + part);
    mbar_wait(smem_addr(&bar[k]), 0);
    if constexpr (CS == 1)
      __syncthreads();
    else
      asm volatile("barrier.cluster.arrive.release.aligned;\n"
                   "barrier.cluster.wait.acquire.aligned;" ::: "memory");
    for (unsigned v = a + threadIdx.x; v < b; v += blockDim.x) y[start + v] = buf[v];
  }
}

// The channels-last form: a cluster copies one run of `run` 16-byte vectors at each of `rows`
// positions `stride` vectors apart (a tile of groups' channels, as the tile body reads them;
// one group's where that is whole vectors), its blocks splitting the rows. Each thread keeps
// one column, so a warp reads 32 / run rows' runs at once. `units` runs share a position.
template <int CS>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(512, 2)
serial_copy_rows(const uint4* __restrict__ x, uint4* __restrict__ y, unsigned rows, unsigned run,
                 unsigned units) {
  extern __shared__ uint4 buf[];
  const unsigned unit = blockIdx.x / CS, rank = blockIdx.x % CS;
  const unsigned n = unit / units, u = unit % units, stride = run * units;
  const unsigned per = (rows + CS - 1) / CS, r_start = min(rows, rank * per);
  const unsigned r_end = min(rows, r_start + per);
  const unsigned col = threadIdx.x % run, step = blockDim.x / run;
  const unsigned long long base = (static_cast<unsigned long long>(n) * rows * units + u) * run;
  const uint4* xr = x + base + col;
  uint4* yr = y + base + col;
  if (threadIdx.x < step * run) {
    for (unsigned r = r_start + threadIdx.x / run; r < r_end; r += 4 * step) {
      uint4 p[4];
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (r + k * step < r_end) p[k] = xr[static_cast<unsigned long long>(r + k * step) * stride];
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (r + k * step < r_end) buf[(r + k * step - r_start) * run + col] = p[k];
    }
  }
  if constexpr (CS == 1)
    __syncthreads();
  else
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;" ::: "memory");
  if (threadIdx.x < step * run)
    for (unsigned r = r_start + threadIdx.x / run; r < r_end; r += step)
      yr[static_cast<unsigned long long>(r) * stride] = buf[(r - r_start) * run + col];
}

// serial_copy_rows moved by the TMA: thread 0 loads the block's rows in boxes of `box` rows
// (2-D tensor maps of the tensor as 16-bit units: a position's channels by all positions),
// waits, and after the cluster's barrier stores them back the same way. What the channels-last
// slices could cost without the threads' strided loads. A box running past the block's rows
// copies the next block's first rows too (the same values).
struct alignas(64) TensorMap {
  unsigned long long opaque[16];
};

template <int CS>
__global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(512, 2)
serial_copy_rows_tma(const __grid_constant__ TensorMap tx, const __grid_constant__ TensorMap ty,
                     unsigned rows, unsigned run, unsigned units, unsigned box) {
  using namespace latentrt;
  extern __shared__ __align__(128) uint4 buf[];
  __shared__ __align__(8) unsigned long long bar;
  const unsigned unit = blockIdx.x / CS, rank = blockIdx.x % CS;
  const unsigned n = unit / units, u = unit % units;
  const unsigned per = (rows + CS - 1) / CS, r_start = min(rows, rank * per);
  const unsigned boxes = (min(rows, r_start + per) - r_start + box - 1) / box;
  const int c0 = static_cast<int>(u * run * 8), row0 = static_cast<int>(n * rows + r_start);
  if (threadIdx.x == 0) {
    mbar_init(smem_addr(&bar), 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    mbar_expect_tx(smem_addr(&bar), boxes * box * run * 16u);
    for (unsigned b = 0; b < boxes; ++b)
      asm volatile(
          "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
          " [%0], [%1, {%2, %3}], [%4];" ::"r"(smem_addr(buf + b * box * run)),
          "l"(reinterpret_cast<unsigned long long>(&tx)), "r"(c0),
          "r"(row0 + static_cast<int>(b * box)), "r"(smem_addr(&bar))
          : "memory");
  }
  __syncthreads();  // the mbarrier is initialized before anyone waits on it
  mbar_wait(smem_addr(&bar), 0);
  if constexpr (CS > 1)
    asm volatile("barrier.cluster.arrive.release.aligned;\n"
                 "barrier.cluster.wait.acquire.aligned;" ::: "memory");
  if (threadIdx.x == 0) {
    for (unsigned b = 0; b < boxes; ++b)
      asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];" ::
                       "l"(reinterpret_cast<unsigned long long>(&ty)),
                   "r"(c0), "r"(row0 + static_cast<int>(b * box)),
                   "r"(smem_addr(buf + b * box * run))
                   : "memory");
    bulk_store_drain();
  }
}
"""
_SERIAL_CLUSTERS = (1, 2, 4, 8)


@functools.cache
def _serial_copy_module():
    import cupy

    names = [f"serial_copy<{cs}>" for cs in _SERIAL_CLUSTERS]
    names += [f"serial_copy_parts<{cs}, {p}>" for cs in _SERIAL_CLUSTERS for p in (1, 2)]
    names += [f"serial_copy_rows<{cs}>" for cs in _SERIAL_CLUSTERS]
    names += [f"serial_copy_rows_tma<{cs}>" for cs in _SERIAL_CLUSTERS]
    options = ("-std=c++17", *harness.nvrtc_include_options())
    code = harness.inline_common(_SERIAL_COPY)
    return cupy.RawModule(code=code, options=options, name_expressions=names)


def _copy_ms(xs, ys) -> float:
    """Milliseconds per device-to-device copy of xs[i] into ys[i], timed as the kernels are."""
    return _time_graph([partial(y.copy_, x) for x, y in zip(xs, ys, strict=True)])[0]


def _serial_copy_ms(xs, ys, blocks: int, threads: int, cluster: int, parts: int = 0) -> float:
    """Milliseconds per serial_copy launch over the input/output pairs (parts > 0:
    serial_copy_parts, read by bulk copies in that many parts); NaN where a block's share does
    not fit in shared memory."""
    import cupy
    import numpy as np

    n16 = xs[0].numel() * xs[0].element_size() // 16
    per = -(-n16 // blocks)
    smem = per * 16
    if smem > torch.cuda.get_device_properties(0).shared_memory_per_block_optin:
        return float("nan")
    name = f"serial_copy_parts<{cluster}, {parts}>" if parts else f"serial_copy<{cluster}>"
    kern = _serial_copy_module().get_function(name)
    kern.max_dynamic_shared_size_bytes = smem

    def launch(x, y):
        with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
            args = (
                np.uint64(x.data_ptr()),
                np.uint64(y.data_ptr()),
                np.uint32(per),
                np.uint32(n16),
            )
            kern((blocks,), (threads,), args, shared_mem=smem)

    return _time_graph([partial(launch, x, y) for x, y in zip(xs, ys, strict=True)])[0]


def _serial_copy_rows_ms(xs, ys, plan: harness.GroupNormPlan, tma: bool = False) -> float:
    """Milliseconds per serial_copy_rows launch (`tma`: serial_copy_rows_tma) at a channels-last
    GroupNorm plan's geometry (NHWC xs, 32 groups): its clusters, threads and rows of
    `plan.tile` groups; NaN where a row is not whole 16-byte vectors (or, for the TMA, wider
    than a box's 256 16-bit units) or a block's rows do not fit in shared memory."""
    import cupy
    import numpy as np

    from latentrt.plugins import driver

    n, h, w, c = xs[0].shape
    row_bytes = plan.tile * c // 32 * xs[0].element_size()
    units = 32 // plan.tile
    per = -(-h * w // plan.cluster)
    box = min(256, per)
    smem = (-(-per // box) * box if tma else per) * row_bytes
    optin = torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    if row_bytes % 16 or smem > optin or (tma and row_bytes > 512):
        return float("nan")
    name = f"serial_copy_rows{'_tma' if tma else ''}<{plan.cluster}>"
    kern = _serial_copy_module().get_function(name)
    kern.max_dynamic_shared_size_bytes = smem
    ints = (h * w, row_bytes // 16, units)
    grid = (n * units * plan.cluster, 1, 1)

    def launch(x, y):
        stream = torch.cuda.current_stream().cuda_stream
        if tma:
            dims, box_ = (c * x.element_size() // 2, n * h * w), (row_bytes // 2, box)
            maps = [driver.encode_tiled(t.data_ptr(), dims, box_, swizzle=False) for t in (x, y)]
            args = [*maps, *(ctypes.c_uint32(v) for v in (*ints, box))]
            driver.launch(kern.kernel.ptr, grid, plan.threads, smem, stream, args)
            return
        with cupy.cuda.ExternalStream(stream):
            args = (np.uint64(x.data_ptr()), np.uint64(y.data_ptr()), *map(np.uint32, ints))
            kern(grid, (plan.threads,), args, shared_mem=smem)

    ys[0].fill_(float("nan"))
    launch(xs[0], ys[0])
    if not torch.equal(ys[0], xs[0]):
        raise RuntimeError(f"{name} did not copy {tuple(xs[0].shape)} at {plan}")
    return _time_graph([partial(launch, x, y) for x, y in zip(xs, ys, strict=True)])[0]


def bench_gn_floor(shapes, cases) -> list[str]:
    """GroupNorm+SiLU beside a copy shaped like its launch (_SERIAL_COPY: the planner's blocks,
    threads and cluster, each block's share read whole, then written; also read by bulk copies
    in one part and in two, pipelined) and a plain copy: how much of the gap to a copy is the
    one-wave read-then-write structure and how much the statistics."""
    rows = [
        "| shape | layout | dtype | plan | blocks | GroupNorm ms | serial copy ms "
        "| bulk, one part ms | bulk, two parts ms | copy ms "
        "| GroupNorm % of copy | serial copy % of copy | GroupNorm % of serial copy "
        "| two parts % of copy |",
        "|" + " --- |" * 14,
    ]
    for shape in shapes:
        for layout, dt in cases:
            dtype = getattr(torch, dt)
            itemsize = torch.finfo(dtype).bits // 8
            k = _sets(2 * torch.Size(shape).numel() * itemsize)
            xs, ys, g, b = _gn_inputs(shape, dtype, layout, k)
            plan = _gn_plan(shape, dt, layout)
            blocks = shape[0] * 32 // plan.tile * plan.cluster
            t_gn = _time_graph(_gn_calls(xs, ys, g, b, layout))[0]
            t_s, t_p1, t_p2 = (  # thread loads, bulk copies in one part, in two
                _serial_copy_ms(xs, ys, blocks, plan.threads, plan.cluster, parts)
                for parts in (0, 1, 2)
            )
            t_c = _copy_ms(xs, ys)
            rows.append(
                f"| {'x'.join(map(str, shape))} | {layout} | {dt} "
                f"| cs{plan.cluster}/{plan.threads}t/tile{plan.tile}/cache {plan.cached} "
                f"| {blocks} | {t_gn:.4f} | {t_s:.4f} | {t_p1:.4f} | {t_p2:.4f} | {t_c:.4f} "
                f"| {100 * t_c / t_gn:.0f}% | {100 * t_c / t_s:.0f}% | {100 * t_s / t_gn:.0f}% "
                f"| {100 * t_c / t_p2:.0f}% |"
            )
            print(rows[-1], flush=True)
            del xs, ys
            torch.cuda.empty_cache()
    return rows


NO_STATS = ("LATENTRT_GN_NO_STATS",)


def bench_gn_attrib(cases) -> list[str]:
    """What GroupNorm+SiLU spends beyond the serial copy at its geometry: the launch as is,
    without SiLU (activation 0) and without statistics (the LATENTRT_GN_NO_STATS profiling
    build, mean 0 and rstd 1, not a GroupNorm: a bound on what any way of computing them could
    save); three alternating rounds, medians. One-group plans that cache the slice only (the
    channels-last tile body has no such build; without a cache, pass 1 only feeds the statistics
    and the build would drop that read too)."""
    rows = [
        "| shape | layout | dtype | plan | GroupNorm ms | no SiLU ms | no statistics ms "
        "| serial copy ms | copy ms | GroupNorm % of copy | no statistics % of copy "
        "| statistics' share of GroupNorm |",
        "|" + " --- |" * 12,
    ]
    for shape, layout, dt in cases:
        dtype = getattr(torch, dt)
        plan = _gn_plan(shape, dt, layout)
        if plan.tile != 1 or plan.cached == 0:  # uncached: the build would drop a whole read
            continue
        k = _sets(2 * torch.Size(shape).numel() * dtype.itemsize)
        xs, ys, g, b = _gn_inputs(shape, dtype, layout, k)
        gn = harness.groupnorm_silu
        t_gn, t_act0, t_ns = _alternating_medians(
            [
                [
                    partial(gn, x, g, b, 32, 1e-5, act, layout, out=y, stream=_CURRENT, defines=d)
                    for x, y in zip(xs, ys, strict=True)
                ]
                for act, d in ((1, ()), (0, ()), (1, NO_STATS))
            ]
        )
        blocks = shape[0] * 32 * plan.cluster
        t_s = _serial_copy_ms(xs, ys, blocks, plan.threads, plan.cluster)
        t_c = _copy_ms(xs, ys)
        rows.append(
            f"| {'x'.join(map(str, shape))} | {layout} | {dt} "
            f"| cs{plan.cluster}/{plan.threads}t/cache {plan.cached} | {t_gn:.4f} | {t_act0:.4f} "
            f"| {t_ns:.4f} | {t_s:.4f} | {t_c:.4f} | {100 * t_c / t_gn:.0f}% "
            f"| {100 * t_c / t_ns:.0f}% | {100 * (1 - t_ns / t_gn):.0f}% |"
        )
        print(rows[-1], flush=True)
        del xs, ys
        torch.cuda.empty_cache()
    return rows


def bench_gn_formats(shapes, dtypes) -> list[str]:
    """What the TensorRT plugin's HWC8 format saves between channels-last layers: GroupNorm+SiLU
    on NHWC memory against NHWC -> NCHW copy, the NCHW kernel, NCHW -> NHWC copy (the reformats
    TensorRT would put around a LINEAR-only plugin; PyTorch's permuted copies stand in for
    TensorRT's reformat kernels, and the last column bounds any reformat by a plain copy). Every
    buffer rotates, intermediates included; three alternating rounds, medians."""
    rows = [
        "| shape | dtype | NHWC plan | channels-last ms | reformat + NCHW + reformat ms "
        "| NCHW alone ms | two reformats ms | copy ms | speedup | speedup, reformats at copy speed |",
        "|" + " --- |" * 10,
    ]
    for shape in shapes:
        for dt in dtypes:
            dtype = getattr(torch, dt)
            k = _sets(4 * torch.Size(shape).numel() * dtype.itemsize)
            xs, ys, g, b = _gn_inputs(shape, dtype, "NHWC", k)
            xc = [torch.empty(shape, device="cuda", dtype=dtype) for _ in range(k)]
            yc = [torch.empty_like(t) for t in xc]
            last = _gn_calls(xs, ys, g, b, "NHWC")
            first = _gn_calls(xc, yc, g, b, "NCHW")
            to_first = [
                partial(c.copy_, x.permute(0, 3, 1, 2)) for c, x in zip(xc, xs, strict=True)
            ]
            to_last = [partial(y.copy_, c.permute(0, 2, 3, 1)) for y, c in zip(ys, yc, strict=True)]
            chain = [f for fs in zip(to_first, first, to_last, strict=True) for f in fs]
            copies = [f for fs in zip(to_first, to_last, strict=True) for f in fs]
            t_last, t_chain, t_first, t_copies = _alternating_medians([last, chain, first, copies])
            t_chain, t_copies = 3 * t_chain, 2 * t_copies  # per call of each list: per set
            t_copy = _copy_ms(xs, ys)
            plan = _gn_plan(shape, dt, "NHWC")
            rows.append(
                f"| {'x'.join(map(str, shape))} | {dt} | cs{plan.cluster}/{plan.threads}t/"
                f"tile{plan.tile} | {t_last:.4f} | {t_chain:.4f} | {t_first:.4f} "
                f"| {t_copies:.4f} | {t_copy:.4f} | {t_chain / t_last:.2f}x "
                f"| {(t_first + 2 * t_copy) / t_last:.2f}x |"
            )
            print(rows[-1], flush=True)
            del xs, ys, xc, yc
            torch.cuda.empty_cache()
    return rows


TRACE = ("LATENTRT_GN_TRACE",)
# kTraceMarks: entry, loads issued, slice folded, statistics final, exit, then inside the
# statistics phase: peers' barriers initialized, own statistics sent, peers' ones received
TRACE_MARKS = 8
TRACE_BLOCKS = 4096  # kTraceBlocks


def _trace_array(mod):
    """The trace build's record: blocks x (5 globaltimer ns, 5 clocks, SM)."""
    import cupy

    ptr = mod.get_global("latentrt_gn_trace")
    return cupy.ndarray((TRACE_BLOCKS, 2 * TRACE_MARKS + 1), cupy.uint64, memptr=ptr)


def _phases(tr, blocks: int) -> dict[str, float]:
    """Microseconds from the first block's entry to each mark (median and last block), and the
    median per-block phase lengths (us, and cycles for the statistics)."""
    import numpy as np

    t = tr[:blocks, :TRACE_MARKS].astype(np.int64)
    t -= t[:, 0].min()
    out = {"entry last": t[:, 0].max() / 1e3}
    for i, name in ((2, "folded"), (3, "stats"), (4, "exit")):
        out[f"{name} p50"] = float(np.median(t[:, i])) / 1e3
        out[f"{name} last"] = float(t[:, i].max()) / 1e3
    out["stats - folded p50"] = float(np.median(t[:, 3] - t[:, 2])) / 1e3
    out["exit - stats p50"] = float(np.median(t[:, 4] - t[:, 3])) / 1e3
    # The same phase in SM clock cycles (clock64 is per SM; a check on the timer's resolution),
    # and its steps: folded -> peers' barriers ready (5) -> sent (6) -> received (7) -> final (3).
    clk = tr[:blocks, TRACE_MARKS : 2 * TRACE_MARKS].astype(np.int64)
    out["stats - folded p50 cycles"] = float(np.median(clk[:, 3] - clk[:, 2]))
    steps = [(2, 5, "ready"), (5, 6, "sent"), (6, 7, "received"), (7, 3, "final")]
    for a, b, name in steps:
        if (tr[:blocks, [TRACE_MARKS + a, TRACE_MARKS + b]] != 0).all():  # 7 only in clusters
            out[f"{name} cycles p50"] = float(np.median(clk[:, b] - clk[:, a]))
    out["SMs"] = len(set(tr[:blocks, 2 * TRACE_MARKS].tolist()))
    return out


def bench_gn_trace(shapes, dtype: str = "float16", layout: str = "NCHW") -> list[str]:
    """Where a GroupNorm+SiLU launch spends its time (the .cu's phase trace)."""
    mod = harness.kernel_module("groupnorm_silu.cu", TRACE)
    rows = []
    for shape in shapes:
        dt = getattr(torch, dtype)
        itemsize = torch.finfo(dt).bits // 8
        nbytes = torch.Size(shape).numel() * itemsize
        k = _sets(2 * nbytes)
        xs, ys, g, b = _gn_inputs(shape, dt, layout, k)
        plan = _gn_plan(shape, dtype, layout)
        blocks = shape[0] * 32 // plan.tile * plan.cluster
        tr = _trace_array(mod)
        t_plain = _time_graph(_gn_calls(xs, ys, g, b, layout))[0]
        t_trace = _time_graph(_gn_calls(xs, ys, g, b, layout, defines=TRACE))[0]
        t_copy = _copy_ms(xs, ys)
        runs = []
        for i in range(k):  # each input last touched k launches ago: not in L2
            tr.fill(0)
            harness.groupnorm_silu(xs[i], g, b, 32, 1e-5, 1, layout, out=ys[i], defines=TRACE)
            torch.cuda.synchronize()
            runs.append(_phases(tr.get(), min(blocks, tr.shape[0])))
        med = {key: statistics.median(r[key] for r in runs[1:]) for key in runs[0]}
        name = "x".join(map(str, shape))
        rows.append(
            f"\n{name} {layout} {dtype} tile{plan.tile}/cs{plan.cluster}/{plan.threads}t cache "
            f"{plan.cached}, {blocks} blocks "
            f"on {med['SMs']:.0f} SMs: plain {t_plain:.4f} ms, traced {t_trace:.4f}, copy "
            f"{t_copy:.4f}; one launch, us from the first entry (median of {len(runs) - 1}):"
        )
        rows.append("  " + ", ".join(f"{key} {v:.2f}" for key, v in med.items() if key != "SMs"))
        # Read-phase floor: the input at the copy's rate (the copy moves 2 * nbytes).
        rows.append(f"  reading the input at the copy's rate takes {t_copy * 1e3 / 2:.2f} us")
        for r in rows[-3:]:
            print(r, flush=True)
        torch.cuda.empty_cache()
    return rows


def _conv_inputs(shape, cout, dtype, channels_last: bool):
    """Rotating inputs and outputs, weights (plain and packed) and bias of one Conv3d case."""
    n, cin, d, h, w = shape
    k = max(2, min(16, ROTATE_BYTES // (3 * torch.Size(shape).numel() * 2)))
    mf = torch.channels_last_3d if channels_last else torch.contiguous_format
    xs = [
        torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=mf)
        for _ in range(k)
    ]
    wt = (
        torch.randn(cout, cin, 3, 3, 3, device="cuda", dtype=dtype) * (cin * 27) ** -0.5
    ).contiguous(memory_format=mf)
    bias = torch.randn(cout, device="cuda", dtype=dtype) * 0.1
    packed = harness.pack_conv3d_weights(wt.contiguous())
    # Our NDHWC tensors are the permuted storage of the channels_last_3d tensors.
    xin = [x.permute(0, 2, 3, 4, 1) if channels_last else x for x in xs]
    oshape = (n, d, h, w, cout) if channels_last else (n, cout, d, h, w)
    outs = [torch.empty(oshape, device="cuda", dtype=dtype) for _ in range(k)]
    return xs, xin, outs, wt, packed, bias


def _fused_calls(xin, outs, packed, bias, layout: str, tile_n=None, stages=None, **kw) -> list:
    return [
        partial(
            harness.conv3d,
            xin[i],
            packed,
            bias,
            (0, 1, 1, 0, 1, 1),
            causal_time=1,
            layout=layout,
            out=outs[i],
            stream=_CURRENT,
            weights_packed=True,
            tile_n=tile_n,
            stages=stages,
            **kw,
        )
        for i in range(len(xin))
    ]


def _channels_last_cases(cases, multiple: int, dtype: str):
    """Yields (shape, cout, sms, xin, outs, packed, bias, pad + cuDNN ms) for the channels-last
    Conv3d cases whose Cin is a multiple of `multiple` and Cout of 8 (inputs as _conv_inputs)."""
    torch.backends.cudnn.benchmark = True
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for shape, cout in cases:
        if shape[1] % multiple or cout % 8:
            continue
        xs, xin, outs, wt, packed, bias = _conv_inputs(shape, cout, getattr(torch, dtype), True)
        reference = [partial(_pad_conv_torch, x, wt, bias) for x in xs]
        reference[0]()
        yield shape, cout, sms, xin, outs, packed, bias, _time_graph(reference)[0]
        torch.cuda.empty_cache()


def _hopper() -> bool:
    return torch.cuda.get_device_capability() == (9, 0)


def bench_conv(cases, dtypes, channels_last=False) -> list[str]:
    torch.backends.cudnn.benchmark = True
    rows = [
        "| x | Cout | layout | dtype | fused ms | pad+cuDNN ms | speedup | fused TFLOP/s "
        "| pad copy MB | kernel | timing |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    layout = "NDHWC" if channels_last else "NCDHW"
    for shape, cout in cases:
        for dt in dtypes:
            n, cin, d, h, w = shape
            xs, xin, outs, wt, packed, bias = _conv_inputs(
                shape, cout, getattr(torch, dt), channels_last
            )
            reference = [partial(_pad_conv_torch, x, wt, bias) for x in xs]
            reference[0]()
            t_f, mode_f = _time_graph(_fused_calls(xin, outs, packed, bias, layout))
            t_r, _ = _time_graph(reference)
            flops = 2.0 * n * cout * cin * 27 * d * h * w
            pad_mb = n * cin * (d + 2) * h * w * 2 / 2**20
            props = torch.cuda.get_device_properties(0)
            sms, one = props.multi_processor_count, (1, 1, 1)
            dhw = (d, h, w)
            via = not channels_last and harness.layout_change_bytes(
                dt, n, cin, cout, (3, 3, 3), dhw, dhw, one, one, sms,
                props.shared_memory_per_block_optin, _hopper(),
            )  # fmt: skip
            last = channels_last or bool(via)
            plan = harness.conv3d_plan(
                dt, last, n, cin, cout, 27, d * h * w, True, sms, wgmma=_hopper()
            )
            tma = _hopper() and harness.tma_supported(dt, last, cin, cout, one, one)
            if tma:  # as harness.conv3d picks (the causal pads fit im2col loads)
                plan = harness.conv3d_tma_plan(dt, n, cin, cout, (3, 3, 3), dhw, sms, im2col=True)
            elif plan.kernel.startswith("latentrt_conv3d_direct"):
                small = harness.conv3d_smallc_plan(
                    dt, last, n, cin, cout, (3, 3, 3), dhw, one, one, sms
                ) or harness.conv3d_narrow_plan(dt, last, n, cin, cout, (3, 3, 3), dhw, one, one)
                plan = plan if small is None else small
            kernel = plan.kernel.removeprefix("latentrt_conv3d_")
            kernel = f"via NDHWC: {kernel}" if via else kernel
            rows.append(
                f"| {'x'.join(map(str, shape))} | {cout} | {layout} | {dt} | {t_f:.4f} "
                f"| {t_r:.4f} | {t_r / t_f:.2f}x | {flops / (t_f * 1e-3) / 1e12:.1f} "
                f"| {pad_mb:.1f} | {kernel} | {mode_f} |"
            )
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
    return rows


def sweep_conv_tiles(cases, dtype: str = "float16") -> list[str]:
    """Channels-last wgmma Conv3d time per forced output-channel tile and pipeline, next to
    pad + cuDNN on the same channels_last_3d tensors (Hopper only)."""
    variants = [(bn, None) for bn in harness.WGMMA_TILES_N]
    variants.append((128, harness.WGMMA_DEEP_STAGES))
    rows = [
        "| x | Cout | pad+cuDNN ms | "
        + " | ".join(f"n{bn}{f'_s{s}' if s else ''} ms" for bn, s in variants)
        + " | speedup of the best | planner |",
        "| --- | --- |" + " --- |" * (len(variants) + 3),
    ]
    for shape, cout, sms, xin, outs, packed, bias, t_ref in _channels_last_cases(cases, 8, dtype):
        n, cin, d, h, w = shape
        cells, best = [], float("inf")
        for bn, stages in variants:
            if bn == 96 and cout % 96:
                cells.append("-")
                continue
            stages = stages or harness.wgmma_stages(bn)  # forced: no planner choice
            calls = _fused_calls(xin, outs, packed, bias, "NDHWC", bn, stages, tma=False)
            t = _time_graph(calls)[0]
            best = min(best, t)
            cells.append(f"{t:.4f}")
        plan = harness.conv3d_plan(dtype, True, n, cin, cout, 27, d * h * w, True, sms, wgmma=True)
        rows.append(
            f"| {'x'.join(map(str, shape))} | {cout} | {t_ref:.4f} | {' | '.join(cells)} "
            f"| {t_ref / best:.2f}x | {plan.kernel.split('_ndhwc_')[1]} |"
        )
        print(rows[-1], flush=True)
    return rows


TMA_TILES = [(128, 128, 3), (128, 192, 5), (128, 256, 4), (256, 128, 4)]
# (cluster, stream-K share) per tile variant. Shares: none (one cluster per unit of tiles), the
# partial last wave, that and one full wave before it, or all units.
TMA_MODES = [(1, "dp"), (1, "all"), (2, "dp"), (2, "tail"), (2, "tail+wave"), (2, "all")]
TMA_MODES += [(4, "dp"), (4, "all")]  # clusters of four: n192 and n256 tiles only


C4_TILES = ((128, 192), (128, 256))


def _streamk_share(mode: str, units: int, slots: int) -> int:
    tail = units % slots
    return {"dp": 0, "tail": tail, "tail+wave": tail + slots if units > slots else units}.get(
        mode, units
    )


def sweep_conv_tma(cases, dtype: str = "float16") -> list[str]:
    """Channels-last Conv3d: the TMA kernel per forced tile variant, cluster size and stream-K
    share, next to the cp.async wgmma kernel's planner choice and pad + cuDNN on the same tensors
    (Hopper only)."""
    cols = [(t, m) for t in TMA_TILES for m in TMA_MODES]
    rows = [
        "| x | Cout | pad+cuDNN ms | wgmma ms | "
        + " | ".join(f"m{bm}n{bn} c{cl} {m} ms" for (bm, bn, _), (cl, m) in cols)
        + " | best TMA / pad+cuDNN | TMA planner | planner ms | planner / pad+cuDNN |",
        "| --- | --- | --- | --- |" + " --- |" * (len(cols) + 4),
    ]
    for shape, cout, sms, xin, outs, packed, bias, t_ref in _channels_last_cases(cases, 64, dtype):
        n, cin, d, h, w = shape
        t_wg = _time_graph(_fused_calls(xin, outs, packed, bias, "NDHWC", tma=False))[0]
        ws_elems = sms * (256 * 256 + 1)  # >= any stream-K workspace
        ws = torch.empty(ws_elems, device="cuda", dtype=torch.float32)
        cells, best = [], float("inf")
        for (bm, bn, st), (cl, mode) in cols:
            if (bn == 192 and cout % 192) or (cl == 4 and (bm, bn) not in C4_TILES):
                cells.append("-")
                continue
            geo = (dtype, n, cin, cout, (3, 3, 3), (d, h, w), sms)
            one = harness.conv3d_tma_plan(*geo, bn, st, bm, 0, cl)
            sk = _streamk_share(mode, one.dp_tiles, sms // cl)
            calls = _fused_calls(
                xin, outs, packed, bias, "NDHWC", bn, st, tma=True, streamk=sk, workspace=ws,
                tile_m=bm, cluster=cl,
            )  # fmt: skip
            t = _time_graph(calls)[0]
            best = min(best, t)
            cells.append(f"{t:.4f}")
        plan = harness.conv3d_tma_plan(dtype, n, cin, cout, (3, 3, 3), (d, h, w), sms)
        t_plan = _time_graph(_fused_calls(xin, outs, packed, bias, "NDHWC", workspace=ws))[0]
        rows.append(
            f"| {'x'.join(map(str, shape))} | {cout} | {t_ref:.4f} | {t_wg:.4f} "
            f"| {' | '.join(cells)} | {t_ref / best:.2f}x "
            f"| {plan.kernel.split('_ndhwc_')[1]} dp{plan.dp_tiles}+sk{plan.sk_tiles} "
            f"| {t_plan:.4f} "
            f"| {t_ref / t_plan:.2f}x |"
        )
        print(rows[-1], flush=True)
        del ws  # before the generator's empty_cache
    return rows


# (tile_m, tile_n, stages, cluster, stream-K mode) of the im2col sweep
IM2COL_MODES = [(128, 192, 5, 2, "all"), (128, 256, 4, 2, "all"), (256, 128, 4, 2, "all")]
IM2COL_MODES += [(256, 128, 4, 1, "dp"), (128, 128, 3, 1, "dp")]


def sweep_conv_im2col(cases, dtype: str = "float16") -> list[str]:
    """Channels-last Conv3d through the TMA kernel: the planner's launch, its tiles with A in
    boxes of output frames and by TMA's im2col mode, then forced im2col variants, beside pad +
    cuDNN on the same tensors (Hopper only)."""
    cols = [f"m{bm}n{bn} c{cl} {m} im2col ms" for bm, bn, _, cl, m in IM2COL_MODES]
    rows = [
        "| x | Cout | pad+cuDNN ms | planner | planner ms | boxes ms | im2col ms | "
        + " | ".join(cols) + " | best / pad+cuDNN |",
        "| --- | --- | --- | --- | --- | --- | --- |" + " --- |" * (len(cols) + 1),
    ]  # fmt: skip
    for shape, cout, sms, xin, outs, packed, bias, t_ref in _channels_last_cases(cases, 64, dtype):
        n, cin, d, h, w = shape
        ws = torch.empty(sms * (256 * 256 + 1), device="cuda", dtype=torch.float32)
        geo = (dtype, n, cin, cout, (3, 3, 3), (d, h, w), sms)
        plan = harness.conv3d_tma_plan(*geo)
        forced = dict(tile_n=plan.tile_n, tile_m=plan.tile_m, cluster=plan.cluster)
        forced.update(streamk=plan.sk_tiles, workspace=ws, tma=True)
        t_plan = _time_graph(_fused_calls(xin, outs, packed, bias, "NDHWC", workspace=ws))[0]
        t_box, t_i2c = (
            _time_graph(_fused_calls(xin, outs, packed, bias, "NDHWC", im2col=i2c, **forced))[0]
            for i2c in (False, True)
        )
        cells, best = [], min(t_plan, t_box, t_i2c)
        for bm, bn, st, cl, mode in IM2COL_MODES:
            if cout % bn and bn == 192:
                cells.append("-")
                continue
            one = harness.conv3d_tma_plan(*geo, bn, st, bm, 0, cl, im2col=True)
            sk = _streamk_share(mode, one.dp_tiles, sms // cl)
            calls = _fused_calls(
                xin, outs, packed, bias, "NDHWC", bn, st, tma=True, streamk=sk, workspace=ws,
                tile_m=bm, cluster=cl, im2col=True,
            )  # fmt: skip
            t = _time_graph(calls)[0]
            best = min(best, t)
            cells.append(f"{t:.4f}")
        rows.append(
            f"| {'x'.join(map(str, shape))} | {cout} | {t_ref:.4f} "
            f"| {plan.kernel.split('_ndhwc_')[1]} dp{plan.dp_tiles}+sk{plan.sk_tiles}"
            f"{' im2col' if plan.im2col else ''} | {t_plan:.4f} ({t_ref / t_plan:.2f}x) "
            f"| {t_box:.4f} ({t_ref / t_box:.2f}x) | {t_i2c:.4f} ({t_ref / t_i2c:.2f}x) "
            f"| {' | '.join(cells)} | {t_ref / best:.2f}x |"
        )
        print(rows[-1], flush=True)
        del ws
    return rows


def sweep_plans(shapes) -> list[str]:
    """Fused GroupNorm+SiLU fp16 NCHW time per forced cluster size and block size, each beside
    the serial copy (_SERIAL_COPY) at the same geometry: does a geometry lift both?"""
    plans = [(cs, t) for cs in (1, 2, 4, 8) for t in (256, 512)]
    rows = [
        "| shape | " + " | ".join(f"cs{cs}/{t}t" for cs, t in plans) + " | copy | planner |",
        "| --- |" + " --- |" * (len(plans) + 2),
    ]
    for shape in shapes:
        k = _sets(2 * torch.Size(shape).numel() * 2)
        xs, ys, g, b = _gn_inputs(shape, torch.float16, "NCHW", k)
        cells = []
        for cs, threads in plans:
            t_gn = _time_graph(_gn_calls(xs, ys, g, b, cluster=cs, threads=threads))[0]
            t_s = _serial_copy_ms(xs, ys, shape[0] * 32 * cs, threads, cs)
            cells.append(f"{t_gn:.4f} ({t_s:.4f})")
        t_c = _copy_ms(xs, ys)
        plan = _gn_plan(shape, "float16", "NCHW")
        rows.append(
            f"| {'x'.join(map(str, shape))} | {' | '.join(cells)} | {t_c:.4f} "
            f"| cs{plan.cluster}/{plan.threads}t |"
        )
        print(rows[-1], flush=True)
        del xs, ys
        torch.cuda.empty_cache()
    return rows


def sweep_gn_tiles(shapes, dtypes) -> list[str]:
    """Channels-last GroupNorm+SiLU at every tile of consecutive groups (1: one group per
    cluster) and cluster size, against the planner's launch: do wider rows pay for fewer
    clusters? Each forced plan is timed once and checked against float64 PyTorch; those within
    1.25x of the fastest are timed again beside the planner's in alternating rounds, and the best
    of them is shown with serial copies of its rows (serial_copy_rows, by threads and TMA)."""
    props = torch.cuda.get_device_properties(0)
    limits = (props.multi_processor_count, props.shared_memory_per_block_optin)
    rows = [
        "| shape | dtype | planner | ms (serial copy, by TMA) | best forced "
        "| ms (serial copy, by TMA) | planner / best | copy ms | best % of copy |",
        "|" + " --- |" * 9,
    ]

    def desc(p):
        return f"tile{p.tile}/cs{p.cluster}/{p.threads}t/v{p.vec}/cache {p.cached}"

    for shape, dt, itemsize, _k, xs, ys, g, b in _gn_cases(shapes, dtypes, "NHWC"):
        n, c, h, w = shape
        args = (n, c, h * w, 32, True, itemsize, True, *limits)
        plan = _gn_plan(shape, dt, "NHWC")
        forced = {}
        for tile, cs in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8)):
            p = harness.groupnorm_plan(*args, cluster=cs, tile=tile)
            if p != plan and p not in forced.values():
                forced[(tile, cs)] = p
        ref = _gn_silu_torch(xs[0].permute(0, 3, 1, 2).double(), g.double(), b.double())
        ref = ref.permute(0, 2, 3, 1)
        name = "x".join(map(str, shape))
        timed = {}
        for key, p in forced.items():
            calls = _gn_calls(xs, ys, g, b, "NHWC", tile=key[0], cluster=key[1])
            ys[0].fill_(float("nan"))
            calls[0]()
            err = ((ys[0].double() - ref).abs().max() / ref.abs().max()).item()
            timed[key] = _time_graph(calls)[0]
            print(
                f"#   {name} {dt} {desc(p)}: {timed[key]:.4f} ms, max error {err:.1e}", flush=True
            )
        fastest = min(timed.values())
        keys = [k for k, t in timed.items() if t <= 1.25 * fastest]
        t_plan, *t_keys = _alternating_medians(
            [_gn_calls(xs, ys, g, b, "NHWC")]
            + [_gn_calls(xs, ys, g, b, "NHWC", tile=k[0], cluster=k[1]) for k in keys]
        )
        for k, t in zip(keys, t_keys, strict=True):
            print(f"#=  {name} {dt} {desc(forced[k])}: {t:.4f} ms ({t_plan:.4f} planner)")
        t_best, best = min(zip(t_keys, keys, strict=True))
        t_c = _copy_ms(xs, ys)
        s_plan, s_best = (
            "/".join(f"{_serial_copy_rows_ms(xs, ys, p, tma):.4f}" for tma in (False, True))
            for p in (plan, forced[best])
        )
        rows.append(
            f"| {name} | {dt} | {desc(plan)} | {t_plan:.4f} ({s_plan}) | {desc(forced[best])} "
            f"| {t_best:.4f} ({s_best}) | {t_plan / t_best:.3f} | {t_c:.4f} "
            f"| {100 * t_c / min(t_best, t_plan):.0f}% |"
        )
        print(rows[-1], flush=True)
    return rows


def bench_gn_tma(shapes, dtypes) -> list[str]:
    """Channels-last GroupNorm+SiLU whose slices move by 2-D TMA boxes (cache 2: in; cache 3: in
    and out) against the threads' loads (cache 1) at the planner's cluster size, where a plan of
    16-byte vectors caches one group's slice whole; serial copies of the same rows beside."""
    props = torch.cuda.get_device_properties(0)
    limits = (props.multi_processor_count, props.shared_memory_per_block_optin)
    rows = [
        "| shape | dtype | plan | threads' loads ms | TMA in ms | TMA in and out ms "
        "| best / threads' | serial copy ms | by the TMA ms | copy ms | best % of copy |",
        "|" + " --- |" * 11,
    ]
    for shape, dt, itemsize, _k, xs, ys, g, b in _gn_cases(shapes, dtypes, "NHWC"):
        n, c, h, w = shape
        plan = _gn_plan(shape, dt, "NHWC")
        args = (n, c, h * w, 32, True, itemsize, True, *limits)
        try:
            harness.groupnorm_plan(*args, cluster=plan.cluster, cache=2)
        except InputError:
            continue  # tiles, narrower vectors or slices that are not cached whole
        forced = [{"cluster": plan.cluster, "cache": k} for k in (1, 2, 3)]
        times = _alternating_medians([_gn_calls(xs, ys, g, b, "NHWC", **f) for f in forced])
        s_rows, s_tma = (_serial_copy_rows_ms(xs, ys, plan, tma) for tma in (False, True))
        t_c = _copy_ms(xs, ys)
        rows.append(
            f"| {'x'.join(map(str, shape))} | {dt} | cs{plan.cluster}/{plan.threads}t "
            f"| {times[0]:.4f} | {times[1]:.4f} | {times[2]:.4f} | {times[0] / min(times):.3f} "
            f"| {s_rows:.4f} | {s_tma:.4f} | {t_c:.4f} | {100 * t_c / min(times):.0f}% |"
        )
        print(rows[-1], flush=True)
    return rows


def profile_once() -> None:
    """One launch of each kernel of interest, for Nsight Compute (ncu) to capture."""
    gn_cases = ((2, 320, 64, 64), (1, 512, 128, 128), (1, 256, 256, 256))
    for shape, dt in ((s, torch.float16) for s in gn_cases):
        x = torch.randn(shape, device="cuda", dtype=dt)
        g, b = (
            torch.randn(shape[1], device="cuda", dtype=dt),
            torch.randn(shape[1], device="cuda", dtype=dt),
        )
        harness.groupnorm_silu(x, g, b, 32, 1e-5, 1, "NCHW")
    for layout in ("NCDHW", "NDHWC"):
        shape = (1, 384, 5, 32, 32) if layout == "NCDHW" else (1, 5, 32, 32, 384)
        x = torch.randn(shape, device="cuda", dtype=torch.float16)
        w = torch.randn(384, 384, 3, 3, 3, device="cuda", dtype=torch.float16) * 0.02
        harness.conv3d(x, w, None, (0, 1, 1, 0, 1, 1), causal_time=1, layout=layout)
    # Hopper: the cp.async wgmma kernel's two pipelines on an under-filled grid, and a four-wave
    # one; the TMA kernel (the planner's choice) on the four-wave one.
    x = torch.randn((1, 5, 32, 32, 384), device="cuda", dtype=torch.float16)
    w = torch.randn(384, 384, 3, 3, 3, device="cuda", dtype=torch.float16) * 0.02
    pads = (0, 1, 1, 0, 1, 1)
    harness.conv3d(x, w, None, pads, causal_time=1, layout="NDHWC", stages=3, tma=False)
    harness.conv3d(x, w, None, pads, causal_time=1, layout="NDHWC", tma=False)
    x = torch.randn((1, 9, 128, 128, 128), device="cuda", dtype=torch.float16)
    w = torch.randn(128, 128, 3, 3, 3, device="cuda", dtype=torch.float16) * 0.02
    harness.conv3d(x, w, None, pads, causal_time=1, layout="NDHWC", tma=False)
    harness.conv3d(x, w, None, pads, causal_time=1, layout="NDHWC")
    torch.cuda.synchronize()


def profile_conv(only: str) -> None:
    """The channels-last Conv3d case matching `only`, once each inside cudaProfilerStart/Stop
    (ncu --profile-from-start off): pad + cuDNN after its autotuning, our planner's launch, and the
    TMA kernel's 256 x 128 tiles one CTA per tile (cuDNN's tile there, on H100)."""
    torch.backends.cudnn.benchmark = True
    shape, cout = next(c for c in CONV_CASES + TMA_EXTRA_CASES if only in "x".join(map(str, c[0])))
    xs, xin, outs, wt, packed, bias = _conv_inputs(shape, cout, torch.float16, True)
    ws = torch.empty(132 * (256 * 256 + 1), device="cuda", dtype=torch.float32)
    calls = [
        partial(_pad_conv_torch, xs[0], wt, bias),
        _fused_calls(xin, outs, packed, bias, "NDHWC", workspace=ws)[0],
        _fused_calls(
            xin, outs, packed, bias, "NDHWC", 128, 4, tile_m=256, cluster=1, streamk=0, tma=True
        )[0],
    ]
    for fn in calls:  # autotuning, module loads and compiles outside the profiled range
        fn()
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for fn in calls:
        fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def main() -> None:
    """Run both benchmarks and print markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--profile", action="store_true", help="one launch per kernel, for ncu")
    ap.add_argument(
        "--profile-conv",
        metavar="SHAPE",
        help="one channels-last Conv3d (pad+cuDNN, ours) inside cudaProfilerStart/Stop, for ncu",
    )
    ap.add_argument("--gn-only", action="store_true", help="GroupNorm+SiLU tables only")
    ap.add_argument(
        "--gn-cache", action="store_true", help="GroupNorm+SiLU: how the slice is cached, only"
    )
    ap.add_argument(
        "--gn-partial",
        action="store_true",
        help="GroupNorm+SiLU: slices larger than shared memory, partly cached, only",
    )
    ap.add_argument(
        "--gn-sweep",
        action="store_true",
        help="GroupNorm+SiLU: forced cluster and block sizes (serial copy beside), only",
    )
    ap.add_argument(
        "--gn-waves",
        action="store_true",
        help="GroupNorm+SiLU: partial caches in one wave against whole ones in waves, only",
    )
    ap.add_argument(
        "--gn-l2", action="store_true", help="GroupNorm+SiLU: L2 hints for partial caches, only"
    )
    ap.add_argument(
        "--gn-trace", action="store_true", help="GroupNorm+SiLU: where a launch spends its time"
    )
    ap.add_argument(
        "--gn-floor",
        action="store_true",
        help="GroupNorm+SiLU beside a copy shaped like its launch (read all, then write), only",
    )
    ap.add_argument(
        "--gn-attrib",
        action="store_true",
        help="GroupNorm+SiLU without SiLU and without statistics (a profiling build), only",
    )
    ap.add_argument(
        "--gn-formats",
        action="store_true",
        help="GroupNorm+SiLU channels-last against reformats around the NCHW kernel, only",
    )
    ap.add_argument(
        "--gn-tiles",
        action="store_true",
        help="GroupNorm+SiLU channels-last: forced tiles and cluster sizes, only",
    )
    ap.add_argument(
        "--gn-tma",
        action="store_true",
        help="GroupNorm+SiLU channels-last: slices moved by TMA boxes against threads' loads, only",
    )
    ap.add_argument("--conv-only", action="store_true", help="Conv3d tables only")
    ap.add_argument(
        "--conv-all",
        action="store_true",
        help="Conv3d: the planner's launch against pad + cuDNN at every case, both layouts, only",
    )
    ap.add_argument(
        "--conv-sweep", action="store_true", help="the Hopper wgmma Conv3d variant sweep only"
    )
    ap.add_argument("--conv-tma", action="store_true", help="the TMA Conv3d kernel sweep only")
    ap.add_argument(
        "--conv-im2col", action="store_true", help="TMA Conv3d: boxes against im2col loads only"
    )
    ap.add_argument(
        "--conv-small", action="store_true", help="Conv3d with few input or output channels only"
    )
    ap.add_argument(
        "--conv-layouts",
        action="store_true",
        help="channels-first Conv3d: channels-first kernels vs channels-last copies only",
    )
    ap.add_argument(
        "--only", default="", help="Conv3d cases whose input shape (e.g. 1x384x5x60x104) has this"
    )
    args = ap.parse_args()
    if args.profile:
        profile_once()
        return
    if args.profile_conv:
        profile_conv(args.profile_conv)
        return
    props = torch.cuda.get_device_properties(0)
    print(
        f"# {datetime.date.today()} {props.name}, {props.multi_processor_count} SMs, "
        f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    )
    gn_shapes = [
        (2, 320, 64, 64),
        (2, 640, 32, 32),
        (2, 1280, 16, 16),
        (1, 512, 128, 128),
        (8, 320, 64, 64),
        (1, 256, 256, 256),
    ]
    conv_cases = list(CONV_CASES)
    if args.quick:
        gn_shapes, conv_cases = gn_shapes[:2], conv_cases[:2]
    if args.gn_cache:
        rows = bench_gn_cache(gn_shapes, ["float16", "float32"])
        print("\n# GroupNorm+SiLU NCHW: slice caching\n")
        print("\n".join(rows))
        return
    if args.gn_partial:
        shapes = [(1, 512, 128, 128), (1, 256, 256, 256), (1, 128, 512, 512), (8, 320, 64, 64)]
        rows = bench_gn_partial(shapes, ["float16", "float32"])
        print("\n# GroupNorm+SiLU NCHW: partial caches\n")
        print("\n".join(rows))
        return
    if args.gn_sweep:
        rows = sweep_plans(gn_shapes)
        print("\n# GroupNorm+SiLU fp16: forced cluster and block sizes, ms (serial copy ms)\n")
        print("\n".join(rows))
        return
    if args.gn_waves:
        shapes = [(2, 320, 64, 64), (4, 320, 64, 64), (8, 320, 64, 64), (1, 512, 128, 128)]
        shapes += [(1, 512, 80, 256), (1, 256, 256, 256), (1, 128, 512, 512)]
        rows = bench_gn_waves(shapes, ["float16", "float32"])
        print("\n# GroupNorm+SiLU: one wave of partial caches\n")
        print("\n".join(rows))
        return
    if args.gn_l2:
        shapes = [(1, 512, 128, 128), (1, 512, 80, 256), (1, 256, 256, 256)]
        rows = bench_gn_l2(shapes, ["float16", "float32", "bfloat16"])
        print("\n# GroupNorm+SiLU NCHW: L2 hints for partial caches\n")
        print("\n".join(rows))
        return
    if args.gn_trace:
        bench_gn_trace([(1, 512, 128, 128), (1, 256, 256, 256), (8, 320, 64, 64), (2, 320, 64, 64)])
        bench_gn_trace([(2, 320, 64, 64), (8, 320, 64, 64), (2, 1280, 16, 16)], layout="NHWC")
        return
    if args.gn_floor:
        cases = [("NCHW", "float16"), ("NCHW", "bfloat16"), ("NCHW", "float32")]
        rows = bench_gn_floor(gn_shapes, cases + [("NHWC", "float16"), ("NHWC", "float32")])
        print("\n# GroupNorm+SiLU against a copy shaped like its launch\n")
        print("\n".join(rows))
        return
    if args.gn_attrib:
        cases = [(s, "NCHW", dt) for s in gn_shapes for dt in ("float16", "bfloat16", "float32")]
        cases += [(s, "NHWC", dt) for s in gn_shapes for dt in ("float16", "float32")]
        rows = bench_gn_attrib(cases)
        print("\n# GroupNorm+SiLU: without SiLU, without statistics\n")
        print("\n".join(rows))
        return
    if args.gn_tma:
        shapes = gn_shapes + [(1, 512, 64, 64), (2, 512, 64, 64)]
        rows = bench_gn_tma(shapes, ["float16", "bfloat16", "float32"])
        print("\n# GroupNorm+SiLU channels-last: TMA boxes\n")
        print("\n".join(rows))
        return
    if args.gn_tiles:
        shapes = gn_shapes + [(2, 640, 64, 64), (2, 1280, 32, 32), (2, 960, 32, 32)]
        shapes += [(2, 960, 64, 64), (1, 512, 64, 64), (1, 128, 512, 512)]
        rows = sweep_gn_tiles(shapes, ["float16", "bfloat16", "float32"])
        print("\n# GroupNorm+SiLU channels-last: forced tiles\n")
        print("\n".join(rows))
        return
    if args.gn_formats:
        rows = bench_gn_formats(gn_shapes, ["float16", "bfloat16"])
        print("\n# GroupNorm+SiLU between channels-last layers\n")
        print("\n".join(rows))
        return
    if args.conv_all:
        cases = list(dict.fromkeys(conv_cases + TMA_EXTRA_CASES + SMALL_CHANNEL_CASES))
        conv_summary(cases, args.only, "Conv3d summary")
        return
    if args.conv_sweep:
        print("\n".join(sweep_conv_tiles(conv_cases)))
        return
    if args.conv_tma:
        cases = [c for c in conv_cases + TMA_EXTRA_CASES if args.only in "x".join(map(str, c[0]))]
        print("\n".join(sweep_conv_tma(cases)))
        return
    if args.conv_im2col:
        cases = [c for c in conv_cases + TMA_EXTRA_CASES if args.only in "x".join(map(str, c[0]))]
        print("\n".join(sweep_conv_im2col(cases)))
        return
    if args.conv_layouts:
        cases = conv_cases + TMA_EXTRA_CASES + SMALL_CHANNEL_CASES[3:]
        cases = [c for c in cases if args.only in "x".join(map(str, c[0]))]
        rows = bench_layout_change(cases)
        print("\n# channels-first summary (float16)\n")
        print("\n".join(rows))
        return
    if args.conv_small:
        conv_summary(SMALL_CHANNEL_CASES, args.only, "small-channel summary")
        return
    if args.conv_only:
        conv_tables(conv_cases)
        return
    print("\n## GroupNorm+SiLU (32 groups)\n")
    gn = bench_groupnorm(gn_shapes, ["float16", "float32", "bfloat16"])
    gn += bench_groupnorm(gn_shapes, ["float16"], layout="NHWC")[2:]
    print("\n## GroupNorm+SiLU fp16: forced cluster and block sizes, ms (serial copy ms)\n")
    sweep = sweep_plans(gn_shapes)
    if args.gn_only:
        print("\n# summary\n")
        print("\n".join(gn + [""] + sweep))
        return
    print("\n# summary\n")
    print("\n".join(gn))
    print()
    print("\n".join(sweep))
    conv_tables(conv_cases)


def bench_layout_change(cases, dt: str = "float16") -> list[str]:
    """Channels-first Conv3d: the channels-first kernels, and channels-last copies around a
    channels-last kernel (what harness.conv3d picks where layout_change_bytes > 0), against pad +
    cuDNN on the same NCDHW tensors; the channels-last kernel on channels-last inputs for the
    copies' cost."""
    torch.backends.cudnn.benchmark = True
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    optin = torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    rows = [
        "| x | Cout | pad+cuDNN ms | channels-first kernels ms | via channels-last ms "
        "| channels-last input ms | via / pad+cuDNN | kept / pad+cuDNN | copies MB | timing |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape, cout in cases:
        n, cin, d, h, w = shape
        one = (1, 1, 1)
        args = (n, cin, cout, (3, 3, 3), (d, h, w), (d, h, w), one, one, sms, optin, _hopper())
        lb = harness.layout_change_bytes(dt, *args)
        xs, xin, outs, wt, packed, bias = _conv_inputs(shape, cout, getattr(torch, dt), False)
        reference = [partial(_pad_conv_torch, x, wt, bias) for x in xs]
        reference[0]()
        t_r = _time_graph(reference)[0]
        t_kept = _time_graph(_fused_calls(xin, outs, packed, bias, "NCDHW", layout_change=False))[0]
        t_via = t_last = float("nan")
        modes = set()
        if lb:  # stream-K's workspace made outside the graphs (no allocation inside a capture)
            ws = torch.empty(sms * (256 * 256 + 1), device="cuda", dtype=torch.float32)
            calls = _fused_calls(xin, outs, packed, bias, "NCDHW", layout_change=True, workspace=ws)
            t_via, mode = _time_graph(calls)
            modes.add(mode)
            del xs, xin, outs
            torch.cuda.empty_cache()
            xs, xin, outs, wt, packed, bias = _conv_inputs(shape, cout, getattr(torch, dt), True)
            t_last, mode = _time_graph(_fused_calls(xin, outs, packed, bias, "NDHWC", workspace=ws))
            modes.add(mode)
        rows.append(
            f"| {'x'.join(map(str, shape))} | {cout} | {t_r:.4f} | {t_kept:.4f} | {t_via:.4f} "
            f"| {t_last:.4f} | {t_r / t_via:.2f}x | {t_r / t_kept:.2f}x | {lb / 2**20:.1f} "
            f"| {', '.join(sorted(modes)) or '-'} |"
        )
        print(rows[-1], flush=True)
        del xs, xin, outs
        torch.cuda.empty_cache()
    return rows


# RGB input convs (video-VAE encoders: 17 frames at 64 and 256 px; 9 frames at 480 x 832 into
# 96 channels, Wan 2.1's width) and an RGB output conv (decoder conv_out, 3 channels out).
SMALL_CHANNEL_CASES = [
    ((1, 3, 17, 64, 64), 128),
    ((1, 3, 17, 256, 256), 128),
    ((1, 3, 9, 480, 832), 96),
    ((1, 128, 17, 64, 64), 3),
]

# Wider frames for the TMA sweep (non-power-of-two widths: 104 and 208 positions).
CONV_CASES = [
    ((1, 96, 9, 64, 64), 96),
    ((1, 384, 5, 32, 32), 384),
    ((1, 3, 17, 64, 64), 128),
    ((1, 128, 9, 128, 128), 128),
    ((1, 256, 9, 64, 64), 256),
    ((1, 512, 5, 32, 32), 512),
]
TMA_EXTRA_CASES = [((1, 384, 5, 60, 104), 384), ((1, 192, 9, 120, 208), 192)]


def conv_summary(cases, only: str, title: str) -> None:
    """bench_conv in both layouts, fp16 and bf16, over the cases whose input shape (e.g.
    1x384x5x60x104) contains `only`, then the table."""
    cases = [c for c in cases if only in "x".join(map(str, c[0]))]
    rows = bench_conv(cases, ["float16", "bfloat16"])
    rows += bench_conv(cases, ["float16", "bfloat16"], channels_last=True)[2:]
    print(f"\n# {title}\n")
    print("\n".join(rows))


def conv_tables(conv_cases) -> None:
    """Conv3d: both layouts against pad + cuDNN, then the wgmma tile sweep on Hopper."""
    print("\n## Conv3d k3, causal zero padding\n")
    cv = bench_conv(conv_cases, ["float16", "bfloat16"])
    cv_last = bench_conv(conv_cases, ["float16", "bfloat16"], channels_last=True)
    tiles = sweep_conv_tiles(conv_cases) if _hopper() else []
    print("\n# conv summary\n")
    print("\n".join(cv + cv_last[2:]))
    print()
    print("\n".join(tiles))


if __name__ == "__main__":
    main()
