// latentrt GroupNormSiLU: y = SiLU?((x - mean_g) / sqrt(var_g + eps) * gamma[c] + beta[c]).
//
// One (batch, group) pair is normalized by a thread-block cluster of CS blocks (CS in 1, 2, 4,
// 8). Each block takes a contiguous slice of the group's elements, reads it once with vector
// loads (16 bytes, or 2 elements where 16 bytes do not divide the group's runs; channels-last
// tiles of several groups may read 16 bytes that straddle two groups), keeps it in
// shared memory and accumulates statistics in fp32: per batch of loads an exact (count, mean,
// M2) from sums shifted by a sample of the batch, merged per thread with Welford's update.
// Warps, the block and the cluster combine (count, mean, M2) triples by sums (count and weighted
// mean, then M2 plus the spread of the means); blocks exchange theirs through distributed shared
// memory (st.async; every block combines them in rank order, so all get bit-identical results),
// then scale and shift the slice from shared memory and write it once. Where slices outgrow the
// shared memory that keeps all clusters resident at once, a block caches the head of its slice
// and reads the tail again (`cap`), or, below half a slice, re-reads all of it (two passes).
//
// Layouts: channels-first (N, C, *spatial), where a group is one contiguous run of
// C/G * S elements, and channels-last (N, *spatial, C), where a group is C/G consecutive
// channels at every spatial position; channels-last groups narrower than a 32-byte sector, or
// that 16 bytes do not divide, are normalized a tile of consecutive groups per cluster
// (groupnorm_silu_tile_body). x, gamma, beta, y share one dtype (fp32, fp16, bf16).
#include "common.cuh"

// Phase trace, in profiling builds only (-DLATENTRT_GN_TRACE; benchmarks/bench_plugins.py
// --gn-trace): thread 0 of each of the first kTraceBlocks blocks records %globaltimer (ns) and
// clock64 at kTraceMarks points, and its SM.
#ifdef LATENTRT_GN_TRACE
constexpr int kTraceBlocks = 4096;
// entry, loads issued, slice folded, statistics final, exit; inside the statistics phase: peers'
// barriers initialized, own statistics sent, peers' statistics received (clusters only)
constexpr int kTraceMarks = 8;
extern "C" {  // unmangled, so the harness finds them by name
__device__ unsigned long long latentrt_gn_trace[kTraceBlocks][2 * kTraceMarks + 1];
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void trace_mark(int i) {
  if (threadIdx.x != 0 || blockIdx.x >= kTraceBlocks) return;
  latentrt_gn_trace[blockIdx.x][i] = global_ns();
  latentrt_gn_trace[blockIdx.x][kTraceMarks + i] = clock64();
  if (i == 0) {
    unsigned sm;
    asm volatile("mov.u32 %0, %smid;" : "=r"(sm));
    latentrt_gn_trace[blockIdx.x][2 * kTraceMarks] = sm;
  }
}
#define LRT_GN_MARK(i) trace_mark(i)
#else
#define LRT_GN_MARK(i)
#endif

namespace latentrt {

struct WelfordStat {
  float n;
  float mean;
  float m2;
};

// Chan et al.'s merge of (nb, mb, m2b) into s. The statistics' divides are approximate
// (__fdividef, 2 ulp): the folds sit on the loads' path, and IEEE divides there cost channels-last
// tiles and bulk-copy plans 2-8% on H100 (BENCHMARKS.md, eighteenth session).
__device__ __forceinline__ void welford_merge(WelfordStat& s, float nb, float mb, float m2b) {
  const float n = s.n + nb;
  if (n == 0.0f) return;
  const float d = mb - s.mean;
  const float f = __fdividef(nb, n);
  s.mean += d * f;
  s.m2 += m2b + d * d * s.n * f;
  s.n = n;
}

// The statistics of the first W lanes (W a power of two <= 32) combined, in every one of them:
// the count and the count-weighted mean by one butterfly of sums, then M2 plus each lane's
// n (mean_i - mean)^2 by another. Two short chains of adds and one divide, where merging
// Welford triples pairwise costs a divide per level; the butterfly's adds are commutative, so
// the lanes hold bit-identical results.
template <int W = 32>
__device__ __forceinline__ void stat_warp_reduce(WelfordStat& s) {
  float n = s.n, sum = s.n * s.mean;
#pragma unroll
  for (int off = W / 2; off > 0; off >>= 1) {
    n += __shfl_xor_sync(0xffffffffu, n, off);
    sum += __shfl_xor_sync(0xffffffffu, sum, off);
  }
  const float mean = n > 0.0f ? sum / n : 0.0f;
  const float d = s.mean - mean;
  float m2 = fmaf(s.n * d, d, s.m2);
#pragma unroll
  for (int off = W / 2; off > 0; off >>= 1) m2 += __shfl_xor_sync(0xffffffffu, m2, off);
  s = WelfordStat{n, mean, m2};
}

__device__ __forceinline__ void cluster_sync_all() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                   : "memory");
}

// The two halves of a cluster barrier: a block arrives once it no longer reads its peers' shared
// memory and waits only before it exits, so the wait costs nothing on the critical path.
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The exchange of one-group statistics: each block writes its (n, mean, M2) into every peer's
// shared memory by st.async, which completes 16 bytes of the peer's mbarrier transaction count
// (no release fence, no arrival); a block waits only on its own mbarrier. One one-way trip, where
// a cluster barrier and remote loads took two.
__device__ __forceinline__ unsigned cluster_addr(unsigned local, unsigned rank) {
  unsigned remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
__device__ __forceinline__ void store_async_cluster(unsigned remote, float4 v, unsigned remote_bar) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];" ::
          "r"(remote),
      "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(remote_bar)
      : "memory");
}
__device__ __forceinline__ void store_async_cluster(unsigned remote, float2 v, unsigned remote_bar) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];" ::"r"(
          remote),
      "f"(v.x), "f"(v.y), "r"(remote_bar)
      : "memory");
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}

// Reads a float from the shared memory of block `rank` of this cluster (same variable).
__device__ __forceinline__ float load_cluster_shared(const float* local, unsigned rank) {
  unsigned addr;
  asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }"
               : "=r"(addr)
               : "l"(local));
  unsigned remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
  return v;
}

// SiLU. fp32: exp and a fast divide (for t < -88 exp(-t) is inf and the divide gives the limit,
// -0), two MUFU operations. 16-bit outputs: sigmoid(t) = 0.5 + 0.5 tanh(t / 2) with the one-MUFU
// tanh.approx (relative error ~5e-4, below fp16/bf16 rounding of the result's 1e-2 budget).
template <typename T>
__device__ __forceinline__ float silu(float t) {
  if constexpr (sizeof(T) == 4) {
    return __fdividef(t, 1.0f + __expf(-t));
  } else {
    float th;
    asm("tanh.approx.f32 %0, %1;" : "=f"(th) : "f"(0.5f * t));
    return t * fmaf(0.5f, th, 0.5f);
  }
}

// Folds the first `valid` of U loaded vectors into st: an exact (count, mean, M2) of the
// batch from sums shifted by its first element (a sample of the data, so no cancellation).
template <typename T, int V, int U>
__device__ __forceinline__ void fold_batch(WelfordStat& st, const Pack<T, V> (&p)[U], int valid) {
  const float k = to_f32(p[0].v[0]);
  float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (u < valid) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float d = to_f32(p[u].v[j]) - k;
        s1 += d;
        s2 = fmaf(d, d, s2);
      }
    }
  }
  const float nb = static_cast<float>(valid * V);
  const float q = __fdividef(s1, nb);
  welford_merge(st, nb, k + q, fmaxf(s2 - s1 * q, 0.0f));
}

// fold_batch for vectors that straddle two groups: elements [0, k) go to `lo`, [k, V) to `hi`
// (k >= 1; k == V: all to lo), each part shifted by its own first element of the batch.
template <typename T, int V, int U>
__device__ __forceinline__ void fold_batch_split(WelfordStat& lo, WelfordStat& hi,
                                                 const Pack<T, V> (&p)[U], int valid, int k) {
  const float klo = to_f32(p[0].v[0]);
  const float khi = to_f32(p[0].v[V - 1]);
  float l1 = 0.0f, l2 = 0.0f, h1 = 0.0f, h2 = 0.0f;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (u < valid) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const bool in_lo = j < k;
        const float d = to_f32(p[u].v[j]) - (in_lo ? klo : khi);
        const float dl = in_lo ? d : 0.0f, dh = in_lo ? 0.0f : d;
        l1 += dl;
        l2 = fmaf(dl, dl, l2);
        h1 += dh;
        h2 = fmaf(dh, dh, h2);
      }
    }
  }
  const float nl = static_cast<float>(valid * k);
  const float nh = static_cast<float>(valid * (V - k));
  const float ql = __fdividef(l1, nl);
  welford_merge(lo, nl, klo + ql, fmaxf(l2 - l1 * ql, 0.0f));
  if (nh > 0.0f) {
    const float qh = __fdividef(h1, nh);
    welford_merge(hi, nh, khi + qh, fmaxf(h2 - h1 * qh, 0.0f));
  }
}

// One vector read from shared memory in one access: a Pack read as a struct may be split into
// its elements (the bf16 bulk-store loop read each 16-byte vector by eight 2-byte loads).
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const Pack<T, V>* p) {
  if constexpr (sizeof(Pack<T, V>) == 16) {
    const uint4 r = *reinterpret_cast<const uint4*>(p);
    Pack<T, V> o;
    memcpy(&o, &r, 16);
    return o;
  } else {
    return *p;
  }
}

// y = SiLU?(x * a[c] + b[c]) for one vector; its channels are c0 for every element
// (channels-first) or c0, c0 + 1, ... (channels-last).
template <typename T, int V, bool PER_ELEMENT>
__device__ __forceinline__ Pack<T, V> scale_shift(const Pack<T, V>& p, const float* a,
                                                  const float* b, unsigned c0, int act) {
  Pack<T, V> o;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const unsigned c = PER_ELEMENT ? c0 + j : c0;
    float t = fmaf(to_f32(p.v[j]), a[c], b[c]);
    if (act) t = silu<T>(t);
    o.v[j] = from_f32<T>(t);
  }
  return o;
}

// L2 eviction priorities for fp32 partial caches (not in LATENTRT_GN_NO_L2_HINTS builds, the
// A/B baseline of benchmarks/bench_plugins.py --gn-l2): a slice's cached head is read once, so
// it goes first; its tail, read again after the statistics, stays. H100: 1.10x at
// 1x512x128x128 fp32; 16-bit partial caches ran 14-15% slower with the same hints, so they
// load without them.
__device__ __forceinline__ unsigned long long l2_policy(bool keep) {
  unsigned long long pol;
  if (keep)
    asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
  else
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  return pol;
}

// One vector load with an L2 eviction policy.
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_l2(const T* p, unsigned long long pol) {
  constexpr int B = static_cast<int>(sizeof(Pack<T, V>));
  union {
    Pack<T, V> v;
    unsigned u[B >= 4 ? B / 4 : 1];
    unsigned short h;
  } r;
  if constexpr (B == 16)
    asm volatile("ld.global.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(r.u[0]), "=r"(r.u[1]), "=r"(r.u[2]), "=r"(r.u[3])
                 : "l"(p), "l"(pol));
  else if constexpr (B == 8)
    asm volatile("ld.global.L2::cache_hint.v2.u32 {%0, %1}, [%2], %3;"
                 : "=r"(r.u[0]), "=r"(r.u[1])
                 : "l"(p), "l"(pol));
  else if constexpr (B == 4)
    asm volatile("ld.global.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(r.u[0]) : "l"(p), "l"(pol));
  else
    asm volatile("ld.global.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(r.h) : "l"(p), "l"(pol));
  return r.v;
}

// Vector loads a thread keeps in flight per batch: four 16-byte vectors (more spills registers
// under the 64-register bound), eight narrower ones. Channels-last groups read in 4-byte vectors
// are latency-bound: eight in flight ran 1.09-1.10x faster than four on H100 (tiles of
// 2x320x64x64 and 8x320x64x64, fp16 and bf16; BENCHMARKS.md, fourteenth session).
template <typename T, int V>
__host__ __device__ constexpr int loads_in_flight() {
  return sizeof(Pack<T, V>) >= 16 ? 4 : 8;
}

// n / d for any 32-bit n by a multiply-high, an add and a shift (Granlund and Montgomery): d is
// fixed for a launch, so the host computes m and s once (fast_divisor) instead of every vector
// paying the ~20 instructions of a 32-bit divide. 0.99-1.04x channels-first, up to 1.21x
// channels-last bf16 (H100; BENCHMARKS.md, twentieth session).
struct FastDivisor {
  unsigned d, m, s;
  __device__ __forceinline__ unsigned div(unsigned n) const {
    return static_cast<unsigned>((static_cast<unsigned long long>(__umulhi(m, n)) + n) >> s);
  }
};

template <int LAYOUT, int V>
struct GroupIndexer {
  unsigned C;       // channels
  FastDivisor per;  // channels-first: by the spatial size S; channels-last: by Cg / V

  // Element offset of vector v from the group's base.
  __device__ __forceinline__ long long offset(unsigned v) const {
    if (LAYOUT == kLayoutChannelsFirst) return static_cast<long long>(v) * V;
    const unsigned q = per.div(v);
    return static_cast<long long>(q) * C + (v - q * per.d) * V;
  }
  // Group-local channel of element 0 of vector v (channels-first: all V share it).
  __device__ __forceinline__ unsigned channel(unsigned v) const {
    if (LAYOUT == kLayoutChannelsFirst) return per.div(v * V);
    return (v - per.div(v) * per.d) * V;
  }
};

// `cached`: 0 reads the slice twice from global memory, kCacheRegisters caches it through the
// threads' loads, kCacheBulk through bulk copies (channels-first, 16-byte vectors), and
// kCacheBulkStore also writes it out by bulk stores. `cap`: the vectors of a slice the cache
// holds (kCacheRegisters only may hold fewer than the slice: the rest is read again, from L2
// where it still is).
enum : int { kCacheRegisters = 1, kCacheBulk = 2, kCacheBulkStore = 3 };
constexpr unsigned kBulkPieces = 4;

// Channels-last slices moved by the TMA (kCacheBulk and kCacheBulkStore channels-last): 2-D
// tensor maps of x and y as 16-bit units, a position's C channels by all N * S positions, read
// and written in boxes of a group's channels at `box` consecutive positions.
struct GnMaps {
  TmaDesc x, y;
};

template <typename T, int LAYOUT, int CS, int V, bool TMA = false>
__device__ __forceinline__ void groupnorm_silu_body(const T* __restrict__ x,
                                                    const T* __restrict__ gamma,
                                                    const T* __restrict__ beta, T* __restrict__ y,
                                                    int C, int S, int G, float eps, int act,
                                                    int cached, unsigned cap, unsigned div_m,
                                                    unsigned div_s, const GnMaps* maps = nullptr,
                                                    unsigned box = 0) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ float s_warp[16][3];  // per warp; at most 512 threads (__launch_bounds__)
  __shared__ float s_final[2];
  __shared__ float4 s_peer[CS];  // (n, mean, M2, -) of every block of the cluster, by rank
  __shared__ __align__(8) unsigned long long s_xbar;  // completes once all CS have written

  const unsigned Cg = static_cast<unsigned>(C / G);
  const unsigned group = blockIdx.x / CS;
  const unsigned rank = blockIdx.x % CS;
  const unsigned n = group / G;
  const unsigned g = group % G;
  const long long base =
      LAYOUT == kLayoutChannelsFirst
          ? (static_cast<long long>(n) * C + static_cast<long long>(g) * Cg) * S
          : static_cast<long long>(n) * S * C + static_cast<long long>(g) * Cg;
  const T* xg = x + base;
  T* yg = y + base;

  const GroupIndexer<LAYOUT, V> ix{
      static_cast<unsigned>(C),
      {LAYOUT == kLayoutChannelsFirst ? static_cast<unsigned>(S) : Cg / V, div_m, div_s}};
  const unsigned total = Cg * static_cast<unsigned>(S) / V;
  const unsigned per = (total + CS - 1) / CS;
  const unsigned start = min(total, rank * per);
  const unsigned end = min(total, start + per);

  // Shared memory: per-channel scale a and shift b (y = x * a + b before the SiLU), then the
  // slice cache.
  float* s_a = reinterpret_cast<float*>(smem_raw);
  float* s_b = s_a + Cg;
  const unsigned affine_bytes = ((2u * Cg * 4u + 15u) / 16u) * 16u;
  // The TMA's boxes land at 128-byte boundaries (the launcher adds 128 bytes of slack).
  constexpr bool kTma = TMA && LAYOUT == kLayoutChannelsLast && sizeof(Pack<T, V>) == 16;
  const unsigned cache_at =
      kTma ? ((smem_addr(smem_raw) + affine_bytes + 127u) & ~127u) - smem_addr(smem_raw)
           : affine_bytes;
  Pack<T, V>* cache = reinterpret_cast<Pack<T, V>*>(smem_raw + cache_at);

  const unsigned tid = threadIdx.x;
  const unsigned bs = blockDim.x;
  constexpr int U = loads_in_flight<T, V>();
  LRT_GN_MARK(0);
  // The cluster's statistics travel one way: each block writes its own into every peer by
  // st.async (H100: 0-7% faster than a cluster barrier and remote loads, or than remote
  // stores and a release arrival; BENCHMARKS.md, twelfth session).
  if constexpr (CS > 1) {  // the exchange's mbarrier, initialized before any peer writes to it
    if (tid == 0) {
      mbar_init(smem_addr(&s_xbar), 1);
      mbar_expect_tx(smem_addr(&s_xbar), CS * 16u);  // the phase completes on the CS writes
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cluster_arrive_relaxed();  // the matching wait comes before this block's first remote write
  }

  // gamma and beta first: their loads are in flight together with the first data loads.
  for (unsigned c = tid; c < Cg; c += bs) {
    s_a[c] = to_f32(gamma[g * Cg + c]);
    s_b[c] = to_f32(beta[g * Cg + c]);
  }

  // Pass 1: read the slice once, cache it, and fold each batch of U vectors' (count, mean, M2)
  // into the thread's Welford statistics. Channels-first slices of 16-byte vectors are one
  // contiguous run: with `cached` >= kCacheBulk the TMA copies the whole slice in kBulkPieces
  // bulk copies, each completing its own mbarrier, and the threads fold a piece from shared
  // memory as soon as it lands. Channels-last slices the same in pieces of whole boxes (kTma:
  // the slice is whole positions, `box` of them dividing it). Otherwise each thread keeps U
  // vector loads in flight. (Filling the cache with per-thread cp.async measured 5-15% slower
  // on H100.)
  constexpr bool kBulk = (LAYOUT == kLayoutChannelsFirst && sizeof(Pack<T, V>) == 16) || kTma;
  __shared__ __align__(8) unsigned long long s_bar[kBulkPieces];
  const unsigned nv = end - start;
  const unsigned vpp = Cg / V;                // kTma: vectors a position
  const unsigned vbox = kTma ? box * vpp : 1u;  // vectors a box
  const unsigned piece = (nv / vbox + kBulkPieces - 1) / kBulkPieces * vbox;
  const int tma_c = static_cast<int>(g * Cg * sizeof(T) / 2);  // the group's first 16-bit unit
  const int tma_row = static_cast<int>(n * static_cast<unsigned>(S) + start / vpp);
  WelfordStat st{0.0f, 0.0f, 0.0f};
  if (kBulk && cached >= kCacheBulk) {
    if (tid == 0) {
      for (int k = 0; k < kBulkPieces; ++k) mbar_init(smem_addr(&s_bar[k]), 1);
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
      for (unsigned k = 0; k < kBulkPieces; ++k) {
        const unsigned a = min(nv, k * piece), b = min(nv, a + piece);
        const unsigned bar = smem_addr(&s_bar[k]);
        if (b == a) {
          mbar_arrive(bar);
          continue;
        }
        mbar_expect_tx(bar, (b - a) * 16u);
        if constexpr (kTma) {
          for (unsigned v = a; v < b; v += vbox)
            tma_load_2d(smem_addr(cache + v), &maps->x, bar, tma_c, tma_row + v / vpp);
        } else {
          bulk_load(smem_addr(cache + a), xg + ix.offset(start + a), (b - a) * 16u, bar);
        }
      }
    }
    __syncthreads();  // the mbarriers are initialized before anyone waits on them
    LRT_GN_MARK(1);
    for (unsigned k = 0; k < kBulkPieces; ++k) {
      const unsigned a = min(nv, k * piece), b = min(nv, a + piece);
      mbar_wait(smem_addr(&s_bar[k]), 0);
      for (unsigned v0 = a + tid; v0 < b; v0 += U * bs) {
        Pack<T, V> p[U];
        int valid = 0;
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (v0 + u * bs < b) {
            p[u] = load_pack(&cache[v0 + u * bs]);
            ++valid;
          }
        fold_batch(st, p, valid);
      }
    }
  } else {
    LRT_GN_MARK(1);
    // An fp32 partial cache (channels-first only, as the planners choose them): its tail is read
    // again.
#ifndef LATENTRT_GN_NO_L2_HINTS
    const bool hints = sizeof(T) == 4 && LAYOUT == kLayoutChannelsFirst && cached && cap < nv;
#else
    constexpr bool hints = false;
#endif
    for (unsigned v0 = start + tid; v0 < end; v0 += U * bs) {
      Pack<T, V> p[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (v0 + u * bs < end) {
          const T* src = xg + ix.offset(v0 + u * bs);
          if (hints)
            p[u] = load_l2<T, V>(src, l2_policy(v0 + u * bs - start >= cap));
          else
            p[u] = *reinterpret_cast<const Pack<T, V>*>(src);
        }
      int valid = 0;
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (v0 + u * bs < end) {
          if (cached && v0 + u * bs - start < cap) cache[v0 + u * bs - start] = p[u];
          ++valid;
        }
      fold_batch(st, p, valid);
    }
  }

  // Block reduction.
  const unsigned lane = tid & 31u;
  const unsigned warp = tid >> 5;
#ifdef LATENTRT_GN_NO_STATS
  // Profiling build (benchmarks/bench_plugins.py --gn-attrib): no statistics, mean 0 and rstd 1.
  // The launch times everything but the reductions and the exchange, so it bounds what any way
  // of computing the statistics could save. Its output is not a GroupNorm.
  if constexpr (CS > 1) cluster_wait();
  if (tid == 0) {
    s_final[0] = 0.0f;
    s_final[1] = 1.0f;
  }
  (void)lane, (void)warp, (void)st, (void)s_warp, (void)s_peer;
#else
  stat_warp_reduce(st);
  if (lane == 0) {
    s_warp[warp][0] = st.n;
    s_warp[warp][1] = st.mean;
    s_warp[warp][2] = st.m2;
  }
  __syncthreads();
  LRT_GN_MARK(2);
  if constexpr (CS > 1) cluster_wait();  // every peer's s_xbar is initialized
  LRT_GN_MARK(5);
  if (warp == 0) {
    const unsigned nw = bs >> 5;
    WelfordStat w{0.0f, 0.0f, 0.0f};
    if (lane < nw) w = WelfordStat{s_warp[lane][0], s_warp[lane][1], s_warp[lane][2]};
    stat_warp_reduce<16>(w);  // lanes 0-15 hold the block's statistics (16 warps at most)
    if constexpr (CS == 1) {
      if (lane == 0) {
        s_final[0] = w.mean;
        s_final[1] = rsqrtf(w.m2 / w.n + eps);
      }
    } else if (lane < CS) {  // lane r sends them to block r
      store_async_cluster(cluster_addr(smem_addr(&s_peer[rank]), lane),
                          make_float4(w.n, w.mean, w.m2, 0.0f),
                          cluster_addr(smem_addr(&s_xbar), lane));
    }
  }
  LRT_GN_MARK(6);

  // The cluster's statistics, merged in rank order (every block gets bit-identical ones). Once
  // s_xbar completes, no peer touches this block's shared memory again, so blocks may exit
  // without a closing cluster barrier.
  if constexpr (CS > 1) {
    if (warp == 0) {
      WelfordStat w{0.0f, 0.0f, 0.0f};
      mbar_wait(smem_addr(&s_xbar), 0);  // the writes are visible once the phase completes
      if (lane < CS) w = WelfordStat{s_peer[lane].x, s_peer[lane].y, s_peer[lane].z};
      LRT_GN_MARK(7);
      stat_warp_reduce<CS>(w);
      if (lane == 0) {
        s_final[0] = w.mean;
        s_final[1] = rsqrtf(w.m2 / w.n + eps);
      }
    }
  }
#endif  // LATENTRT_GN_NO_STATS
  __syncthreads();
  LRT_GN_MARK(3);
  const float mean = s_final[0];
  const float rstd = s_final[1];
  for (unsigned c = tid; c < Cg; c += bs) {
    const float a = s_a[c] * rstd;
    s_b[c] -= mean * a;
    s_a[c] = a;
  }
  __syncthreads();

  // Pass 2: scale and shift, SiLU, write once. kCacheBulkStore: in place in shared memory, then
  // out by bulk stores, a piece at a time.
  if (kBulk && cached == kCacheBulkStore) {
    for (unsigned k = 0; k < kBulkPieces; ++k) {
      const unsigned a = min(nv, k * piece), b = min(nv, a + piece);
      for (unsigned v = a + tid; v < b; v += bs)
        cache[v] = scale_shift<T, V, LAYOUT == kLayoutChannelsLast>(
            load_pack(&cache[v]), s_a, s_b, ix.channel(start + v), act);
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // visible to the TMA
      __syncthreads();
      if constexpr (kTma) {
        if (tid == 0)
          for (unsigned v = a; v < b; v += vbox)
            tma_store_2d(&maps->y, tma_c, tma_row + v / vpp, smem_addr(cache + v));
      } else if (tid == 0 && b > a) {
        bulk_store(yg + ix.offset(start + a), smem_addr(cache + a), (b - a) * 16u);
      }
    }
    if (tid == 0) bulk_store_drain();  // the block's shared memory outlives the stores' reads
    LRT_GN_MARK(4);
    return;
  }
  // Vectors [start, split) come from the cache, [split, end) from global memory: first, as the
  // slice's tail was read last in pass 1 and is the likeliest still in L2.
  const unsigned split = start + (cached ? min(cap, nv) : 0u);
#ifndef LATENTRT_GN_NO_L2_HINTS  // a partial cache's tail, read the second time
  const bool last_use = sizeof(T) == 4 && LAYOUT == kLayoutChannelsFirst && cached && split < end;
#else
  constexpr bool last_use = false;
#endif
  auto emit = [&](unsigned a, unsigned b, bool from_cache) {
    for (unsigned v0 = a + tid; v0 < b; v0 += U * bs) {
      Pack<T, V> p[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (v0 + u * bs < b) {
          const T* src = xg + ix.offset(v0 + u * bs);
          p[u] = from_cache ? load_pack(&cache[v0 + u * bs - start])
                 : last_use ? load_l2<T, V>(src, l2_policy(false))
                            : *reinterpret_cast<const Pack<T, V>*>(src);
        }
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (v0 + u * bs < b) {
          const unsigned vi = v0 + u * bs;
          *reinterpret_cast<Pack<T, V>*>(yg + ix.offset(vi)) =
              scale_shift<T, V, LAYOUT == kLayoutChannelsLast>(p[u], s_a, s_b, ix.channel(vi),
                                                               act);
        }
    }
  };
  emit(split, end, false);
  emit(start, split, true);
  LRT_GN_MARK(4);
}

// Channels-last with small groups: a cluster normalizes a tile of GT consecutive groups of one
// image, so a row of the tile (GT * Cg channels at one spatial position) is one contiguous run
// that a warp reads coalesced, where one group alone is a 20-80-byte run every C elements. Each
// thread keeps one column of the tile for all its rows; statistics are reduced per group in the
// block and across the cluster as in the one-group body. blockDim is a multiple of the row's
// vector count. Where V divides Cg a column is one group's; with SPLIT (16-byte vectors over 10
// fp16 channels a group, say) a column may straddle two groups (V <= Cg, or V == 2 Cg), and each
// thread keeps statistics for both: the second pair in dynamic shared memory after the affine
// arrays (kSplitStatBytes, which the planners count).
constexpr int kMaxTileGroups = 32;
constexpr unsigned kSplitStatBytes = 2u * 512u * 4u;

// The tile body's static shared memory, declared once per kernel (not per vector width).
struct TileShared {
  float stat[2][512];              // every thread's (mean, M2); counts follow from the geometry
  float2 peer[kMaxTileGroups][8];  // per group, (mean, M2) of every block, by rank
  float final[kMaxTileGroups][2];  // per group, (mean, rstd) of the cluster
  float3 part[16];                 // per warp, its share of a group's statistics (n, mean, M2)
  unsigned long long xbar;         // completes once all peers have written theirs
};

template <typename T, int CS, int V, bool SPLIT>
__device__ __forceinline__ void groupnorm_silu_tile_body(const T* __restrict__ x,
                                                         const T* __restrict__ gamma,
                                                         const T* __restrict__ beta,
                                                         T* __restrict__ y, int C, int S, int G,
                                                         float eps, int act, int cached,
                                                         unsigned cap, int GT, TileShared& sh) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& s_stat = sh.stat;
  auto& s_final = sh.final;

  const unsigned Cg = static_cast<unsigned>(C / G);
  const unsigned RW = static_cast<unsigned>(GT) * Cg;  // channels in a tile row
  const unsigned VR = RW / V;                           // vectors in a tile row
  const unsigned tiles = static_cast<unsigned>(G / GT);
  const unsigned unit = blockIdx.x / CS;
  const unsigned rank = blockIdx.x % CS;
  const unsigned n = unit / tiles;
  const unsigned tile = unit % tiles;
  const long long base = static_cast<long long>(n) * S * C + static_cast<long long>(tile) * RW;
  const T* xg = x + base;
  T* yg = y + base;

  const unsigned Su = static_cast<unsigned>(S);
  const unsigned per = (Su + CS - 1) / CS;  // rows of this block
  const unsigned start = min(Su, rank * per);
  const unsigned end = min(Su, start + per);

  float* s_a = reinterpret_cast<float*>(smem_raw);
  float* s_b = s_a + RW;
  const unsigned affine_bytes = ((2u * RW * 4u + 15u) / 16u) * 16u;
  float* s_hi = reinterpret_cast<float*>(smem_raw + affine_bytes);  // SPLIT: [2][blockDim]
  Pack<T, V>* cache =
      reinterpret_cast<Pack<T, V>*>(smem_raw + affine_bytes + (SPLIT ? kSplitStatBytes : 0u));

  const unsigned tid = threadIdx.x;
  const unsigned bs = blockDim.x;
  const unsigned R = bs / VR;  // rows per pass (blockDim is a multiple of VR)
  const unsigned col = tid % VR;
  const unsigned r0 = tid / VR;
  // Elements of column c in its first group (V where V divides Cg).
  constexpr unsigned kV = V;
  auto lo_elems = [&](unsigned c) { return SPLIT ? min(kV, (c * kV / Cg + 1) * Cg - c * kV) : kV; };
  constexpr int U = loads_in_flight<T, V>();
  const unsigned cap_rows = cached ? cap / VR : 0u;  // the cache holds whole rows
  LRT_GN_MARK(0);

  if constexpr (CS > 1) {  // the exchange's mbarrier, as in the one-group body
    if (tid == 0) {
      mbar_init(smem_addr(&sh.xbar), 1);
      mbar_expect_tx(smem_addr(&sh.xbar), static_cast<unsigned>(GT) * CS * 8u);
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cluster_arrive_relaxed();
  }
  for (unsigned c = tid; c < RW; c += bs) {
    s_a[c] = to_f32(gamma[tile * RW + c]);
    s_b[c] = to_f32(beta[tile * RW + c]);
  }

  auto at = [&](unsigned r) { return static_cast<long long>(r) * C + col * V; };
  WelfordStat st{0.0f, 0.0f, 0.0f}, st_hi{0.0f, 0.0f, 0.0f};
  const int k_lo = static_cast<int>(lo_elems(col));
  for (unsigned rr = start + r0; rr < end; rr += U * R) {
    Pack<T, V> p[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (rr + u * R < end) p[u] = *reinterpret_cast<const Pack<T, V>*>(xg + at(rr + u * R));
    int valid = 0;
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (rr + u * R < end) {
        if (rr + u * R - start < cap_rows) cache[(rr + u * R - start) * VR + col] = p[u];
        ++valid;
      }
    if constexpr (SPLIT)
      fold_batch_split(st, st_hi, p, valid, k_lo);
    else
      fold_batch(st, p, valid);
  }
  s_stat[0][tid] = st.mean;
  s_stat[1][tid] = st.m2;
  if constexpr (SPLIT) {
    s_hi[tid] = st_hi.mean;
    s_hi[bs + tid] = st_hi.m2;
  }
  __syncthreads();
  LRT_GN_MARK(2);

  // Per group: its threads are its columns (c0 .. c0 + nc - 1) in each of the R row slots; a
  // column whose first group is an earlier one holds this group's part in s_hi. Slot r read
  // base_rows + (r < extra) rows. K = nw / GT warps share a group (one warp where GT > nw): share
  // k merges slots r = lane + 32 k (mod 32 K) of every column into its lanes' statistics and
  // reduces them across the warp; with K > 1 the group's first warp then merges the K shares.
  // blockDim need not be a multiple of 32: only whole warps (warp < nw) reduce.
  const unsigned lane = tid & 31u;
  const unsigned warp = tid >> 5;
  const unsigned nw = bs >> 5;
  const unsigned gt = static_cast<unsigned>(GT);
  const unsigned K = gt <= nw ? nw / gt : 1u;
  const unsigned base_rows = (end - start) / R, extra = (end - start) % R;
  // The block's statistics of group gi, to every block of the cluster (st.async, as in the
  // one-group body; the peers' barriers are initialized once the cluster wait returns).
  auto publish = [&](unsigned gi, const WelfordStat& w) {
    if constexpr (CS == 1) {
      if (lane == 0) {
        s_final[gi][0] = w.mean;
        s_final[gi][1] = rsqrtf(w.m2 / w.n + eps);
      }
    } else {
      if (gi == warp) cluster_wait();
      LRT_GN_MARK(5);
      if (lane < CS)
        store_async_cluster(cluster_addr(smem_addr(&sh.peer[gi][rank]), lane),
                            make_float2(w.mean, w.m2), cluster_addr(smem_addr(&sh.xbar), lane));
    }
  };
  for (unsigned u = warp; warp < nw && u < K * gt; u += nw) {
    const unsigned gi = u % gt, k = u / gt;
    const unsigned c0 = gi * Cg / V;
    const unsigned nc = ((gi + 1) * Cg - 1) / V - c0 + 1;
    WelfordStat w{0.0f, 0.0f, 0.0f};
    for (unsigned c = c0; c < c0 + nc; ++c) {
      const bool hi = SPLIT && c * V / Cg != gi;  // column c's part of group gi
      const float* mean_a = hi ? s_hi : s_stat[0];
      const float* m2_a = hi ? s_hi + bs : s_stat[1];
      const float kc = static_cast<float>(hi ? V - lo_elems(c) : lo_elems(c));
      for (unsigned r = lane + 32u * k; r < R; r += 32u * K)
        welford_merge(w, kc * static_cast<float>(base_rows + (r < extra)), mean_a[r * VR + c],
                      m2_a[r * VR + c]);
    }
    stat_warp_reduce(w);
    if (K == 1)
      publish(gi, w);
    else if (lane == 0)
      sh.part[u] = make_float3(w.n, w.mean, w.m2);
  }
  if (K > 1) {
    __syncthreads();
    if (warp < gt) {
      WelfordStat w{0.0f, 0.0f, 0.0f};
      if (lane < K) {
        const float3 q = sh.part[warp + gt * lane];
        w = WelfordStat{q.x, q.y, q.z};
      }
      stat_warp_reduce<16>(w);  // K <= 16
      publish(warp, w);
    }
  }
  if constexpr (CS > 1) {
    if (warp >= nw || warp >= static_cast<unsigned>(GT)) cluster_wait();  // every thread waits once
    LRT_GN_MARK(6);
    mbar_wait(smem_addr(&sh.xbar), 0);  // all peers' statistics have landed
    LRT_GN_MARK(7);
    for (unsigned gi = warp; warp < nw && gi < static_cast<unsigned>(GT); gi += nw) {
      WelfordStat w{0.0f, 0.0f, 0.0f};
      if (lane < CS) {  // block `lane` normalized rows [lane * per, lane * per + per) of S
        const unsigned rows = min(Su, (lane + 1) * per) - min(Su, lane * per);
        w = WelfordStat{static_cast<float>(rows * Cg), sh.peer[gi][lane].x, sh.peer[gi][lane].y};
      }
      stat_warp_reduce<CS>(w);
      if (lane == 0) {
        s_final[gi][0] = w.mean;
        s_final[gi][1] = rsqrtf(w.m2 / w.n + eps);
      }
    }
  }
  __syncthreads();
  LRT_GN_MARK(3);
  for (unsigned c = tid; c < RW; c += bs) {
    const unsigned gi = c / Cg;
    const float a = s_a[c] * s_final[gi][1];
    s_b[c] -= s_final[gi][0] * a;
    s_a[c] = a;
  }
  __syncthreads();

  // Uncached rows first (read last in pass 1, the likeliest still in L2), then cached ones.
  const unsigned split = min(end, start + cap_rows);
  auto emit = [&](unsigned a, unsigned b, bool from_cache) {
    for (unsigned rr = a + r0; rr < b; rr += U * R) {
      Pack<T, V> p[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (rr + u * R < b)
          p[u] = from_cache ? load_pack(&cache[(rr + u * R - start) * VR + col])
                            : *reinterpret_cast<const Pack<T, V>*>(xg + at(rr + u * R));
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (rr + u * R < b)
          *reinterpret_cast<Pack<T, V>*>(yg + at(rr + u * R)) =
              scale_shift<T, V, true>(p[u], s_a, s_b, col * V, act);
    }
  };
  emit(split, end, false);
  emit(start, split, true);
  LRT_GN_MARK(4);
}

template <typename T, int LAYOUT, int CS>
__device__ __forceinline__ void groupnorm_silu_kernel(const T* x, const T* gamma, const T* beta,
                                                      T* y, int C, int S, int G, float eps,
                                                      int act, int cached, unsigned cap, int vec,
                                                      int gt, unsigned div_m, unsigned div_s) {
  constexpr int VMAX = 16 / static_cast<int>(sizeof(T));
  if constexpr (LAYOUT == kLayoutChannelsLast) {
    if (gt > 1) {
      __shared__ TileShared sh;
      if (vec == VMAX && (C / G) % VMAX != 0)  // 16-byte vectors straddling groups
        groupnorm_silu_tile_body<T, CS, VMAX, true>(x, gamma, beta, y, C, S, G, eps, act, cached,
                                                    cap, gt, sh);
      else if (vec == VMAX)
        groupnorm_silu_tile_body<T, CS, VMAX, false>(x, gamma, beta, y, C, S, G, eps, act, cached,
                                                     cap, gt, sh);
      else if (vec == 2)
        groupnorm_silu_tile_body<T, CS, 2, false>(x, gamma, beta, y, C, S, G, eps, act, cached,
                                                  cap, gt, sh);
      else
        groupnorm_silu_tile_body<T, CS, 1, false>(x, gamma, beta, y, C, S, G, eps, act, cached,
                                                  cap, gt, sh);
      return;
    }
  }
  if (vec == VMAX)
    groupnorm_silu_body<T, LAYOUT, CS, VMAX>(x, gamma, beta, y, C, S, G, eps, act, cached, cap,
                                               div_m, div_s);
  else if (vec == 2)
    groupnorm_silu_body<T, LAYOUT, CS, 2>(x, gamma, beta, y, C, S, G, eps, act, cached, cap,
                                            div_m, div_s);
  else
    groupnorm_silu_body<T, LAYOUT, CS, 1>(x, gamma, beta, y, C, S, G, eps, act, cached, cap,
                                            div_m, div_s);
}

// Channels-last one-group slices of 16-byte vectors moved by the TMA (GnMaps; `box` positions a
// box, dividing each block's slice), cached whole: `cached` kCacheBulk or kCacheBulkStore.
template <typename T, int CS>
__device__ __forceinline__ void groupnorm_silu_tma_kernel(const GnMaps* maps, const T* x,
                                                          const T* gamma, const T* beta, T* y,
                                                          int C, int S, int G, float eps, int act,
                                                          int cached, unsigned cap, unsigned box,
                                                          unsigned div_m, unsigned div_s) {
  constexpr int VMAX = 16 / static_cast<int>(sizeof(T));
  groupnorm_silu_body<T, kLayoutChannelsLast, CS, VMAX, true>(
      x, gamma, beta, y, C, S, G, eps, act, cached, cap, div_m, div_s, maps, box);
}

}  // namespace latentrt

// Kernel entry points, looked up by name from the harness:
// latentrt_gn_silu_{nchw|nhwc}_{f32|f16|bf16}_c{1|2|4|8}; grid.x = N * G / gt * CS (gt, the
// groups of a channels-last tile, is 1 for one group per cluster).
#define LRT_GN_KERNEL(T, SUF, LAYOUT, LNAME, CS)                                                  \
  extern "C" __global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(512, 2)                  \
      latentrt_gn_silu_##LNAME##_##SUF##_c##CS(const T* x, const T* gamma, const T* beta, T* y,   \
                                               int C, int S, int G, float eps, int act,           \
                                               int cached, unsigned cap, int vec, int gt,         \
                                               unsigned div_m, unsigned div_s) {                  \
    latentrt::groupnorm_silu_kernel<T, LAYOUT, CS>(x, gamma, beta, y, C, S, G, eps, act, cached, \
                                                   cap, vec, gt, div_m, div_s);                   \
  }
// latentrt_gn_silu_nhwc_tma_{f32|f16|bf16}_c{1|2|4|8}: the channels-last slices moved by the TMA
// (the tensor maps come first, by value); grid.x = N * G * CS.
#define LRT_GN_TMA_KERNEL(T, SUF, CS)                                                           \
  extern "C" __global__ void __cluster_dims__(CS, 1, 1) __launch_bounds__(512, 2)                \
      latentrt_gn_silu_nhwc_tma_##SUF##_c##CS(                                                   \
          const __grid_constant__ latentrt::GnMaps maps, const T* x, const T* gamma,             \
          const T* beta, T* y, int C, int S, int G, float eps, int act, int cached, unsigned cap, \
          unsigned box, unsigned div_m, unsigned div_s) {                                        \
    latentrt::groupnorm_silu_tma_kernel<T, CS>(&maps, x, gamma, beta, y, C, S, G, eps, act,    \
                                               cached, cap, box, div_m, div_s);                \
  }
#define LRT_GN_LAYOUT(T, SUF, LAYOUT, LNAME) \
  LRT_GN_KERNEL(T, SUF, LAYOUT, LNAME, 1)    \
  LRT_GN_KERNEL(T, SUF, LAYOUT, LNAME, 2)    \
  LRT_GN_KERNEL(T, SUF, LAYOUT, LNAME, 4)    \
  LRT_GN_KERNEL(T, SUF, LAYOUT, LNAME, 8)
#define LRT_GN_DTYPE(T, SUF)                                          \
  LRT_GN_LAYOUT(T, SUF, latentrt::kLayoutChannelsFirst, nchw)         \
  LRT_GN_LAYOUT(T, SUF, latentrt::kLayoutChannelsLast, nhwc)          \
  LRT_GN_TMA_KERNEL(T, SUF, 1)                                        \
  LRT_GN_TMA_KERNEL(T, SUF, 2)                                        \
  LRT_GN_TMA_KERNEL(T, SUF, 4)                                        \
  LRT_GN_TMA_KERNEL(T, SUF, 8)

LRT_GN_DTYPE(float, f32)
LRT_GN_DTYPE(__half, f16)
LRT_GN_DTYPE(__nv_bfloat16, bf16)

#ifndef __CUDACC_RTC__

#include <cstring>
#include <numeric>
#include <type_traits>

namespace {

struct GnPlan {
  int cluster;
  int threads;
  int vec;  // elements per vector access: 16 bytes' worth, 2 or 1
  int cached;
  size_t smem;
  int tile;      // channels-last groups per cluster (1: one group, the general body)
  unsigned cap;  // vectors of a block's slice in the cache (fewer than the slice: partial)
  int box;       // channels-last kCacheBulk / kCacheBulkStore: positions a TMA box (else 0)
};

constexpr long long kStaticSmemReserve = 8192;  // static shared memory of both bodies: 7.5 KB
constexpr long long kBlockSmemReserve = 1024;   // reserved by the GPU per resident block

// Clusters of `cs` blocks resident at once at `per_sm` blocks per SM: all slots for single
// blocks and pairs, ~90% of them for larger clusters, whose placement is bound to GPCs (H100:
// 30 of 8 at two per SM).
long long resident_clusters(int cs, int per_sm, int sms) {
  return cs <= 2 ? static_cast<long long>(sms) * per_sm / cs
                 : static_cast<long long>(sms) * per_sm * 9 / 10 / cs;
}

// The fewest blocks per SM (1-4) at which all `units` clusters of `cs` are resident at once, or
// 2 where none is (the clusters then run in waves).
int one_wave_blocks(long long units, int cs, int sms) {
  for (int b = 1; b <= 4; ++b)
    if (units <= resident_clusters(cs, b, sms)) return b;
  return 2;
}

// The units of one launch: `tile` groups (1: one group) read in vectors of `v` elements.
struct GnUnits {
  long long n, groups, cg, spatial, tile, v, elem;

  long long count() const { return n * groups / tile; }
  long long row_vectors() const { return tile * cg / v; }
  bool split() const { return tile > 1 && cg % v != 0; }  // vectors straddle groups
  // Vectors of a block's slice in a cluster of k (a tile's blocks split its rows).
  long long slice(int k) const {
    return tile > 1 ? (spatial + k - 1) / k * row_vectors() : (cg * spatial / v + k - 1) / k;
  }
  long long cache_bytes(int k) const { return slice(k) * v * elem; }
  // Dynamic shared memory ahead of the cache: per-channel scale and shift, and a straddling
  // tile's second statistics.
  long long affine() const {
    return (2 * tile * cg * 4 + 15) / 16 * 16 + (split() ? latentrt::kSplitStatBytes : 0);
  }
  // Split units over clusters until the grid reaches one block per SM (slices of up to 2048
  // vectors stay whole: the DSMEM merge costs more than it saves), slices of 128 KB and more
  // until two blocks per SM (tiles: while all their clusters stay resident at two per SM; H100,
  // 8x320x64x64 fp16 and bf16 in clusters of 2 rather than 4, 1.08-1.15x, twenty-second
  // session); then until a slice fits in shared memory. Tuned on H100 (BENCHMARKS.md, plugin
  // kernels).
  int cluster(int sms, int smem_optin) const {
    int cs = 1;
    while (cs < 8 && slice(cs) > 2048 && count() * cs * 2 <= sms) cs *= 2;
    while (cs < 8 && slice(cs) >= 8192 && count() * cs * 2 <= 2LL * sms &&
           (tile == 1 || count() <= resident_clusters(cs * 2, 2, sms)))
      cs *= 2;
    while (cs < 8 && affine() + cache_bytes(cs) > smem_optin - kStaticSmemReserve) cs *= 2;
    return cs;
  }
};

// Positions a TMA box of a channels-last group's slice holds: the largest power of two up to
// 256 that divides a block's positions, or 0 where that is under 8 (boxes then cannot keep the
// cache's 128-byte alignment) or the maps cannot hold the tensor (rows of 16-byte multiples, a
// group at most 256 16-bit units wide, 2^31 positions).
int groupnorm_tma_box(long long n, long long c, long long spatial, long long groups, long long elem,
                      int cluster) {
  const long long row = c * elem, run = c / groups * elem;
  if (spatial % cluster != 0 || row % 16 != 0 || run % 16 != 0 || run > 512 ||
      n * spatial >= (1LL << 31))
    return 0;
  const long long box = std::gcd(spatial / cluster, 256LL);
  return box >= 8 ? static_cast<int>(box) : 0;
}

// Whether a forced tile and cluster size (0: the planner's) apply to a shape: clusters of 1, 2,
// 4 or 8; tiles a power of two up to kMaxTileGroups that divides the groups, channels-last where
// above 1 (a TensorRT tactic; the harness's groupnorm_plan(tile=, cluster=)).
bool groupnorm_forced_valid(int groups, int layout, int tile, int cluster) {
  if (cluster != 0 && cluster != 1 && cluster != 2 && cluster != 4 && cluster != 8) return false;
  if (tile == 0) return true;
  if (tile < 0 || tile > latentrt::kMaxTileGroups || (tile & (tile - 1)) != 0 || groups % tile)
    return false;
  return tile == 1 || layout == latentrt::kLayoutChannelsLast;
}

// The launch plan; plugins/harness.py mirrors this function (keep the two in step). A nonzero
// `force_tile` or `force_cluster` (groupnorm_forced_valid) replaces the planner's choice.
GnPlan plan_groupnorm(int n, int c, long long spatial, int groups, int layout, size_t elem,
                      bool aligned, int sms, int smem_optin, int force_tile = 0,
                      int force_cluster = 0) {
  const long long cg = c / groups;
  // The widest vector that divides a group's contiguous runs (the spatial size channels-first,
  // the group's channels channels-last): 16 bytes, else 2 elements (channels-last groups of
  // 10, 20 or 40 fp16 channels), else scalars.
  const int vmax = static_cast<int>(16 / elem);
  const long long run = layout == latentrt::kLayoutChannelsFirst ? spatial : cg;
  const long long e = static_cast<long long>(elem);
  GnPlan p{};
  const int run_v = !aligned ? 1 : run % vmax == 0 ? vmax : run % 2 == 0 ? 2 : 1;
  p.vec = run_v;
  p.tile = 1;
  // Channels-last groups whose run a row is shorter than a 32-byte sector are normalized in
  // tiles of consecutive groups with rows of 64 bytes or more (groupnorm_silu_tile_body; at 32
  // and 40 bytes tiles of narrower vectors measured no faster on H100). Where one group's slice
  // is not cached whole even in a cluster of 8 (it is read twice), runs shorter than 64 bytes are
  // tiled too (H100, 1x256x256x256 fp32: tiles of 2 groups 1.45x), and tiles double only while
  // sms / 16 of them remain: fewer clusters of 8 leave most SMs idle (1x128x512x512 fp16 and
  // bf16: tiles of 4 groups 1.62-1.67x faster than of 8, which make 4 clusters; BENCHMARKS.md,
  // twenty-second session).
  const GnUnits one{n, groups, cg, spatial, 1, p.vec, e};
  const bool uncached = one.affine() + one.cache_bytes(8) > smem_optin - kStaticSmemReserve;
  const long long floor_tiles = uncached ? sms / 16 : 1, short_run = uncached ? 64 : 32;
  auto widens = [&](long long t) {  // a tile of t groups may double
    return 2 * t <= latentrt::kMaxTileGroups && groups % (2 * t) == 0 &&
           n * groups / (2 * t) >= floor_tiles;
  };
  if (layout == latentrt::kLayoutChannelsLast && cg * e < short_run)
    while (p.tile * cg * e < 64 && widens(p.tile)) p.tile *= 2;
  // Channels-last groups that 16 bytes do not divide (10, 20 or 30 fp16 channels, 10 fp32
  // ones), at most two groups a 16-byte vector: tiles whose rows are whole 16-byte vectors of 64
  // bytes or more, the vectors straddling groups (the tile body's SPLIT). For fp16 and fp32 not
  // where that takes clusters of more than two blocks and larger than the plan above (H100:
  // 1.08-1.71x at 8 of 15 shape-dtype cases where the clusters kept their size or grew from 1
  // to 2, 0.96-1.02x at the rest; 0.74-0.91x where they grew from 2 to 4 or 8, or 4 to 8;
  // BENCHMARKS.md, fifteenth session). bf16 alike: it straddled wherever it could while its
  // one-group body ran 1.4-1.5x slower than fp16's, which ended with the twentieth session's
  // divide (2x640x32x32: one group per cluster 1.24x faster than straddling; twenty-first).
  // fp32 runs of 32 to 63 bytes (10 channels) take rows of 128 bytes or more, in clusters of 8
  // of 512 rows a block or more, wherever the clusters grow (H100, 320 channels at 64x64 and
  // 128x128, batch 1-8: tiles of 4 groups in clusters of 8 1.03-1.50x faster than tiles of 2 or
  // one group; smaller slices were not timed; twenty-third session).
  const bool short32 = e == 4 && cg * e >= 32 && cg * e < 64 && spatial >= 8 * 512;
  const long long row_min = short32 ? 128 : 64;
  if (layout == latentrt::kLayoutChannelsLast && aligned && cg % vmax != 0 &&
      (vmax <= cg || 2 * cg == vmax)) {
    for (long long t = 1; widens(t);) {  // rows under row_min where no wider tile may follow
      t *= 2;
      if (t * cg % vmax != 0 || (t * cg * e < row_min && widens(t))) continue;
      const GnUnits before{n, groups, cg, spatial, p.tile, p.vec, e};
      const GnUnits after{n, groups, cg, spatial, t, vmax, e};
      if (short32 ||
          after.cluster(sms, smem_optin) <= std::max(2, before.cluster(sms, smem_optin))) {
        p.tile = static_cast<int>(t);
        p.vec = vmax;
      }
      break;
    }
  }
  if (force_tile > 0) {  // 16-byte vectors where whole ones fill a row, straddling at most two
    const bool two_at_most = cg % vmax == 0 || vmax <= cg || 2 * cg == vmax;
    p.tile = force_tile;
    p.vec = force_tile > 1 && aligned && force_tile * cg % vmax == 0 && two_at_most ? vmax : run_v;
  }
  const GnUnits u{n, groups, cg, spatial, p.tile, p.vec, e};
  const long long v = p.vec;
  const long long row_vectors = u.row_vectors();
  const long long units = u.count();
  const long long affine = u.affine();
  const long long budget = smem_optin - kStaticSmemReserve;
  int cs = short32 && u.split() ? 8 : u.cluster(sms, smem_optin);
  // Channels-last one-group slices of 16-byte vectors that clusters of 4 would cache: clusters
  // of 8 where a block's slice is still 16 KB or more and moves by TMA boxes (H100: 1.05-1.27x
  // at the 22 plans of SD, SDXL and VAE layers timed, batch 1-8; twenty-third session).
  if (layout == latentrt::kLayoutChannelsLast && p.tile == 1 && p.vec == vmax && cs == 4 &&
      u.cache_bytes(8) >= 16384 && affine + u.cache_bytes(8) <= budget &&
      groupnorm_tma_box(n, c, spatial, groups, e, 8) > 0)
    cs = 8;
  if (force_cluster > 0) cs = force_cluster;
  p.cluster = cs;
  // Blocks per SM that run all clusters in one wave, and the head of a slice each can cache.
  const int b = one_wave_blocks(units, cs, sms);
  const long long share =
      (smem_optin + kBlockSmemReserve) / b - kBlockSmemReserve - kStaticSmemReserve;
  long long cap =
      std::min(u.slice(cs), std::max(0LL, share - affine) / (v * static_cast<long long>(elem)));
  if (p.tile > 1) cap = cap / row_vectors * row_vectors;  // tiles cache whole rows
  // Whole slices where they fit, unless their clusters would run in uneven waves (under 90%
  // full; 256-thread blocks let three of a cluster of 8 share an SM: 30 of 8 are resident at two
  // per SM on an H100).
  const long long whole_bytes = affine + u.cache_bytes(cs);
  const bool fits = whole_bytes <= budget;
  const int threads_whole = cs == 8 && 3 * whole_bytes <= smem_optin ? 256 : 512;
  const long long fit =
      (smem_optin + kBlockSmemReserve) / (whole_bytes + kBlockSmemReserve + kStaticSmemReserve);
  const long long resident = resident_clusters(
      cs, static_cast<int>(std::max(1LL, std::min(fit, threads_whole == 512 ? 2LL : 4LL))), sms);
  const long long waves = (units + resident - 1) / resident;
  const bool uneven = waves > 1 && 10 * units < 9 * waves * resident;
  // Channels-first slices are cached in part, all clusters in one wave, where whole slices do not
  // fit or run in uneven waves and half a slice or more fits (H100: 1.02-1.12x; two reads of all
  // of it measured faster below half, channels-last re-reads 11-21% slower).
  const bool channels_last = layout == latentrt::kLayoutChannelsLast;
  const bool partial = !channels_last && (!fits || uneven) && 2 * cap >= u.slice(cs);
  const bool whole = fits && !partial;
  // Clusters of 8 over 16-bit slices: bulk copies in and bulk stores out (6-10% faster on H100
  // at 1x512x128x128 and 1x256x256x256; slower for smaller clusters, even for fp32).
  const bool bulk = !channels_last && p.vec == vmax;
  if (whole)
    p.cached = bulk && cs == 8 && elem == 2 ? latentrt::kCacheBulkStore : latentrt::kCacheRegisters;
  else
    p.cached = partial && cap > 0 ? latentrt::kCacheRegisters : 0;
  // Channels-last clusters of 8 caching one group's slice of 16-byte vectors whole: TMA boxes
  // in, and for 16-bit types out (H100, 1x512x128x128: 1.33x fp16 and bf16, 1.07x fp32; slower
  // or even for smaller clusters; BENCHMARKS.md, twenty-first session).
  p.box = 0;
  if (channels_last && whole && p.tile == 1 && p.vec == vmax && cs == 8) {
    p.box = groupnorm_tma_box(n, c, spatial, groups, e, cs);
    if (p.box > 0) p.cached = elem == 2 ? latentrt::kCacheBulkStore : latentrt::kCacheBulk;
  }
  p.cap = !p.cached ? 0u : static_cast<unsigned>(whole ? u.slice(cs) : cap);
  p.smem = static_cast<size_t>(affine + p.cap * v * static_cast<long long>(elem)) +
           (p.box > 0 ? 128 : 0);  // the boxes' 128-byte alignment
  if (p.tile > 1) {  // whole rows per pass
    p.threads = static_cast<int>((partial && b >= 3 ? 256 : 512) / row_vectors * row_vectors);
    return p;
  }
  // Channels-first clusters in one wave: as many blocks per SM as it takes.
  const bool small = b >= 3 && (partial || !channels_last);
  p.threads = whole ? threads_whole : small ? 256 : 512;
  return p;
}

template <typename T>
using GnKernel = void (*)(const T*, const T*, const T*, T*, int, int, int, float, int, int,
                          unsigned, int, int, unsigned, unsigned);

// Multiply-high magic m and shift s of the division by d >= 1 (the kernel's FastDivisor; the
// harness's fast_divisor): s = ceil(log2 d), m = floor(2^32 (2^s - d) / d) + 1 < 2^32.
struct FastDivisorMagic {
  unsigned m, s;
};
inline FastDivisorMagic fast_divisor(unsigned d) {
  unsigned s = 0;
  while (s < 32 && (1ull << s) < d) ++s;
  return {static_cast<unsigned>((((1ull << s) - d) << 32) / d + 1), s};
}
// The one-group body's divisor: the spatial size (channels-first) or vectors a position
// (channels-last); tiles index by rows and divide by nothing (1).
inline FastDivisorMagic groupnorm_divisor(const GnPlan& p, int c, long long spatial, int groups,
                                          int layout) {
  if (layout == latentrt::kLayoutChannelsFirst) return fast_divisor(static_cast<unsigned>(spatial));
  return fast_divisor(p.tile > 1 ? 1u : static_cast<unsigned>(c / groups / p.vec));
}

#define LRT_GN_TABLE(SUF)                                                                        \
  {{latentrt_gn_silu_nchw_##SUF##_c1, latentrt_gn_silu_nchw_##SUF##_c2,                          \
    latentrt_gn_silu_nchw_##SUF##_c4, latentrt_gn_silu_nchw_##SUF##_c8},                         \
   {latentrt_gn_silu_nhwc_##SUF##_c1, latentrt_gn_silu_nhwc_##SUF##_c2,                          \
    latentrt_gn_silu_nhwc_##SUF##_c4, latentrt_gn_silu_nhwc_##SUF##_c8}}

template <typename T>
GnKernel<T> pick_gn_kernel(int layout, int cluster);
template <>
GnKernel<float> pick_gn_kernel<float>(int layout, int cluster) {
  static const GnKernel<float> table[2][4] = LRT_GN_TABLE(f32);
  return table[layout][cluster == 1 ? 0 : cluster == 2 ? 1 : cluster == 4 ? 2 : 3];
}
template <>
GnKernel<__half> pick_gn_kernel<__half>(int layout, int cluster) {
  static const GnKernel<__half> table[2][4] = LRT_GN_TABLE(f16);
  return table[layout][cluster == 1 ? 0 : cluster == 2 ? 1 : cluster == 4 ? 2 : 3];
}
template <>
GnKernel<__nv_bfloat16> pick_gn_kernel<__nv_bfloat16>(int layout, int cluster) {
  static const GnKernel<__nv_bfloat16> table[2][4] = LRT_GN_TABLE(bf16);
  return table[layout][cluster == 1 ? 0 : cluster == 2 ? 1 : cluster == 4 ? 2 : 3];
}

template <typename T>
using GnTmaKernel = void (*)(latentrt::GnMaps, const T*, const T*, const T*, T*, int, int, int,
                             float, int, int, unsigned, unsigned, unsigned, unsigned);

#define LRT_GN_TMA_TABLE(SUF)                                                                \
  {latentrt_gn_silu_nhwc_tma_##SUF##_c1, latentrt_gn_silu_nhwc_tma_##SUF##_c2,               \
   latentrt_gn_silu_nhwc_tma_##SUF##_c4, latentrt_gn_silu_nhwc_tma_##SUF##_c8}

template <typename T>
GnTmaKernel<T> pick_gn_tma_kernel(int cluster);
template <>
GnTmaKernel<float> pick_gn_tma_kernel<float>(int cluster) {
  static const GnTmaKernel<float> table[4] = LRT_GN_TMA_TABLE(f32);
  return table[cluster == 1 ? 0 : cluster == 2 ? 1 : cluster == 4 ? 2 : 3];
}
template <>
GnTmaKernel<__half> pick_gn_tma_kernel<__half>(int cluster) {
  static const GnTmaKernel<__half> table[4] = LRT_GN_TMA_TABLE(f16);
  return table[cluster == 1 ? 0 : cluster == 2 ? 1 : cluster == 4 ? 2 : 3];
}
template <>
GnTmaKernel<__nv_bfloat16> pick_gn_tma_kernel<__nv_bfloat16>(int cluster) {
  static const GnTmaKernel<__nv_bfloat16> table[4] = LRT_GN_TMA_TABLE(bf16);
  return table[cluster == 1 ? 0 : cluster == 2 ? 1 : cluster == 4 ? 2 : 3];
}

// The tensor map of a channels-last tensor as 16-bit units: `units` a position by `rows`
// positions, in boxes of `run` units by `box` positions, unswizzled (GnMaps in the kernels).
bool encode_rows(latentrt::TmaDesc* desc, const void* ptr, long long units, long long rows,
                 int run, int box) {
  const latentrt::EncodeTiled fn = latentrt::encode_tiled_fn();
  if (fn == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(units), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(units) * 2};
  const cuuint32_t boxes[2] = {static_cast<cuuint32_t>(run), static_cast<cuuint32_t>(box)};
  const cuuint32_t ones[2] = {1, 1};
  CUtensorMap map;
  if (fn(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, const_cast<void*>(ptr), dims, strides, boxes,
         ones, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
         CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
    return false;
  std::memcpy(desc, &map, sizeof(map));
  return true;
}

template <typename T>
int launch_groupnorm_silu(const T* x, const T* gamma, const T* beta, T* y, int n, int c,
                          long long spatial, int groups, float eps, int activation, int layout,
                          int tile, int cluster, cudaStream_t stream) {
  if (n <= 0 || c <= 0 || spatial <= 0 || groups <= 0 || c % groups != 0)
    return cudaErrorInvalidValue;
  if (layout != latentrt::kLayoutChannelsFirst && layout != latentrt::kLayoutChannelsLast)
    return cudaErrorInvalidValue;
  if (!groupnorm_forced_valid(groups, layout, tile, cluster)) return cudaErrorInvalidValue;
  if (activation != 0 && activation != 1) return cudaErrorInvalidValue;
  if (spatial > 0x7fffffffLL || static_cast<long long>(c / groups) * spatial > 0xffffffffLL ||
      static_cast<long long>(n) * groups * 8 > 0x7fffffffLL)
    return cudaErrorInvalidValue;
  int dev = 0, sms = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  const auto addr = [](const void* p) { return reinterpret_cast<unsigned long long>(p); };
  const bool aligned = (addr(x) % 16 == 0) && (addr(y) % 16 == 0);
  GnPlan p =
      plan_groupnorm(n, c, spatial, groups, layout, sizeof(T), aligned, sms, optin, tile, cluster);
  const unsigned grid = static_cast<unsigned>(n) * groups / p.tile * p.cluster;
  const FastDivisorMagic div = groupnorm_divisor(p, c, spatial, groups, layout);
  if (p.box > 0) {  // TMA boxes; where the driver cannot encode their maps, the threads' loads
    latentrt::GnMaps maps;
    const long long units = c * static_cast<long long>(sizeof(T)) / 2;
    const int run = static_cast<int>(units / groups);
    if (encode_rows(&maps.x, x, units, n * spatial, run, p.box) &&
        encode_rows(&maps.y, y, units, n * spatial, run, p.box)) {
      GnTmaKernel<T> k = pick_gn_tma_kernel<T>(p.cluster);
      err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(p.smem));
      if (err != cudaSuccess) return err;
      k<<<grid, p.threads, p.smem, stream>>>(maps, x, gamma, beta, y, c, static_cast<int>(spatial),
                                             groups, eps, activation, p.cached, p.cap,
                                             static_cast<unsigned>(p.box), div.m, div.s);
      return cudaGetLastError();
    }
    p.cached = latentrt::kCacheRegisters;
    p.smem -= 128;
    p.box = 0;
  }
  GnKernel<T> k = pick_gn_kernel<T>(layout, p.cluster);
  err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(p.smem));
  if (err != cudaSuccess) return err;
  k<<<grid, p.threads, p.smem, stream>>>(x, gamma, beta, y, c, static_cast<int>(spatial), groups,
                                         eps, activation, p.cached, p.cap, p.vec, p.tile, div.m,
                                         div.s);
  return cudaGetLastError();
}

}  // namespace

// C-linkage launchers for a TensorRT IPluginV3::enqueue (or any host code): device pointers,
// x/y shaped (n, c, spatial...) for layout 0 or (n, spatial..., c) for layout 1, where
// `spatial` is the product of the spatial sizes; `tile` and `cluster` force the plan's (0: the
// planner's; a TensorRT tactic). Returns 0 or a cudaError_t code.
extern "C" int latentrt_groupnorm_silu_f32(const float* x, const float* gamma, const float* beta,
                                           float* y, int n, int c, long long spatial,
                                           int num_groups, float epsilon, int activation,
                                           int layout, int tile, int cluster,
                                           cudaStream_t stream) {
  return launch_groupnorm_silu(x, gamma, beta, y, n, c, spatial, num_groups, epsilon, activation,
                               layout, tile, cluster, stream);
}
extern "C" int latentrt_groupnorm_silu_f16(const __half* x, const __half* gamma,
                                           const __half* beta, __half* y, int n, int c,
                                           long long spatial, int num_groups, float epsilon,
                                           int activation, int layout, int tile, int cluster,
                                           cudaStream_t stream) {
  return launch_groupnorm_silu(x, gamma, beta, y, n, c, spatial, num_groups, epsilon, activation,
                               layout, tile, cluster, stream);
}
extern "C" int latentrt_groupnorm_silu_bf16(const __nv_bfloat16* x, const __nv_bfloat16* gamma,
                                            const __nv_bfloat16* beta, __nv_bfloat16* y, int n,
                                            int c, long long spatial, int num_groups,
                                            float epsilon, int activation, int layout, int tile,
                                            int cluster, cudaStream_t stream) {
  return launch_groupnorm_silu(x, gamma, beta, y, n, c, spatial, num_groups, epsilon, activation,
                               layout, tile, cluster, stream);
}

// The launch plan of a shape on a GPU of `sms` SMs and `smem_optin` bytes of opt-in shared
// memory per block, host-only (the CPU tests hold it to plugins/harness.py's groupnorm_plan):
// elem_bytes 2 or 4 (fp16 and bf16 plan alike); out10 = cluster, threads, vec, cached, smem,
// tile, cap, the magic m (as its bits) and shift s of the kernel's index division, and the
// positions of a TMA box (0: none); `tile` and `cluster` force the plan's as the launchers'
// do. Returns 0, or cudaErrorInvalidValue.
extern "C" int latentrt_groupnorm_silu_plan(int n, int c, long long spatial, int num_groups,
                                            int layout, int elem_bytes, int aligned, int sms,
                                            int smem_optin, int tile, int cluster, int* out10) {
  if (n <= 0 || c <= 0 || spatial <= 0 || num_groups <= 0 || c % num_groups != 0 ||
      (layout != latentrt::kLayoutChannelsFirst && layout != latentrt::kLayoutChannelsLast) ||
      (elem_bytes != 2 && elem_bytes != 4) ||
      !groupnorm_forced_valid(num_groups, layout, tile, cluster))
    return cudaErrorInvalidValue;
  const GnPlan p =
      plan_groupnorm(n, c, spatial, num_groups, layout, static_cast<size_t>(elem_bytes),
                     aligned != 0, sms, smem_optin, tile, cluster);
  const FastDivisorMagic div = groupnorm_divisor(p, c, spatial, num_groups, layout);
  const int v[10] = {p.cluster, p.threads,  p.vec,
                     p.cached,  static_cast<int>(p.smem), p.tile,
                     static_cast<int>(p.cap), static_cast<int>(div.m), static_cast<int>(div.s),
                     p.box};
  for (int i = 0; i < 10; ++i) out10[i] = v[i];
  return 0;
}

#endif  // __CUDACC_RTC__
