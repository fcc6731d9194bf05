// latentrt Conv3d with fused (causal) temporal padding.
//
// y[n, co, t, h, w] = bias[co] + sum_{ci, kt, kh, kw} w[co, ci, kt, kh, kw] *
//                     x[n, ci, t*st - pt + kt*dt, h*sh - ph + kh*dh, w*sw - pw + kw*dw]
// Out-of-range input positions read as zero, except in time with replicate padding
// (causal_time == 2), where every frame before the first reads as the first frame. Padding is
// never materialized: the kernels test each tap's coordinates.
//
// Weights are consumed pre-packed as [Cout, kT, kH, kW, Cin] ("ODHWI", reduction index
// (tap, ci) with ci fastest); latentrt_conv3d_pack_weights_* converts from the ONNX/PyTorch
// [Cout, Cin, kT, kH, kW]. A plugin packs constant weights once.
//
// Kernels:
//  * direct (fp32/fp16/bf16, both layouts): one thread per output position and 8 output
//    channels, weights staged in shared memory as fp32, fp32 accumulation; channels-last reads
//    16-byte vectors along Cin.
//  * implicit GEMM on tensor cores (fp16/bf16, Cin % 32 == 0): M = Cout, N = output positions,
//    K = taps * Cin; (64|128) x 128 x 32 tiles, WMMA 16x16x16 with fp32 accumulators, a
//    3-stage cp.async pipeline (zero-fill for padding) for weights and channels-last
//    activations, register-staged gathers for channels-first activations; each 32-wide K step
//    is one tap and 32 input channels, so the padding test happens once per (position, tap).
#include <mma.h>

#include "common.cuh"

namespace latentrt {

struct ConvShape {
  int Cin, D, H, W;
  int Cout, kT, kH, kW;
  int Do, Ho, Wo;
  int st, sh, sw;
  int dt, dh, dw;
  int pt, ph, pw;  // front pads
  int replicate;   // 1: temporal positions before the first frame read the first frame
};

// Input time index for output time `t0 = to*st - pt` and tap kt; -1 when it reads zero.
__device__ __forceinline__ int time_index(const ConvShape& s, int t0, int kt) {
  int ti = t0 + kt * s.dt;
  if (ti < 0) return s.replicate ? 0 : -1;
  return ti < s.D ? ti : -1;
}

template <typename T, int LAYOUT>
__device__ __forceinline__ void conv3d_direct(const T* __restrict__ x, const T* __restrict__ wp,
                                              const T* __restrict__ bias, T* __restrict__ y,
                                              const ConvShape s, int ci_chunk, int vec) {
  extern __shared__ __align__(16) float w_s[];  // [ci_chunk][taps][8]
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const int taps = s.kT * s.kH * s.kW;
  const long long P = static_cast<long long>(s.Do) * s.Ho * s.Wo;
  const long long p = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int co0 = blockIdx.y * 8;
  const long long n = blockIdx.z;
  const bool active = p < P;
  const int pp = active ? static_cast<int>(p) : 0;
  const int wo = pp % s.Wo;
  const int ho = (pp / s.Wo) % s.Ho;
  const int to = pp / (s.Wo * s.Ho);
  const int t0 = to * s.st - s.pt;
  const int h0 = ho * s.sh - s.ph;
  const int w0 = wo * s.sw - s.pw;

  float acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = 0.0f;

  for (int c0 = 0; c0 < s.Cin; c0 += ci_chunk) {
    const int cn = min(ci_chunk, s.Cin - c0);
    __syncthreads();
    for (int idx = threadIdx.x; idx < cn * taps * 8; idx += blockDim.x) {
      const int j = idx & 7;
      const int r = idx >> 3;
      const int tap = r % taps;
      const int cl = r / taps;
      const int co = co0 + j;
      w_s[idx] = co < s.Cout
                     ? to_f32(wp[(static_cast<long long>(co) * taps + tap) * s.Cin + c0 + cl])
                     : 0.0f;
    }
    __syncthreads();
    if (!active) continue;
    for (int kt = 0; kt < s.kT; ++kt) {
      const int ti = time_index(s, t0, kt);
      if (ti < 0) continue;
      for (int kh = 0; kh < s.kH; ++kh) {
        const int hi = h0 + kh * s.dh;
        if (hi < 0 || hi >= s.H) continue;
        for (int kw = 0; kw < s.kW; ++kw) {
          const int wi = w0 + kw * s.dw;
          if (wi < 0 || wi >= s.W) continue;
          const int tap = (kt * s.kH + kh) * s.kW + kw;
          auto fma8 = [&](float xv, int cl) {
            const float4* wv = reinterpret_cast<const float4*>(&w_s[(cl * taps + tap) * 8]);
            const float4 a = wv[0];
            const float4 b = wv[1];
            acc[0] += xv * a.x;
            acc[1] += xv * a.y;
            acc[2] += xv * a.z;
            acc[3] += xv * a.w;
            acc[4] += xv * b.x;
            acc[5] += xv * b.y;
            acc[6] += xv * b.z;
            acc[7] += xv * b.w;
          };
          if (LAYOUT == kLayoutChannelsFirst) {
            const long long plane = static_cast<long long>(s.D) * s.H * s.W;
            const T* xp = x + (n * s.Cin + c0) * plane + (static_cast<long long>(ti) * s.H + hi) * s.W + wi;
            for (int cl = 0; cl < cn; ++cl) fma8(to_f32(xp[cl * plane]), cl);
          } else {
            const T* xp =
                x + (((n * s.D + ti) * s.H + hi) * static_cast<long long>(s.W) + wi) * s.Cin + c0;
            if (vec) {
              for (int cl = 0; cl < cn; cl += V) {
                const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(xp + cl);
#pragma unroll
                for (int q = 0; q < V; ++q) fma8(to_f32(pk.v[q]), cl + q);
              }
            } else {
              for (int cl = 0; cl < cn; ++cl) fma8(to_f32(xp[cl]), cl);
            }
          }
        }
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int co = co0 + j;
    if (co >= s.Cout) break;
    const float v = acc[j] + (bias != nullptr ? to_f32(bias[co]) : 0.0f);
    if (LAYOUT == kLayoutChannelsFirst)
      y[(n * s.Cout + co) * P + p] = from_f32<T>(v);
    else
      y[(n * P + p) * s.Cout + co] = from_f32<T>(v);
  }
}

template <bool C, typename A, typename B>
struct Select {
  using type = A;
};
template <typename A, typename B>
struct Select<false, A, B> {
  using type = B;
};

__device__ __forceinline__ unsigned shared_address(const void* p) {
  unsigned addr;
  asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }"
               : "=r"(addr)
               : "l"(p));
  return addr;
}

// 16-byte asynchronous global->shared copy; src_bytes 0 writes zeros (padding, edges).
__device__ __forceinline__ void cp_async16_shared(unsigned dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  cp_async16_shared(shared_address(dst), src, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

template <int LAYOUT, int BM>
struct IgemmTiles {
  static constexpr int BN = 128;
  static constexpr int BK = 32;
  static constexpr int STAGES = 3;
  static constexpr bool CL = LAYOUT == kLayoutChannelsLast;
  static constexpr int LDA = BK + 8;
  static constexpr int LDB = CL ? BK + 8 : BN + 8;  // CL: Bs[pos][k]; CF: Bs[k][pos]
  static constexpr int A_TILE = BM * LDA;
  static constexpr int B_TILE = CL ? BN * LDB : BK * LDB;
  static constexpr int SMEM_ELEMS = STAGES * (A_TILE + B_TILE);
};

template <typename T, int LAYOUT, int BM>
__device__ __forceinline__ void conv3d_igemm(const T* __restrict__ x, const T* __restrict__ wp,
                                             const T* __restrict__ bias, T* __restrict__ y,
                                             const ConvShape s) {
  namespace wmma = nvcuda::wmma;
  using Tiles = IgemmTiles<LAYOUT, BM>;
  constexpr int BN = Tiles::BN;
  constexpr int BK = Tiles::BK;
  constexpr int STAGES = Tiles::STAGES;
  constexpr int NT = 256;
  constexpr int WM = BM / 2;  // 2 x 4 warps; warp tile WM x 32
  constexpr int FM = WM / 16;
  constexpr int FN = 2;
  constexpr bool CL = Tiles::CL;
  constexpr int LDA = Tiles::LDA;
  constexpr int LDB = Tiles::LDB;
  constexpr int A_TILE = Tiles::A_TILE;
  constexpr int B_TILE = Tiles::B_TILE;
  constexpr int A_VECS = BM * BK / 8 / NT;  // 16-byte vectors per thread
  static_assert(Tiles::SMEM_ELEMS * sizeof(T) >= 8 * 256 * sizeof(float), "epilogue scratch");
  extern __shared__ __align__(128) unsigned char igemm_smem[];
  T* smem = reinterpret_cast<T*>(igemm_smem);

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int warp_m = warp >> 2;
  const int warp_n = warp & 3;
  const long long n = blockIdx.z;
  const int m0 = blockIdx.y * BM;
  const int P = s.Do * s.Ho * s.Wo;
  const int p0 = blockIdx.x * BN;
  const int taps = s.kT * s.kH * s.kW;
  const int cpt = s.Cin / BK;
  const int nk = taps * cpt;
  const int hw = s.kH * s.kW;

  // Output positions this thread gathers for the B tile.
  constexpr int BPOS = CL ? 2 : 1;
  int pt0[BPOS], ph0[BPOS], pw0[BPOS];
  bool pvalid[BPOS];
#pragma unroll
  for (int i = 0; i < BPOS; ++i) {
    const int pl = CL ? (tid >> 2) + 64 * i : (tid & (BN - 1));
    const int p = p0 + pl;
    pvalid[i] = p < P;
    const int q = pvalid[i] ? p : 0;
    const int wo = q % s.Wo;
    const int ho = (q / s.Wo) % s.Ho;
    const int to = q / (s.Wo * s.Ho);
    pt0[i] = to * s.st - s.pt;
    ph0[i] = ho * s.sh - s.ph;
    pw0[i] = wo * s.sw - s.pw;
  }

  T rb_cf[CL ? 1 : 16];

  // Weights (and channels-last activations) go through cp.async; channels-first activations
  // are gathered element-wise through registers (rb_cf) and stored after the stage's math.
  auto issue = [&](int ks, int stage) {
    const int tap = ks / cpt;
    const int ci0 = (ks - tap * cpt) * BK;
    const int kt = tap / hw;
    const int kh = (tap - kt * hw) / s.kW;
    const int kw = tap - kt * hw - kh * s.kW;
    T* As = smem + stage * A_TILE;
#pragma unroll
    for (int i = 0; i < A_VECS; ++i) {
      const int q = tid + i * NT;
      const int co = m0 + (q >> 2);
      const bool ok = co < s.Cout;
      const T* src =
          ok ? wp + (static_cast<long long>(co) * taps + tap) * s.Cin + ci0 + (q & 3) * 8 : wp;
      cp_async16(As + (q >> 2) * LDA + (q & 3) * 8, src, ok ? 16 : 0);
    }
    if constexpr (CL) {
      T* Bs = smem + STAGES * A_TILE + stage * B_TILE;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int ti = time_index(s, pt0[i], kt);
        const int hi = ph0[i] + kh * s.dh;
        const int wi = pw0[i] + kw * s.dw;
        const bool ok = pvalid[i] && ti >= 0 && hi >= 0 && hi < s.H && wi >= 0 && wi < s.W;
        const T* src =
            ok ? x + (((n * s.D + ti) * s.H + hi) * static_cast<long long>(s.W) + wi) * s.Cin +
                     ci0 + (tid & 3) * 8
               : x;
        cp_async16(Bs + ((tid >> 2) + 64 * i) * LDB + (tid & 3) * 8, src, ok ? 16 : 0);
      }
    } else {
      const int ti = time_index(s, pt0[0], kt);
      const int hi = ph0[0] + kh * s.dh;
      const int wi = pw0[0] + kw * s.dw;
      const bool ok = pvalid[0] && ti >= 0 && hi >= 0 && hi < s.H && wi >= 0 && wi < s.W;
      const long long plane = static_cast<long long>(s.D) * s.H * s.W;
      const T* src = x + (n * s.Cin + ci0 + (tid >> 7)) * plane +
                     (ok ? (static_cast<long long>(ti) * s.H + hi) * s.W + wi : 0);
#pragma unroll
      for (int i = 0; i < 16; ++i) rb_cf[i] = ok ? src[2 * i * plane] : zero_value<T>();
    }
  };
  auto store_cf = [&](int stage) {
    if constexpr (!CL) {
      T* Bs = smem + STAGES * A_TILE + stage * B_TILE;
#pragma unroll
      for (int i = 0; i < 16; ++i) Bs[((tid >> 7) + 2 * i) * LDB + (tid & (BN - 1))] = rb_cf[i];
    }
  };

  using BLayout = typename Select<CL, wmma::col_major, wmma::row_major>::type;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < nk) {
      issue(st, st);
      store_cf(st);
    }
    cp_async_commit();
  }
  for (int ks = 0; ks < nk; ++ks) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage ks landed for all threads; stage ks-1 is free again
    const int nxt = ks + STAGES - 1;
    if (nxt < nk) issue(nxt, nxt % STAGES);
    cp_async_commit();
    const int cur = ks % STAGES;
    const T* As = smem + cur * A_TILE;
    const T* Bs = smem + STAGES * A_TILE + cur * B_TILE;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[FM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb[FN];
#pragma unroll
      for (int i = 0; i < FM; ++i)
        wmma::load_matrix_sync(fa[i], As + (warp_m * WM + i * 16) * LDA + kk, LDA);
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        const int col = warp_n * 32 + j * 16;
        wmma::load_matrix_sync(fb[j], CL ? Bs + col * LDB + kk : Bs + kk * LDB + col, LDB);
      }
#pragma unroll
      for (int i = 0; i < FM; ++i)
#pragma unroll
        for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    if (nxt < nk) store_cf(nxt % STAGES);
  }
  cp_async_wait<0>();
  __syncthreads();

  // Epilogue through a per-warp 16x16 fp32 scratch tile: bias, convert, coalesced stores.
  float* scratch = reinterpret_cast<float*>(smem) + warp * 256;
#pragma unroll
  for (int i = 0; i < FM; ++i) {
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      wmma::store_matrix_sync(scratch, acc[i][j], 16,
                              CL ? wmma::mem_col_major : wmma::mem_row_major);
      __syncwarp();
      const int co_base = m0 + warp_m * WM + i * 16;
      const int p_base = p0 + warp_n * 32 + j * 16;
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const int e = lane + 32 * q;
        const int r = CL ? (e & 15) : (e >> 4);
        const int c = CL ? (e >> 4) : (e & 15);
        const int co = co_base + r;
        const int p = p_base + c;
        if (co < s.Cout && p < P) {
          const float v = scratch[e] + (bias != nullptr ? to_f32(bias[co]) : 0.0f);
          if (CL)
            y[(n * P + p) * s.Cout + co] = from_f32<T>(v);
          else
            y[(n * s.Cout + co) * P + p] = from_f32<T>(v);
        }
      }
      __syncwarp();
    }
  }
}

// Two adjacent output channels written as one 4-byte store.
template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float a, float b) {
  Pack<T, 2> v;
  v.v[0] = from_f32<T>(a);
  v.v[1] = from_f32<T>(b);
  *reinterpret_cast<Pack<T, 2>*>(dst) = v;
}

// ---- Small-Cin implicit GEMM on tensor cores (fp16/bf16, K = taps * Cin <= 256) ---------------
//
// For inputs with too few channels for 16-byte vectors along Cin (3 RGB channels, 4 latent ones)
// and too short a reduction for a pipeline: the RGB input conv of a video VAE. A tile is 128
// output positions, a BH x BW box of one output frame (as in the TMA kernel), times BN output
// channels. Its CTA stages in shared memory the "halo" the tile reads (every input frame, row and
// column the kernel window of the box touches, all Cin, padding as zeros or the replicated first
// frame) and, once per CTA, the [BN, Kp] weight tile (K zero-padded to Kp, a multiple of 16).
// Each of the 8 warps computes 16 positions x BN channels with mma.sync m16n8k16: the A fragment
// (positions x reduction index) is read straight from the halo through a table of each reduction
// index's halo offset (-1 past K), B through ldmatrix. Results go through shared memory so the
// stores are 16-byte vectors along the contiguous dimension (channels, or positions along W).
// CTAs loop over position tiles (grid.x), grid.y = output-channel tiles.
template <int BN>
struct SmallcTiles {
  static constexpr int BM = 128;
  static constexpr int THREADS = 256;
  static constexpr int MAX_K = 256;
  // Row strides (elements) that make ldmatrix and the staging writes conflict-free.
  static __host__ __device__ constexpr int w_stride(int kp) { return kp + 8; }
  static constexpr int STAGE_CL = BN + 8;   // stage[position][channel]
  static constexpr int STAGE_CF = BM + 8;   // stage[channel][position]
  static constexpr int STAGE_ELEMS = BM * STAGE_CL > BN * STAGE_CF ? BM * STAGE_CL : BN * STAGE_CF;
  // Bytes of dynamic shared memory: weights, stage, offsets, bias, halo (rounded to 16 bytes).
  static __host__ __device__ constexpr int smem_bytes(int kp, int halo_elems) {
    return 2 * BN * w_stride(kp) + 2 * STAGE_ELEMS + 4 * kp + 4 * BN + (2 * halo_elems + 15) / 16 * 16;
  }
};

// The halo of a BH x BW box: frames, rows, columns (all Cin channels per column).
struct SmallcHalo {
  int t, h, w;
  __host__ __device__ SmallcHalo(int kT, int kH, int kW, int dt, int dh, int dw, int sh, int sw,
                                 int bh, int bw)
      : t((kT - 1) * dt + 1), h((bh - 1) * sh + (kH - 1) * dh + 1),
        w((bw - 1) * sw + (kW - 1) * dw + 1) {}
};

// Pixel offset in the halo of tap `tap`'s window corner.
__device__ __forceinline__ int halo_tap(const ConvShape& s, const SmallcHalo& hl, int tap) {
  const int kt = tap / (s.kH * s.kW), r = tap - kt * s.kH * s.kW;
  const int kh = r / s.kW, kw = r - kh * s.kW;
  return (kt * s.dt * hl.h + kh * s.dh) * hl.w + kw * s.dw;
}

// A box of one output frame (tiles numbered W-fastest over the frames of the batch): batch n,
// frame to, corner (ho0, wo0), and the input coordinates of its halo's first pixel.
struct HaloTile {
  long long n;
  int to, ho0, wo0, t_in, h_in, w_in;
  __device__ HaloTile(const ConvShape& s, long long tile, int bh, int bw, int tiles_h,
                      int tiles_w) {
    const long long fh = tile / tiles_w, f = fh / tiles_h;
    wo0 = static_cast<int>(tile % tiles_w) * bw;
    ho0 = static_cast<int>(fh % tiles_h) * bh;
    to = static_cast<int>(f % s.Do);
    n = f / s.Do;
    t_in = to * s.st - s.pt;
    h_in = ho0 * s.sh - s.ph;
    w_in = wo0 * s.sw - s.pw;
  }
  // Input frame, row and column of halo pixel p; false where it reads zero padding.
  __device__ bool source(const ConvShape& s, const SmallcHalo& hl, int p, int* gt, int* gh,
                         int* gw) const {
    const int rest = p / hl.w;
    *gw = w_in + p - rest * hl.w;
    *gh = h_in + rest % hl.h;
    *gt = t_in + rest / hl.h;
    if (*gt < 0) *gt = s.replicate ? 0 : -1;
    return *gt >= 0 && *gt < s.D && *gh >= 0 && *gh < s.H && *gw >= 0 && *gw < s.W;
  }
};

__device__ __forceinline__ unsigned pack_u16(unsigned short lo, unsigned short hi) {
  return static_cast<unsigned>(lo) | (static_cast<unsigned>(hi) << 16);
}

// d (16 x 8 fp32) += a (16 x 16) * b (16 x 8); the dtype picked by the first argument's type.
#define LRT_MMA_M16N8K16(T, PTX_TYPE)                                                          \
  __device__ __forceinline__ void mma_m16n8k16(T, float* d, const unsigned* a, unsigned b0,    \
                                               unsigned b1) {                                  \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE                \
                 ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"                  \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                              \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));              \
  }
LRT_MMA_M16N8K16(__half, "f16")
LRT_MMA_M16N8K16(__nv_bfloat16, "bf16")
#undef LRT_MMA_M16N8K16

__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

template <typename T, int LAYOUT, int BN>
__device__ __forceinline__ void conv3d_smallc(const T* __restrict__ x, const T* __restrict__ wp,
                                              const T* __restrict__ bias, T* __restrict__ y,
                                              const ConvShape s, int N, int bw_log2, int tiles_h,
                                              int tiles_w, int kp) {
  using Tiles = SmallcTiles<BN>;
  constexpr int BM = Tiles::BM;
  constexpr bool CL = LAYOUT == kLayoutChannelsLast;
  const int bw = 1 << bw_log2, bh = BM >> bw_log2;
  const SmallcHalo hl(s.kT, s.kH, s.kW, s.dt, s.dh, s.dw, s.sh, s.sw, bh, bw);
  const int K = s.kT * s.kH * s.kW * s.Cin;
  const int ws = Tiles::w_stride(kp);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* w_s = reinterpret_cast<T*>(smem_raw);                       // [BN][ws]
  T* stage = w_s + BN * ws;                                       // [BM][BN + 8] or [BN][BM + 8]
  int* koff = reinterpret_cast<int*>(stage + Tiles::STAGE_ELEMS);  // [kp]
  float* bias_s = reinterpret_cast<float*>(koff + kp);            // [BN]
  unsigned short* halo = reinterpret_cast<unsigned short*>(bias_s + BN);  // [t][h][w][Cin]
  const int tid = threadIdx.x;
  const int co0 = blockIdx.y * BN;

  // Once per CTA: the weight tile, each reduction index's halo offset, the bias.
  for (int i = tid; i < BN * kp; i += Tiles::THREADS) {
    const int r = i / kp, k = i - r * kp;
    const int co = co0 + r;
    w_s[r * ws + k] = co < s.Cout && k < K ? wp[static_cast<long long>(co) * K + k] : zero_value<T>();
  }
  for (int k = tid; k < kp; k += Tiles::THREADS) {
    int off = -1;
    if (k < K) {
      const int tap = k / s.Cin;
      off = halo_tap(s, hl, tap) * s.Cin + k - tap * s.Cin;
    }
    koff[k] = off;
  }
  for (int c = tid; c < BN; c += Tiles::THREADS)
    bias_s[c] = bias != nullptr && co0 + c < s.Cout ? to_f32(bias[co0 + c]) : 0.0f;

  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const int r0 = warp * 16 + g, r1 = r0 + 8;  // this thread's two rows of the warp's m16 slab
  const int rb0 = (((r0 >> bw_log2) * s.sh) * hl.w + (r0 & (bw - 1)) * s.sw) * s.Cin;
  const int rb1 = (((r1 >> bw_log2) * s.sh) * hl.w + (r1 & (bw - 1)) * s.sw) * s.Cin;
  // ldmatrix row of this lane: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
  const T* b_row = w_s + (((lane >> 4) << 3) + (lane & 7)) * ws + ((lane >> 3) & 1) * 8;
  const int pixels = hl.t * hl.h * hl.w;
  const long long plane = static_cast<long long>(s.D) * s.H * s.W;
  const long long frames = static_cast<long long>(N) * s.Do;
  const long long tiles = frames * tiles_h * tiles_w;

  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const HaloTile ht(s, tile, bh, bw, tiles_h, tiles_w);
    const long long n = ht.n;
    const int to = ht.to, ho0 = ht.ho0, wo0 = ht.wo0;

    __syncthreads();  // the previous tile's halo and stage are no longer read
    for (int p = tid; p < pixels; p += Tiles::THREADS) {
      int gt, gh, gw;
      const bool valid = ht.source(s, hl, p, &gt, &gh, &gw);
      unsigned short* dst = halo + p * s.Cin;
      if (!valid) {
        for (int c = 0; c < s.Cin; ++c) dst[c] = 0;
      } else if (CL) {
        const unsigned short* src = reinterpret_cast<const unsigned short*>(x) +
            (((n * s.D + gt) * s.H + gh) * static_cast<long long>(s.W) + gw) * s.Cin;
        for (int c = 0; c < s.Cin; ++c) dst[c] = src[c];
      } else {
        const unsigned short* src = reinterpret_cast<const unsigned short*>(x) +
            n * s.Cin * plane + (static_cast<long long>(gt) * s.H + gh) * s.W + gw;
        for (int c = 0; c < s.Cin; ++c) dst[c] = src[c * plane];
      }
    }
    __syncthreads();

    float acc[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    for (int k0 = 0; k0 < kp; k0 += 16) {
      const int o0 = koff[k0 + 2 * q], o1 = koff[k0 + 2 * q + 1];
      const int o2 = koff[k0 + 2 * q + 8], o3 = koff[k0 + 2 * q + 9];
      auto at = [&](int rb, int o) -> unsigned short { return o < 0 ? 0 : halo[rb + o]; };
      unsigned a[4];
      a[0] = pack_u16(at(rb0, o0), at(rb0, o1));
      a[1] = pack_u16(at(rb1, o0), at(rb1, o1));
      a[2] = pack_u16(at(rb0, o2), at(rb0, o3));
      a[3] = pack_u16(at(rb1, o2), at(rb1, o3));
#pragma unroll
      for (int j = 0; j < BN / 16; ++j) {
        unsigned b[4];
        ldmatrix_x4(b, b_row + j * 16 * ws + k0);
        mma_m16n8k16(T{}, acc[2 * j], a, b[0], b[1]);
        mma_m16n8k16(T{}, acc[2 * j + 1], a, b[2], b[3]);
      }
    }

#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int c = j * 8 + 2 * q;
      const float b0 = bias_s[c], b1 = bias_s[c + 1];
      if (CL) {
        store_pair(stage + r0 * Tiles::STAGE_CL + c, acc[j][0] + b0, acc[j][1] + b1);
        store_pair(stage + r1 * Tiles::STAGE_CL + c, acc[j][2] + b0, acc[j][3] + b1);
      } else {
        stage[c * Tiles::STAGE_CF + r0] = from_f32<T>(acc[j][0] + b0);
        stage[(c + 1) * Tiles::STAGE_CF + r0] = from_f32<T>(acc[j][1] + b1);
        stage[c * Tiles::STAGE_CF + r1] = from_f32<T>(acc[j][2] + b0);
        stage[(c + 1) * Tiles::STAGE_CF + r1] = from_f32<T>(acc[j][3] + b1);
      }
    }
    __syncthreads();

    // 8 consecutive elements per thread: channels (CL) or positions along W (CF, BW >= 8).
    using V8 = Pack<T, 8>;
    const bool aligned = reinterpret_cast<unsigned long long>(y) % 16 == 0;
    if (CL) {
      const bool vec = aligned && s.Cout % 8 == 0;
      for (int i = tid; i < BM * (BN / 8); i += Tiles::THREADS) {
        const int r = i / (BN / 8), c = (i - r * (BN / 8)) * 8;
        const int ho = ho0 + (r >> bw_log2), wo = wo0 + (r & (bw - 1)), co = co0 + c;
        if (ho >= s.Ho || wo >= s.Wo || co >= s.Cout) continue;
        T* dst = y + (((n * s.Do + to) * s.Ho + ho) * static_cast<long long>(s.Wo) + wo) * s.Cout + co;
        const T* src = stage + r * Tiles::STAGE_CL + c;
        if (vec) {
          *reinterpret_cast<V8*>(dst) = *reinterpret_cast<const V8*>(src);
        } else {
          for (int e = 0; e < 8 && co + e < s.Cout; ++e) dst[e] = src[e];
        }
      }
    } else {
      const bool vec = aligned && s.Wo % 8 == 0;
      const long long P = static_cast<long long>(s.Do) * s.Ho * s.Wo;
      for (int i = tid; i < BN * (BM / 8); i += Tiles::THREADS) {
        const int c = i / (BM / 8), r = (i - c * (BM / 8)) * 8;
        const int ho = ho0 + (r >> bw_log2), wo = wo0 + (r & (bw - 1)), co = co0 + c;
        if (ho >= s.Ho || wo >= s.Wo || co >= s.Cout) continue;
        T* dst = y + (n * s.Cout + co) * P + (static_cast<long long>(to) * s.Ho + ho) * s.Wo + wo;
        const T* src = stage + c * Tiles::STAGE_CF + r;
        if (vec) {
          *reinterpret_cast<V8*>(dst) = *reinterpret_cast<const V8*>(src);
        } else {
          for (int e = 0; e < 8 && wo + e < s.Wo; ++e) dst[e] = src[e];
        }
      }
    }
  }
}

// ---- Narrow-output implicit GEMM on tensor cores (fp16/bf16 channels-last, Cout <= 16) --------
//
// For a few output channels (the RGB output conv of a VAE decoder: 3) every other kernel wastes
// its output-channel tile, so the GEMM is turned around: M = output channels (one m16 slab),
// N = positions, K = taps * Cin (taps * CC a multiple of 16). A CTA takes a 128-position box of one output frame (8 warps of
// 16 positions) and walks Cin in chunks of CC channels: each chunk's halo (every input frame, row
// and column the box's kernel windows touch, CC channels per pixel, padding zero-filled or the
// first frame replicated) and its [16, taps * CC] weight slice land in shared memory by cp.async,
// then each warp runs taps * CC / 16 k16 steps of mma.sync with both operands from ldmatrix: the
// halo row of a position for the k group's tap. Needs Cin % 8 == 0 (16-byte copies).
struct NarrowTiles {
  static constexpr int BM = 16;  // output channels, one m16 slab (rows past Cout are zero)
  static constexpr int BP = 128;
  static constexpr int THREADS = 256;
  // Elements per halo pixel and per weight row: padded so ldmatrix rows miss each other's banks.
  static __host__ __device__ constexpr int px_stride(int cc) { return cc + 8; }
  static __host__ __device__ constexpr int w_stride(int taps, int cc) { return taps * cc + 8; }
  static __host__ __device__ constexpr int smem_bytes(int taps, int cc, int halo_px) {
    return 2 * BM * w_stride(taps, cc) + 2 * halo_px * px_stride(cc) + 4 * (taps * cc / 8) +
           4 * BP * BM + 4 * halo_px;
  }
};

// Work: boxes x chunks units, box-major. Without `ws` a CTA takes one box (blockIdx.x) and all
// its chunks. With `ws` (stream-K, gridDim.x <= boxes) CTA b takes units [b U / G, (b + 1) U / G)
// of U = boxes x chunks over G = gridDim.x CTAs, at least one box's worth, so a box is split
// between at most two neighbouring CTAs. A range that ends inside a box (its chunks from 0)
// publishes the partial sums in CTA b's slot of ws and raises its flag; the next CTA, whose range
// starts inside that box, runs that head segment last, waits for the flag (a lower-numbered CTA,
// started no later), adds and stores. 544 boxes on 264 slots (the RGB output conv of a 64 x 64
// x 17 latent video) ran 3 rounds, the last 6% full; split this way every CTA does 2.06 boxes.
// ws: gridDim.x slots of 2048 floats, then gridDim.x int flags, zero at launch and left zero.
template <typename T>
__device__ __forceinline__ void conv3d_narrow(const T* __restrict__ x, const T* __restrict__ wp,
                                              const T* __restrict__ bias, T* __restrict__ y,
                                              const ConvShape s, int N, int bw_log2, int tiles_h,
                                              int tiles_w, int cc, float* __restrict__ ws) {
  using Tiles = NarrowTiles;
  constexpr int BP = Tiles::BP;
  const int bw = 1 << bw_log2, bh = BP >> bw_log2;
  const SmallcHalo hl(s.kT, s.kH, s.kW, s.dt, s.dh, s.dw, s.sh, s.sw, bh, bw);
  const int taps = s.kT * s.kH * s.kW;
  const int kc = taps * cc;  // reduction length of one chunk
  const int ws_ = Tiles::w_stride(taps, cc), ps = Tiles::px_stride(cc);
  const int pixels = hl.t * hl.h * hl.w;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* w_s = reinterpret_cast<T*>(smem_raw);      // [16][ws_]: k = tap * cc + c
  T* halo = w_s + Tiles::BM * ws_;              // [pixel][ps]
  int* koff = reinterpret_cast<int*>(halo + pixels * ps);  // [kc / 8]: halo offset of k group
  float* stage = reinterpret_cast<float*>(koff + kc / 8);   // [BP][16]
  int* src = reinterpret_cast<int*>(stage + BP * Tiles::BM);  // [pixel]: x's pixel, -1: padding
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int cg_log2 = cc == 32 ? 2 : cc == 16 ? 1 : 0;  // 16-byte pieces per pixel of a chunk

  for (int gi = tid; gi < kc / 8; gi += Tiles::THREADS) {
    const int tap = gi >> cg_log2;
    koff[gi] = halo_tap(s, hl, tap) * ps + (gi - (tap << cg_log2)) * 8;
  }
  // Weight rows past Cout stay zero: written once here, never loaded.
  for (int i = s.Cout * ws_ + tid; i < Tiles::BM * ws_; i += Tiles::THREADS) w_s[i] = zero_value<T>();

  // ldmatrix rows of this lane. A: channel (lane & 7) + 8 * ((lane >> 3) & 1), k half lane >> 4.
  // B: position warp * 16 + (lane & 7) + 8 * (lane >> 4), k half (lane >> 3) & 1.
  const T* a_row = w_s + ((lane & 7) + (((lane >> 3) & 1) << 3)) * ws_ + ((lane >> 4) << 3);
  const int pos = warp * 16 + (lane & 7) + ((lane >> 4) << 3);
  const T* b_row =
      halo + (((pos >> bw_log2) * s.sh) * hl.w + (pos & (bw - 1)) * s.sw) * ps;
  const int b_half = (lane >> 3) & 1;
  float acc[2][4];

  // Accumulates chunks [k0, k1) of `box` into acc. The halo's source pixels are found once per
  // box (the divisions and bounds checks), so a chunk's copies only add its channel offset.
  auto run_chunks = [&](long long box, int k0, int k1) {
    const HaloTile ht(s, box, bh, bw, tiles_h, tiles_w);
    // x's pixels relative to the halo's first (which may lie in the padding): at most the halo's
    // frames of H x W pixels apart, so they fit an int.
    const long long base = ((ht.n * s.D + ht.t_in) * s.H + ht.h_in) * s.W + ht.w_in;
    for (int p = tid; p < pixels; p += Tiles::THREADS) {
      int gt, gh, gw;
      src[p] = ht.source(s, hl, p, &gt, &gh, &gw)
                   ? static_cast<int>(((ht.n * s.D + gt) * s.H + gh) * s.W + gw - base)
                   : -1;
    }
    for (int c0 = k0 * cc; c0 < k1 * cc; c0 += cc) {
      __syncthreads();  // the previous chunk is no longer read (and koff, src are written)
      for (int i = tid; i < s.Cout * (kc / 8); i += Tiles::THREADS) {
        const int co = i / (kc / 8), gi = i - co * (kc / 8);
        const int tap = gi >> cg_log2, c = (gi - (tap << cg_log2)) * 8;
        cp_async16(w_s + co * ws_ + gi * 8,
                   wp + (static_cast<long long>(co) * taps + tap) * s.Cin + c0 + c, 16);
      }
      for (int i = tid; i < pixels << cg_log2; i += Tiles::THREADS) {
        const int p = i >> cg_log2, c = (i - (p << cg_log2)) * 8;
        const int sp = src[p];
        cp_async16(halo + p * ps + c, sp >= 0 ? x + (base + sp) * s.Cin + c0 + c : x,
                   sp >= 0 ? 16 : 0);
      }
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      for (int k = 0; k < kc; k += 16) {
        unsigned a[4], b[4];
        ldmatrix_x4(a, a_row + k);
        ldmatrix_x4(b, b_row + koff[(k >> 3) + b_half]);
        mma_m16n8k16(T{}, acc[0], a, b[0], b[1]);
        mma_m16n8k16(T{}, acc[1], a, b[2], b[3]);
      }
    }
  };

  // acc[j]: channels g and g + 8, positions warp * 16 + 8 j + 2 q (+1).
  auto store_box = [&](long long box) {
    const HaloTile ht(s, box, bh, bw, tiles_h, tiles_w);
    const int g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int p0 = warp * 16 + 8 * j + 2 * q;
      stage[p0 * 16 + g] = acc[j][0];
      stage[(p0 + 1) * 16 + g] = acc[j][1];
      stage[p0 * 16 + g + 8] = acc[j][2];
      stage[(p0 + 1) * 16 + g + 8] = acc[j][3];
    }
    __syncthreads();
    for (int i = tid; i < BP * s.Cout; i += Tiles::THREADS) {
      const int r = i / s.Cout, co = i - r * s.Cout;
      const int ho = ht.ho0 + (r >> bw_log2), wo = ht.wo0 + (r & (bw - 1));
      if (ho >= s.Ho || wo >= s.Wo) continue;
      const float v = stage[r * 16 + co] + (bias != nullptr ? to_f32(bias[co]) : 0.0f);
      y[(((ht.n * s.Do + ht.to) * s.Ho + ho) * static_cast<long long>(s.Wo) + wo) * s.Cout + co] =
          from_f32<T>(v);
    }
    __syncthreads();  // stage is read before the next box writes it
  };
  auto zero = [&] {
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
  };

  const int nch = s.Cin / cc;
  const long long G = gridDim.x, units = static_cast<long long>(N) * s.Do * tiles_h * tiles_w * nch;
  const long long u_begin = ws ? blockIdx.x * units / G : static_cast<long long>(blockIdx.x) * nch;
  const long long u_end = ws ? (blockIdx.x + 1) * units / G : u_begin + nch;
  const int head_k = static_cast<int>(u_begin % nch);  // > 0: the range starts inside a box
  for (long long u = head_k ? (u_begin / nch + 1) * nch : u_begin; u < u_end;) {
    const long long box = u / nch;
    const int k1 = static_cast<int>(min(static_cast<long long>(nch), u_end - box * nch));
    zero();
    run_chunks(box, 0, k1);
    if (k1 == nch) {
      store_box(box);
    } else {  // the next CTA finishes this box
      float4* slot = reinterpret_cast<float4*>(ws + blockIdx.x * 2048LL);
      __stcg(slot + tid, make_float4(acc[0][0], acc[0][1], acc[0][2], acc[0][3]));
      __stcg(slot + 256 + tid, make_float4(acc[1][0], acc[1][1], acc[1][2], acc[1][3]));
      __syncthreads();
      if (tid == 0) {
        __threadfence();
        unsigned* flag = reinterpret_cast<unsigned*>(ws + G * 2048) + blockIdx.x;
        asm volatile("st.release.gpu.global.u32 [%0], 1;" ::"l"(flag) : "memory");
      }
    }
    u = (box + 1) * nch;
  }
  if (head_k) {  // the rest of the box the previous CTA started
    const long long box = u_begin / nch;
    zero();
    run_chunks(box, head_k, nch);
    if (tid == 0) {
      unsigned* flag = reinterpret_cast<unsigned*>(ws + G * 2048) + blockIdx.x - 1;
      unsigned v = 0;
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flag) : "memory");
      } while (v == 0);
      *flag = 0;
    }
    __syncthreads();
    const float4* slot = reinterpret_cast<const float4*>(ws + (blockIdx.x - 1) * 2048LL);
    const float4 p0 = __ldcg(slot + tid), p1 = __ldcg(slot + 256 + tid);
    acc[0][0] += p0.x, acc[0][1] += p0.y, acc[0][2] += p0.z, acc[0][3] += p0.w;
    acc[1][0] += p1.x, acc[1][1] += p1.y, acc[1][2] += p1.z, acc[1][3] += p1.w;
    store_box(box);
  }
}

// ---- Hopper (sm_90a) implicit GEMM: wgmma on 128-byte-swizzled shared-memory tiles ------------
//
// Channels-last only: M = output positions (128 per CTA, 64 per warpgroup), N = output channels
// (BN per CTA), K = taps * Cin walked 64 at a time; two CTAs per SM. A K step may span two taps
// (Cin % 64 != 0): each 16-byte chunk (8 channels) finds its own tap. Tiles are filled with
// cp.async (zero-fill for padding and edges) straight into the layout wgmma reads with 128-byte
// swizzling: row r's 16-byte chunk c lands at chunk c ^ (r % 8). The gathers of later steps run
// while the tensor cores work. Two pipelines: the default one (3-4 stages, two CTAs per SM, the
// tensor cores drained every step) and a deep one for grids of at most one CTA per SM, where no
// second CTA hides a step's latency: 6 stages, the gathers 4 steps ahead, and one wgmma group left
// in flight across the barrier (LAG 1).
template <int BN, int STAGES_ = (BN > 64 ? 3 : 4)>
struct WgmmaTiles {
  static constexpr int BM = 128;
  static constexpr int BK = 64;  // one 128-byte swizzle row of 16-bit elements
  static constexpr int A_BYTES = BM * BK * 2;
  static constexpr int B_BYTES = BN * BK * 2;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;  // a multiple of 1024: stages stay aligned
  static constexpr int STAGES = STAGES_;  // 3-4: two CTAs fit an SM's 228 KB; 6: one CTA
  static constexpr int LAG = STAGES > 4 ? 1 : 0;  // wgmma groups left in flight per step
  static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024;  // + slack to align the base
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Matrix descriptor of a K-major tile with 128-byte swizzling: 8-row groups 1024 bytes apart.
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned saddr) {
  return static_cast<unsigned long long>((saddr & 0x3FFFF) >> 4) | (1ull << 16) |
         (static_cast<unsigned long long>(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Makes this thread's generic-proxy shared-memory writes (cp.async) visible to wgmma's reads.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

#define LRT_R0 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define LRT_R16 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define LRT_R32 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define LRT_R48 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define LRT_D8(i)                                                                      \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define LRT_D32 LRT_D8(0), LRT_D8(8), LRT_D8(16), LRT_D8(24)
#define LRT_D48 LRT_D32, LRT_D8(32), LRT_D8(40)
#define LRT_D64 LRT_D48, LRT_D8(48), LRT_D8(56)
#define LRT_R64 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79"
#define LRT_R80 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define LRT_R96 \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111"
#define LRT_R112 \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define LRT_D96 LRT_D64, LRT_D8(64), LRT_D8(72), LRT_D8(80), LRT_D8(88)
#define LRT_D128 LRT_D64, LRT_D8(64), LRT_D8(72), LRT_D8(80), LRT_D8(88), LRT_D8(96), LRT_D8(104), \
                 LRT_D8(112), LRT_D8(120)

// d (N/2 fp32 per thread) += A (64 x 16) * B (16 x N), both read from shared memory.
template <typename T, int N>
struct Wgmma;
#define LRT_WGMMA(T, PTX_T, N, REGS, A, B, ONE, DREGS)                                        \
  template <>                                                                                \
  struct Wgmma<T, N> {                                                                       \
    static __device__ __forceinline__ void run(float* d, unsigned long long a,               \
                                               unsigned long long b) {                       \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " ONE ", 0;\n"                         \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_T "." PTX_T " {" REGS \
                   "}, " A ", " B ", p, 1, 1, 0, 0;\n}\n"                                    \
                   : DREGS                                                                   \
                   : "l"(a), "l"(b), "r"(1));                                                \
    }                                                                                        \
  };
#define LRT_WGMMA_DTYPE(T, PTX_T)                                                             \
  LRT_WGMMA(T, PTX_T, 64, LRT_R0 ", " LRT_R16, "%32", "%33", "%34", LRT_D32)                 \
  LRT_WGMMA(T, PTX_T, 96, LRT_R0 ", " LRT_R16 ", " LRT_R32, "%48", "%49", "%50", LRT_D48)    \
  LRT_WGMMA(T, PTX_T, 128, LRT_R0 ", " LRT_R16 ", " LRT_R32 ", " LRT_R48, "%64", "%65", "%66", \
            LRT_D64)                                                                          \
  LRT_WGMMA(T, PTX_T, 192,                                                                    \
            LRT_R0 ", " LRT_R16 ", " LRT_R32 ", " LRT_R48 ", " LRT_R64 ", " LRT_R80, "%96",   \
            "%97", "%98", LRT_D96)                                                            \
  LRT_WGMMA(T, PTX_T, 256,                                                                    \
            LRT_R0 ", " LRT_R16 ", " LRT_R32 ", " LRT_R48 ", " LRT_R64 ", " LRT_R80 ", " LRT_R96 \
                   ", " LRT_R112,                                                             \
            "%128", "%129", "%130", LRT_D128)
LRT_WGMMA_DTYPE(__half, "f16")
LRT_WGMMA_DTYPE(__nv_bfloat16, "bf16")

// Cluster mbarrier and TMA (cp.async.bulk.tensor) primitives of the TMA-fed kernel (the CTA
// mbarrier ones are in common.cuh).
// Arrives on the barrier at the same shared-memory offset in block `rank` of the cluster. The
// default (CTA-scope) release: a cluster-scope one costs a fence per arrival, and the stage's
// reads it orders are wgmma's, already complete.
__device__ __forceinline__ void mbar_arrive_cluster(unsigned bar, unsigned rank) {
  asm volatile(
      "{\n.reg .b32 r;\nmapa.shared::cluster.u32 r, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [r];\n}" ::"r"(bar),
      "r"(rank)
      : "memory");
}
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::
                   : "memory");
}
// The same tile into every block of the cluster in `mask`, at the same shared-memory offsets of
// dst and bar there.
__device__ __forceinline__ void tma_load_2d_multicast(unsigned dst, const void* map, unsigned bar,
                                                      int c0, int c1, unsigned short mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      ".multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(bar), "h"(mask)
      : "memory");
}
__device__ __forceinline__ void tma_load_5d(unsigned dst, const void* map, unsigned bar, int c0,
                                            int c1, int c2, int c3, int c4) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5, %6}], [%7];" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(c4), "r"(bar)
      : "memory");
}

// BM consecutive output positions' 64 channels, im2col mode: the map's bounding box walks the
// positions W-fastest from (w, h, d, n); (ow, oh, od) is the filter tap added to each.
__device__ __forceinline__ void tma_load_im2col_5d(unsigned dst, const void* map, unsigned bar,
                                                   int c, int w, int h, int d, int n, int ow,
                                                   int oh, int od) {
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.im2col.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5, %6}], [%7], {%8, %9, %10};" ::"r"(dst),
      "l"(reinterpret_cast<unsigned long long>(map)), "r"(c), "r"(w), "r"(h), "r"(d), "r"(n),
      "r"(bar), "h"(static_cast<unsigned short>(ow)), "h"(static_cast<unsigned short>(oh)),
      "h"(static_cast<unsigned short>(od))
      : "memory");
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename T, int BN, int STAGES_>
__device__ __forceinline__ void conv3d_wgmma(const T* __restrict__ x, const T* __restrict__ wp,
                                             const T* __restrict__ bias, T* __restrict__ y,
                                             const ConvShape s) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tiles = WgmmaTiles<BN, STAGES_>;
  constexpr int BM = Tiles::BM;
  constexpr int BK = Tiles::BK;
  constexpr int STAGES = Tiles::STAGES;
  constexpr int LAG = Tiles::LAG;
  constexpr int AHEAD = STAGES - 1 - LAG;  // K steps in flight as gathers
  constexpr int ROWS = BM * 8 / 256;            // A rows per thread (one 16-byte chunk of each)
  constexpr int BROWS = (BN * 8 + 255) / 256;  // B rows per thread
  extern __shared__ __align__(1024) unsigned char wgmma_smem[];
  const unsigned raw = shared_address(wgmma_smem);
  const unsigned base = (raw + 1023u) & ~1023u;

  const int tid = threadIdx.x;
  const int wg = tid >> 7;  // warpgroup: output rows 64 * wg ...
  const long long n = blockIdx.z;
  const int P = s.Do * s.Ho * s.Wo;
  const int p0 = blockIdx.x * BM;
  const int co0 = blockIdx.y * BN;
  const int hw = s.kH * s.kW;
  const int K = s.kT * hw * s.Cin;
  const int nk = (K + BK - 1) / BK;

  // This thread copies chunk c (channels 8c..8c+7 of the K step) of A rows (tid >> 3) + 32 i
  // and of B rows (tid >> 3) + 32 j. Per A row it keeps the element offset of its window's corner
  // (t0, h0, w0): a K step adds one tap offset shared by all rows and tests the bounds.
  const int c = tid & 7;
  const long long hwc = static_cast<long long>(s.H) * s.W * s.Cin;
  int rt0[ROWS], rh0[ROWS], rw0[ROWS];
  long long roff[ROWS];
  unsigned adst[ROWS];
#pragma unroll
  for (int i = 0; i < ROWS; ++i) {
    const int r = (tid >> 3) + 32 * i;
    const int p = p0 + r;
    const int q = p < P ? p : 0;
    const int wo = q % s.Wo;
    const int ho = (q / s.Wo) % s.Ho;
    const int to = q / (s.Wo * s.Ho);
    rt0[i] = to * s.st - s.pt;
    rh0[i] = p < P ? ho * s.sh - s.ph : -(1 << 30);  // rows past the end never pass the test
    rw0[i] = wo * s.sw - s.pw;
    roff[i] = (n * s.D + rt0[i]) * hwc + (static_cast<long long>(rh0[i]) * s.W + rw0[i]) * s.Cin;
    adst[i] = r * 128 + ((c ^ (r & 7)) << 4);
  }
  const T* wrow[BROWS];
  bool bvalid[BROWS];
#pragma unroll
  for (int j = 0; j < BROWS; ++j) {
    const int r = (tid >> 3) + 32 * j;
    bvalid[j] = r < BN && co0 + r < s.Cout;
    wrow[j] = wp + static_cast<long long>(bvalid[j] ? co0 + r : 0) * K + c * 8;
  }
  // (kt, kh, kw, ci) of this thread's chunk at the next K step; steps go in order.
  int tap = (c * 8) / s.Cin;
  int ci = c * 8 - tap * s.Cin;
  int kt = tap / hw;
  int kh = (tap - kt * hw) / s.kW;
  int kw = tap - kt * hw - kh * s.kW;

  auto issue = [&](int ks, int stage) {
    const unsigned as = base + stage * Tiles::STAGE_BYTES;
    const unsigned bs = as + Tiles::A_BYTES;
    const bool kval = ks * BK + c * 8 < K;
    const int tdt = kt * s.dt, hdh = kh * s.dh, wdw = kw * s.dw;
    const long long tap_off =
        static_cast<long long>(tdt) * hwc + (static_cast<long long>(hdh) * s.W + wdw) * s.Cin + ci;
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      const int ti = rt0[i] + tdt;
      const bool ok = kval &&
                      static_cast<unsigned>(rh0[i] + hdh) < static_cast<unsigned>(s.H) &&
                      static_cast<unsigned>(rw0[i] + wdw) < static_cast<unsigned>(s.W) &&
                      ti < s.D && (ti >= 0 || s.replicate);
      // Replicate padding: a frame before the first reads frame 0.
      const long long off = roff[i] + tap_off - (ti < 0 ? ti * hwc : 0);
      cp_async16_shared(as + adst[i], ok ? x + off : x, ok ? 16 : 0);
    }
#pragma unroll
    for (int j = 0; j < BROWS; ++j) {
      const int r = (tid >> 3) + 32 * j;
      if (r < BN) {
        const bool ok = kval && bvalid[j];
        cp_async16_shared(bs + r * 128 + ((c ^ (r & 7)) << 4), ok ? wrow[j] + ks * BK : wp,
                          ok ? 16 : 0);
      }
    }
    ci += BK;
    while (ci >= s.Cin) {
      ci -= s.Cin;
      if (++kw == s.kW) {
        kw = 0;
        if (++kh == s.kH) {
          kh = 0;
          ++kt;
        }
      }
    }
  };

  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;

#pragma unroll
  for (int st = 0; st < AHEAD; ++st) {
    if (st < nk) issue(st, st);
    cp_async_commit();
  }
  for (int ks = 0; ks < nk; ++ks) {
    cp_async_wait<AHEAD - 1>();
    fence_proxy_async();
    __syncthreads();  // step ks landed for every thread; step ks-1-LAG's wgmma done everywhere
    const unsigned a_addr = base + (ks % STAGES) * Tiles::STAGE_BYTES + wg * 64 * 128;
    const unsigned b_addr = base + (ks % STAGES) * Tiles::STAGE_BYTES + Tiles::A_BYTES;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)
      Wgmma<T, BN>::run(acc, wgmma_desc(a_addr + kk * 32), wgmma_desc(b_addr + kk * 32));
    wgmma_commit();
    // The next tiles' gathers overlap the tensor cores; they refill step ks-1-LAG's buffer.
    const int nxt = ks + AHEAD;
    if (nxt < nk) issue(nxt, nxt % STAGES);
    cp_async_commit();
    wgmma_wait<LAG>();
  }
  wgmma_wait<0>();
  cp_async_wait<0>();

  // Accumulator layout: warp w of the warpgroup holds rows 16 w + (lane / 4) (+ 8), columns
  // 8 j + 2 (lane % 4) (+ 1) in acc[4 j + {0, 1}] (+ 8 rows: acc[4 j + {2, 3}]).
  const int lane = tid & 31;
  const int row0 = wg * 64 + ((tid >> 5) & 3) * 16 + (lane >> 2);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int p = p0 + row0 + 8 * half;
    if (p >= P) continue;
    T* yrow = y + (n * P + p) * static_cast<long long>(s.Cout);
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int co = co0 + 8 * j + 2 * (lane & 3);
      if (co < s.Cout) {
        const float b0 = bias != nullptr ? to_f32(bias[co]) : 0.0f;
        const float b1 = bias != nullptr ? to_f32(bias[co + 1]) : 0.0f;
        store_pair(yrow + co, acc[4 * j + 2 * half] + b0, acc[4 * j + 2 * half + 1] + b1);
      }
    }
  }
#else
  (void)x;
  (void)wp;
  (void)bias;
  (void)y;
  (void)s;
  __trap();  // compiled for a target without wgmma; the launchers never pick this kernel there
#endif
}

// ---- Hopper (sm_90a) implicit GEMM fed by TMA, warp-specialized --------------------------------
//
// Channels-last, stride 1, dilation 1, Cin % 64 == 0. A tile's BM (128 or 256) output positions
// are a BH x BW box of one output frame, so one tap's A tile is the same box of the input shifted
// by the tap: a 5-D TMA tile (C, W, H, T, N) of 64 channels. Coordinates outside the input
// (spatial and causal zero padding) arrive as zeros; replicate padding clamps the frame
// coordinate, which is uniform over the box. Frames that boxes do not tile whole take TMA's
// im2col mode instead (zero padding only, `im2col`): a tile is BM consecutive output positions
// across rows, frames and the batch, one load per K step whose bounding box runs from the front
// pads to the back ones, the tap its im2col offsets. B (packed weights, a [Cout, K] matrix) is a
// 2-D TMA tile. One producer thread issues both loads of a K step onto an mbarrier ring of
// STAGES; two consumer warpgroups (BM / 2 positions each, in m64 slabs) wait for a stage, issue
// wgmma, keep one group in flight and release the stage before it. No thread computes a gather
// address and no barrier spans the CTA inside the loop.
//
// Clusters of CL = 2 CTAs take two neighbouring position tiles of the same output channels: each
// CTA loads half of the shared B tile and multicasts it to both, so B crosses L2 once per pair.
// A stage is then refilled only when the consumers of both CTAs have released it.
//
// Work is counted in units of CL tiles (tiles numbered M-fastest over tiles_m position tiles,
// a multiple of CL; CTAs in flight share B): the range of (unit, K step) iterations
// [tile0 * nk, (tile0 + tiles) * nk). Cluster b takes `iters` consecutive iterations from
// tile0 * nk + b * iters: with iters == nk every CTA owns one tile and stores it (bias added).
// Otherwise (stream-K, `ws` set) a cluster's range may start or end inside a unit. Only its
// first segment can start past K step 0; that segment's fp32 partial sums go to the CTA's slot of
// ws and its flag is raised. The CTA that ran the tile's K step 0 meets that segment last in its
// range, so by then the later CTAs' partials are (nearly always) ready: it waits for their flags,
// adds the partials in registers and stores the tile. No atomics, no finalize pass.
// ws: gridDim.x slots of BM * BN floats, then gridDim.x int flags, zero at launch and left zero.
// Every CTA of the launch must be resident at once (the launcher bounds the grid).

struct TmaConvShape {
  int N, Cin, Cout, kT, kH, kW;
  int Do, Ho, Wo;
  int pt, ph, pw;
  int replicate;
  int bw_log2;           // box width BW = 1 << bw_log2 positions; BH = (BM >> sub_log2) / BW rows
  int sub_log2;          // a tile is 1 << sub_log2 consecutive boxes (frames of awkward sizes)
  int tiles_h, tiles_w;  // boxes per frame
  int tiles_m;           // position tiles: N * Do * tiles_h * tiles_w boxes in tiles, rounded to CL
  int tile0, tiles;      // this launch's units of CL tiles
  int iters;             // (unit, K step) iterations per cluster
  int im2col;            // A by one im2col load: BM consecutive output positions (zero padding)
};

template <int BM_, int BN, int STAGES_>
struct TmaTiles {
  static constexpr int BM = BM_;
  static constexpr int BK = 64;
  static constexpr int A_BYTES = BM * BK * 2;
  static constexpr int B_BYTES = BN * BK * 2;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;  // multiples of 1024: swizzle-aligned
  static constexpr int STAGES = STAGES_;
  static constexpr int SMEM_BYTES = STAGES * STAGE_BYTES + 1024 + 2 * STAGES * 8;
  static constexpr int THREADS = 288;  // two consumer warpgroups + one producer warp
};

// Tile `tile`: its first box (boxes numbered W-fastest over the frames of the batch) and first
// output channel co0.
struct TmaTile {
  int box, co0;
};
__device__ __forceinline__ TmaTile tma_tile(const TmaConvShape& s, int tile, int bn) {
  return TmaTile{(tile % s.tiles_m) << s.sub_log2, tile / s.tiles_m * bn};
}

// Where box `b` of BH rows sits: batch n (N or more past the batch: idle rows of a last tile
// or of a cluster's partner), output frame to, corner (h0, w0).
struct TmaBox {
  int n, to, h0, w0;
};
__device__ __forceinline__ TmaBox tma_box_at(const TmaConvShape& s, int b, int bh) {
  TmaBox x;
  x.w0 = (b % s.tiles_w) << s.bw_log2;
  b /= s.tiles_w;
  x.h0 = b % s.tiles_h * bh;
  b /= s.tiles_h;
  x.to = b % s.Do;
  x.n = b / s.Do;
  return x;
}

// The output position p as a box corner: batch n (N or more past the batch), frame to, (h0, w0).
__device__ __forceinline__ TmaBox tma_position(const TmaConvShape& s, long long p) {
  TmaBox x;
  x.w0 = static_cast<int>(p % s.Wo);
  p /= s.Wo;
  x.h0 = static_cast<int>(p % s.Ho);
  p /= s.Ho;
  x.to = static_cast<int>(p % s.Do);
  x.n = static_cast<int>(p / s.Do);
  return x;
}

// Output row index (n, to, ho, wo) of tile row r (box r / PB, position r % PB of PB = BM >>
// sub_log2), or -1 past the frame's edge or the batch.
template <int BM>
__device__ __forceinline__ long long tma_row(const TmaConvShape& s, const TmaTile& t, int r) {
  if (s.im2col) {  // positions t.box * BM ... in (n, to, ho, wo) order
    const long long p = static_cast<long long>(t.box) * BM + r;
    return p < static_cast<long long>(s.N) * s.Do * s.Ho * s.Wo ? p : -1;
  }
  const int pb_log2 = (BM == 256 ? 8 : 7) - s.sub_log2;
  const int rr = r & ((1 << pb_log2) - 1);
  const TmaBox x = tma_box_at(s, t.box + (r >> pb_log2), 1 << (pb_log2 - s.bw_log2));
  const int ho = x.h0 + (rr >> s.bw_log2), wo = x.w0 + (rr & ((1 << s.bw_log2) - 1));
  if (ho >= s.Ho || wo >= s.Wo || x.n >= s.N) return -1;
  return ((static_cast<long long>(x.n) * s.Do + x.to) * s.Ho + ho) * s.Wo + wo;
}

// Stream-K hand-over between the consumer warpgroups (256 threads) of two CTAs. Each thread
// moves its N accumulators as float4s laid out thread-fastest, so every access is coalesced.
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, 256;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void stream_k_publish(const float* acc, float* ws, int tid) {
  float4* slot = reinterpret_cast<float4*>(ws + static_cast<long long>(blockIdx.x) * N * 256);
#pragma unroll
  for (int e = 0; e < N / 4; ++e)
    __stcg(slot + e * 256 + tid,
           make_float4(acc[4 * e], acc[4 * e + 1], acc[4 * e + 2], acc[4 * e + 3]));
  consumers_sync();
  if (tid == 0) {
    unsigned* flag =
        reinterpret_cast<unsigned*>(ws + static_cast<long long>(gridDim.x) * N * 256) + blockIdx.x;
    __threadfence();
    asm volatile("st.release.gpu.global.u32 [%0], 1;" ::"l"(flag) : "memory");
  }
}

// Adds the partials of CTAs first, first + step, ... <= last (each waited for, its flag reset).
template <int N>
__device__ __forceinline__ void stream_k_gather(float* acc, const float* ws, int tid, int first,
                                                int last, int step) {
  unsigned* flags = reinterpret_cast<unsigned*>(const_cast<float*>(ws) +
                                                static_cast<long long>(gridDim.x) * N * 256);
  for (int c = first + tid * step; c <= last; c += 256 * step) {
    unsigned v = 0;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flags + c) : "memory");
    } while (v == 0);
    flags[c] = 0;
  }
  consumers_sync();
  for (int c = first; c <= last; c += step) {
    const float4* slot = reinterpret_cast<const float4*>(ws + static_cast<long long>(c) * N * 256);
#pragma unroll
    for (int e = 0; e < N / 4; ++e) {
      const float4 v = __ldcg(slot + e * 256 + tid);
      acc[4 * e] += v.x;
      acc[4 * e + 1] += v.y;
      acc[4 * e + 2] += v.z;
      acc[4 * e + 3] += v.w;
    }
  }
}

// Two values as one 32-bit pair of T.
template <typename T>
__device__ __forceinline__ unsigned pack_pair(float a, float b) {
  Pack<T, 2> v;
  v.v[0] = from_f32<T>(a);
  v.v[1] = from_f32<T>(b);
  return *reinterpret_cast<const unsigned*>(&v);
}

// Transposes a 4 x 4 matrix held by a quad of lanes (lane q's v[k] is entry (q, k)): two rounds of
// exchanges with the lane whose index differs in bit 0, then bit 1.
__device__ __forceinline__ void quad_transpose(unsigned (&v)[4], int q) {
#pragma unroll
  for (int bit = 1; bit <= 2; bit <<= 1) {
    const bool hi = q & bit;
    // entries (q, k) whose bit of k differs from q's go to the partner, which sends its
    // (q ^ bit, k ^ bit) in their place
    const int a = hi ? 0 : bit, b = hi ? (bit == 1 ? 2 : 1) : 3;
    const unsigned ra = __shfl_xor_sync(0xffffffffu, v[a], bit);
    const unsigned rb = __shfl_xor_sync(0xffffffffu, v[b], bit);
    v[a] = ra;
    v[b] = rb;
  }
}

// The epilogue of one m64 slab (accumulator layout as in conv3d_wgmma): the lane's rows r0 and
// r0 + 8 of the tile (positions of its boxes, or consecutive ones under im2col), bias added. A
// quad of lanes holds one row's 32 columns of four n8 slices, a pair per lane and slice; a 4 x 4
// transpose of the pairs across the quad gives each lane one slice's 8 columns, one 16-byte
// store (pairs made 4-byte stores, half a sector each). Every lane takes part in the shuffles.
template <typename T, int BM, int BN>
__device__ __forceinline__ void tma_store_quads(const TmaConvShape& s, const TmaTile& t,
                                                const float (&acc)[BN / 2],
                                                const T* __restrict__ bias, T* __restrict__ y,
                                                int r0, int q) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const long long p = tma_row<BM>(s, t, r0 + 8 * half);
#pragma unroll
    for (int jg = 0; jg < BN / 32; ++jg) {
      unsigned v[4];  // v[k]: columns 8 (4 jg + k) + 2 q, + 1
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int jn = 4 * jg + k, co = min(t.co0 + 8 * jn + 2 * q, s.Cout - 2);
        const float b0 = bias != nullptr ? to_f32(bias[co]) : 0.0f;
        const float b1 = bias != nullptr ? to_f32(bias[co + 1]) : 0.0f;
        v[k] = pack_pair<T>(acc[4 * jn + 2 * half] + b0, acc[4 * jn + 2 * half + 1] + b1);
      }
      quad_transpose(v, q);  // v[k]: columns 8 (4 jg + q) + 2 k, + 1
      const int co = t.co0 + 8 * (4 * jg + q);
      if (p >= 0 && co < s.Cout)
        *reinterpret_cast<uint4*>(y + p * s.Cout + co) = make_uint4(v[0], v[1], v[2], v[3]);
    }
  }
}

template <typename T, int BM, int BN, int STAGES_, int CL>
__device__ __forceinline__ void conv3d_tma(const TmaDesc& ta, const TmaDesc& tb,
                                           const T* __restrict__ bias, T* __restrict__ y,
                                           float* __restrict__ ws, const TmaConvShape s) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tiles = TmaTiles<BM, BN, STAGES_>;
  constexpr int STAGES = Tiles::STAGES;
  constexpr int MW = BM / 128;  // m64 slabs per consumer warpgroup
  extern __shared__ __align__(1024) unsigned char tma_smem[];
  const unsigned base = (shared_address(tma_smem) + 1023u) & ~1023u;
  const unsigned full0 = base + STAGES * Tiles::STAGE_BYTES;  // STAGES "landed" barriers
  const unsigned empty0 = full0 + STAGES * 8;                 // STAGES "consumed" barriers
  const int tid = threadIdx.x;
  const int rank = CL > 1 ? static_cast<int>(cluster_rank()) : 0;
  const int cl = blockIdx.x / CL;  // this CTA's cluster
  if (tid == 0) {
    for (int i = 0; i < STAGES; ++i) {
      mbar_init(full0 + 8 * i, 1);
      mbar_init(empty0 + 8 * i, 8 * CL);  // each consumer warp of each CTA of the cluster
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  if constexpr (CL > 1)
    cluster_sync();  // the peer's barriers are initialized before anything lands there
  else
    __syncthreads();

  const int chunks = s.Cin >> 6;
  const int hw = s.kH * s.kW;
  const int nk = s.kT * hw * chunks;
  const long long g0 = static_cast<long long>(s.tile0) * nk + static_cast<long long>(cl) * s.iters;
  const long long g1 = min(static_cast<long long>(s.tile0 + s.tiles) * nk, g0 + s.iters);

  if (tid >= 256) {  // producer warp: one thread issues every load
    if (tid == 256 && g1 > g0) {
      // The (unit, K step) position advances by counting: a divide per step would make this one
      // thread's dependent integer chain slower than the tensor cores' step.
      int unit = static_cast<int>(g0 / nk);
      int ks = static_cast<int>(g0 - static_cast<long long>(unit) * nk);
      // The tile's boxes (up to 8): one TMA load of 64 channels each per K step.
      const int bh = (BM >> s.sub_log2) >> s.bw_log2;
      const int nbox = 1 << s.sub_log2;
      TmaTile t = tma_tile(s, unit * CL + rank, BN);
      TmaBox bx[8];
      // im2col: bx[0] is the tile's first output position (sub_log2 is 0: one "box")
      auto boxes = [&] {
        if (s.im2col) {
          bx[0] = tma_position(s, static_cast<long long>(t.box) * BM);
          return;
        }
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (q < nbox) bx[q] = tma_box_at(s, t.box + q, bh);
      };
      boxes();
      const int tap0 = ks / chunks;
      int ci = (ks - tap0 * chunks) << 6;
      int kt = tap0 / hw;
      int kh = (tap0 - kt * hw) / s.kW;
      int kw = tap0 - kt * hw - kh * s.kW;
      const int steps = static_cast<int>(g1 - g0);
      for (int i = 0; i < steps; ++i) {
        const int stage = i % STAGES;
        if (i >= STAGES) mbar_wait(empty0 + 8 * stage, (i / STAGES - 1) & 1);
        const unsigned full = full0 + 8 * stage;
        mbar_expect_tx(full, Tiles::STAGE_BYTES);  // own A, and B from every CTA of the cluster
        const unsigned as = base + stage * Tiles::STAGE_BYTES;
        if (s.im2col) {  // the traversal starts at tap (0, 0, 0) of the first position
          tma_load_im2col_5d(as, &ta, full, ci, bx[0].w0 - s.pw, bx[0].h0 - s.ph, bx[0].to - s.pt,
                             bx[0].n, kw, kh, kt);
        } else {
#pragma unroll
          for (int q = 0; q < 8; ++q) {
            if (q >= nbox) break;
            int ti = bx[q].to - s.pt + kt;
            if (ti < 0 && s.replicate) ti = 0;
            tma_load_5d(as + q * (Tiles::A_BYTES >> s.sub_log2), &ta, full, ci,
                        bx[q].w0 - s.pw + kw, bx[q].h0 - s.ph + kh, ti, bx[q].n);
          }
        }
        if constexpr (CL > 1)  // rows rank * BN / CL ... of B, to every CTA of the cluster
          tma_load_2d_multicast(as + Tiles::A_BYTES + rank * (BN / CL) * 128, &tb, full, ks << 6,
                                t.co0 + rank * (BN / CL), (1u << CL) - 1);
        else
          tma_load_2d(as + Tiles::A_BYTES, &tb, full, ks << 6, t.co0);  // K index = 64 * ks
        if (++ks == nk) {
          ks = ci = kt = kh = kw = 0;
          t = tma_tile(s, ++unit * CL + rank, BN);
          boxes();
        } else if ((ci += 64) == s.Cin) {
          ci = 0;
          if (++kw == s.kW) {
            kw = 0;
            if (++kh == s.kH) {
              kh = 0;
              ++kt;
            }
          }
        }
      }
    }
    __syncwarp();
  } else {
    const int wg = tid >> 7;  // consumer warpgroup: positions BM / 2 * wg ...
    const int lane = tid & 31;
    int i = 0;  // this CTA's K steps so far: the ring's stage and phase
    for (long long g = g0; g < g1;) {
      const int unit = static_cast<int>(g / nk);
      const int kb = static_cast<int>(g - static_cast<long long>(unit) * nk);
      const int seg = static_cast<int>(min(static_cast<long long>(nk - kb), g1 - g));
      float acc[MW][BN / 2];
#pragma unroll
      for (int m = 0; m < MW; ++m)
#pragma unroll
        for (int e = 0; e < BN / 2; ++e) acc[m][e] = 0.0f;
      for (int j = 0; j < seg; ++j, ++i) {
        const int stage = i % STAGES;
        mbar_wait(full0 + 8 * stage, (i / STAGES) & 1);
        const unsigned a_addr = base + stage * Tiles::STAGE_BYTES + wg * (BM / 2) * 128;
        const unsigned b_addr = base + stage * Tiles::STAGE_BYTES + Tiles::A_BYTES;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
          for (int m = 0; m < MW; ++m)
            Wgmma<T, BN>::run(acc[m], wgmma_desc(a_addr + m * 64 * 128 + kk * 32),
                              wgmma_desc(b_addr + kk * 32));
        wgmma_commit();
        wgmma_wait<1>();  // step i - 1 has finished reading its stage
        if (i > 0 && lane == 0) {
          const unsigned empty = empty0 + 8 * ((i - 1) % STAGES);
          if constexpr (CL > 1) {
#pragma unroll
            for (int r = 0; r < CL; ++r) mbar_arrive_cluster(empty, r);
          } else {
            mbar_arrive(empty);
          }
        }
      }
      wgmma_wait<0>();
      g += seg;

      if (ws != nullptr && kb != 0) {  // a later part of a unit begun by an earlier cluster
        stream_k_publish<MW * BN / 2>(acc[0], ws, tid);
        continue;
      }
      if (ws != nullptr && seg < nk) {  // the unit's later K steps ran on clusters cl + 1 ...
        const long long end = static_cast<long long>(unit + 1 - s.tile0) * nk;  // launch-relative
        const int last = static_cast<int>((end - 1) / s.iters);
        stream_k_gather<MW * BN / 2>(acc[0], ws, tid, (cl + 1) * CL + rank, last * CL + rank, CL);
      }

      // The tile out, bias added: this thread's rows r0 and r0 + 8 of each m64 slab.
      const TmaTile t = tma_tile(s, unit * CL + rank, BN);
      if constexpr (BN == 128) {
        // Pairs, 4 bytes each (half a sector): with the quads' transpose 128-channel tiles spill
        // (m128: two CTAs per SM under 96 registers; m256 ran 2.4% slower on H100).
#pragma unroll
        for (int mh = 0; mh < 2 * MW; ++mh) {
          const int m = mh >> 1, half = mh & 1;
          const int r = wg * (BM / 2) + m * 64 + ((tid >> 5) & 3) * 16 + (lane >> 2) + 8 * half;
          const long long p = tma_row<BM>(s, t, r);
          if (p < 0) continue;
#pragma unroll
          for (int jn = 0; jn < BN / 8; ++jn) {
            const int co = t.co0 + 8 * jn + 2 * (lane & 3);
            if (co >= s.Cout) continue;
            const float b0 = bias != nullptr ? to_f32(bias[co]) : 0.0f;
            const float b1 = bias != nullptr ? to_f32(bias[co + 1]) : 0.0f;
            store_pair(y + p * s.Cout + co, acc[m][4 * jn + 2 * half] + b0,
                       acc[m][4 * jn + 2 * half + 1] + b1);
          }
        }
      } else {
        const int r0 = wg * (BM / 2) + ((tid >> 5) & 3) * 16 + (lane >> 2);
#pragma unroll
        for (int m = 0; m < MW; ++m)
          tma_store_quads<T, BM, BN>(s, t, acc[m], bias, y, r0 + m * 64, lane & 3);
      }
    }
  }
  // No CTA leaves while its cluster peer may still multicast into it or arrive on its barriers.
  if constexpr (CL > 1) cluster_sync();
#else
  (void)ta;
  (void)tb;
  (void)bias;
  (void)y;
  (void)ws;
  (void)s;
  __trap();  // compiled for a target without wgmma/TMA; the launchers never pick this kernel there
#endif
}

// Batched transpose of 2-byte elements, in [B, R, C] -> out [B, C, R]: the layout change between
// channels-first and channels-last (R channels and C positions, or the reverse) around the
// channels-last kernels. A 256-thread block moves one 64 x 64 tile through shared memory,
// element pairs as 32-bit accesses where R and C are even (PAIRS), single elements otherwise.
// grid.x = row tiles x column tiles (row tiles fastest), grid.y = B.
template <bool PAIRS>
__device__ __forceinline__ void transpose_2b(const unsigned short* __restrict__ in,
                                             unsigned short* __restrict__ out, int R, int C) {
  __shared__ unsigned short tile[64][66];
  const int tiles_r = (R + 63) >> 6;
  const int r0 = (blockIdx.x % tiles_r) << 6, c0 = (blockIdx.x / tiles_r) << 6;
  const long long base = static_cast<long long>(blockIdx.y) * R * C;
  in += base;
  out += base;
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;  // 32 x 8 threads
  if constexpr (PAIRS) {
    for (int i = ty; i < 64; i += 8) {  // rows of the input tile, two columns per thread
      const int r = r0 + i, c = c0 + 2 * tx;
      unsigned v = 0;
      if (r < R && c < C)
        v = *reinterpret_cast<const unsigned*>(in + static_cast<long long>(r) * C + c);
      *reinterpret_cast<unsigned*>(&tile[i][2 * tx]) = v;
    }
    __syncthreads();
    for (int j = ty; j < 64; j += 8) {  // rows of the output tile: input column c0 + j
      const int c = c0 + j, r = r0 + 2 * tx;
      if (c < C && r < R) {
        const unsigned v = tile[2 * tx][j] | static_cast<unsigned>(tile[2 * tx + 1][j]) << 16;
        *reinterpret_cast<unsigned*>(out + static_cast<long long>(c) * R + r) = v;
      }
    }
  } else {
    for (int i = ty; i < 64; i += 8) {
      const int r = r0 + i;
      for (int k = tx; k < 64; k += 32)
        if (r < R && c0 + k < C) tile[i][k] = in[static_cast<long long>(r) * C + c0 + k];
    }
    __syncthreads();
    for (int j = ty; j < 64; j += 8) {
      const int c = c0 + j;
      for (int k = tx; k < 64; k += 32)
        if (c < C && r0 + k < R) out[static_cast<long long>(c) * R + r0 + k] = tile[k][j];
    }
  }
}

}  // namespace latentrt

// Kernel entry points (grid: x = position tiles, y = output-channel tiles, z = batch):
//   latentrt_conv3d_pack_{f32|f16|bf16}                     [Cout,Cin,taps] -> [Cout,taps,Cin]
//   latentrt_transpose_2b, latentrt_transpose_2b_pairs      [B, R, C] -> [B, C, R], 16-bit
//                                          elements; block 256, grid (R/64 x C/64 tiles, B)
//   latentrt_conv3d_direct_{ncdhw|ndhwc}_{f32|f16|bf16}     block 128, grid.y = ceil(Cout/8)
//   latentrt_conv3d_igemm_{ncdhw|ndhwc}_{f16|bf16}_m{64|128} block 256, grid.y = ceil(Cout/BM)
//   latentrt_conv3d_smallc_{ncdhw|ndhwc}_{f16|bf16}_n{64|128} block 256, grid.x = CTAs looping
//                                          over position tiles, grid.y = ceil(Cout/BN)
//   latentrt_conv3d_narrow_ndhwc_{f16|bf16}                  block 256, grid.x = position tiles
//                                          (Cout <= 16), or stream-K's CTAs with a workspace
//   latentrt_conv3d_wgmma_ndhwc_{f16|bf16}_n{64|96|128}      block 256, grid.x = ceil(P/128),
//                                          grid.y = ceil(Cout/BN); sm_90a only
//   latentrt_conv3d_wgmma_ndhwc_{f16|bf16}_n128_s6           the same with 6 stages, one CTA
//                                          per SM
//   latentrt_conv3d_tma_ndhwc_{f16|bf16}_m{BM}_n{BN}_s{S}    (BM, BN, S) = (128, 128, 3),
//                                          (128, 192, 5), (128, 256, 4), (256, 128, 4); block
//                                          288, grid.x = CTAs over the launch's tiles (TmaConvShape);
//                                          tensor maps by value; sm_90a only
//   latentrt_conv3d_tma_ndhwc_{f16|bf16}_m{BM}_n{BN}_s{S}_c2 the same in clusters of two CTAs
//                                          sharing B by multicast (B's box: BN / 2 rows)
//   latentrt_conv3d_tma_ndhwc_{f16|bf16}_m128_n{192|256}_s{5|4}_c4 in clusters of four (B's
//                                          box: BN / 4 rows)
#define LRT_CONV_PARAMS                                                                         \
  int Cin, int D, int H, int W, int Cout, int kT, int kH, int kW, int Do, int Ho, int Wo, int st, \
      int sh, int sw, int dt, int dh, int dw, int pt, int ph, int pw, int replicate
#define LRT_CONV_SHAPE \
  latentrt::ConvShape{Cin, D, H, W, Cout, kT, kH, kW, Do, Ho, Wo, st, sh, sw, dt, dh, dw, pt, ph, pw, replicate}

#define LRT_CONV_PACK(T, SUF)                                                                      \
  extern "C" __global__ void latentrt_conv3d_pack_##SUF(const T* w, T* wp, int Cout, int Cin,      \
                                                        int taps) {                                \
    const long long total = static_cast<long long>(Cout) * Cin * taps;                             \
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;  \
         i += static_cast<long long>(gridDim.x) * blockDim.x) {                                    \
      const long long co = i / (static_cast<long long>(taps) * Cin);                               \
      const long long r = i - co * taps * Cin;                                                     \
      const long long tap = r / Cin;                                                               \
      const long long ci = r - tap * Cin;                                                          \
      wp[i] = w[(co * Cin + ci) * taps + tap];                                                     \
    }                                                                                              \
  }
#define LRT_CONV_DIRECT(T, SUF, LAYOUT, LNAME)                                                     \
  extern "C" __global__ void __launch_bounds__(128) latentrt_conv3d_direct_##LNAME##_##SUF(        \
      const T* x, const T* wp, const T* bias, T* y, LRT_CONV_PARAMS, int ci_chunk, int vec) {     \
    latentrt::conv3d_direct<T, LAYOUT>(x, wp, bias, y, LRT_CONV_SHAPE, ci_chunk, vec);            \
  }
#define LRT_CONV_IGEMM(T, SUF, LAYOUT, LNAME, BM)                                                  \
  extern "C" __global__ void __launch_bounds__(256) latentrt_conv3d_igemm_##LNAME##_##SUF##_m##BM( \
      const T* x, const T* wp, const T* bias, T* y, LRT_CONV_PARAMS) {                             \
    latentrt::conv3d_igemm<T, LAYOUT, BM>(x, wp, bias, y, LRT_CONV_SHAPE);                         \
  }
#define LRT_CONV_SMALLC(T, SUF, LAYOUT, LNAME, BN)                                             \
  extern "C" __global__ void __launch_bounds__(256, 2)                                         \
      latentrt_conv3d_smallc_##LNAME##_##SUF##_n##BN(const T* x, const T* wp, const T* bias,   \
                                                     T* y, LRT_CONV_PARAMS, int N,             \
                                                     int bw_log2, int tiles_h, int tiles_w,    \
                                                     int kp) {                                 \
    latentrt::conv3d_smallc<T, LAYOUT, BN>(x, wp, bias, y, LRT_CONV_SHAPE, N, bw_log2,         \
                                           tiles_h, tiles_w, kp);                              \
  }
#define LRT_CONV_NARROW(T, SUF)                                                                \
  extern "C" __global__ void __launch_bounds__(256, 2) latentrt_conv3d_narrow_ndhwc_##SUF(     \
      const T* x, const T* wp, const T* bias, T* y, LRT_CONV_PARAMS, int N, int bw_log2,       \
      int tiles_h, int tiles_w, int cc, float* ws) {                                           \
    latentrt::conv3d_narrow<T>(x, wp, bias, y, LRT_CONV_SHAPE, N, bw_log2, tiles_h, tiles_w, cc, \
                               ws);                                                            \
  }
#define LRT_CONV_WGMMA(T, SUF, BN)                                                                 \
  extern "C" __global__ void __launch_bounds__(256, 2) latentrt_conv3d_wgmma_ndhwc_##SUF##_n##BN( \
      const T* x, const T* wp, const T* bias, T* y, LRT_CONV_PARAMS) {                             \
    latentrt::conv3d_wgmma<T, BN, latentrt::WgmmaTiles<BN>::STAGES>(x, wp, bias, y,                \
                                                                    LRT_CONV_SHAPE);               \
  }
#define LRT_CONV_WGMMA_DEEP(T, SUF, S)                                                        \
  extern "C" __global__ void __launch_bounds__(256, 1)                                        \
      latentrt_conv3d_wgmma_ndhwc_##SUF##_n128_s##S(const T* x, const T* wp, const T* bias,   \
                                                    T* y, LRT_CONV_PARAMS) {                  \
    latentrt::conv3d_wgmma<T, 128, S>(x, wp, bias, y, LRT_CONV_SHAPE);                        \
  }
#define LRT_TMA_PARAMS                                                                        \
  int N, int Cin, int Cout, int kT, int kH, int kW, int Do, int Ho, int Wo, int pt, int ph,  \
      int pw, int replicate, int bw_log2, int sub_log2, int tiles_h, int tiles_w, int tiles_m, \
      int tile0, int tiles, int iters, int im2col
#define LRT_CONV_TMA_SHAPE                                                                    \
  latentrt::TmaConvShape {                                                                    \
    N, Cin, Cout, kT, kH, kW, Do, Ho, Wo, pt, ph, pw, replicate, bw_log2, sub_log2, tiles_h,  \
        tiles_w, tiles_m, tile0, tiles, iters, im2col                                         \
  }
#define LRT_CONV_TMA(T, SUF, BM, BN, S, MINB)                                                  \
  extern "C" __global__ void __launch_bounds__(288, MINB)                                      \
      latentrt_conv3d_tma_ndhwc_##SUF##_m##BM##_n##BN##_s##S(                                  \
          const __grid_constant__ latentrt::TmaDesc ta,                                        \
          const __grid_constant__ latentrt::TmaDesc tb, const T* bias, T* y, float* ws,        \
          LRT_TMA_PARAMS) {                                                                    \
    latentrt::conv3d_tma<T, BM, BN, S, 1>(ta, tb, bias, y, ws, LRT_CONV_TMA_SHAPE);            \
  }                                                                                            \
  extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(288, MINB)            \
      latentrt_conv3d_tma_ndhwc_##SUF##_m##BM##_n##BN##_s##S##_c2(                             \
          const __grid_constant__ latentrt::TmaDesc ta,                                        \
          const __grid_constant__ latentrt::TmaDesc tb, const T* bias, T* y, float* ws,        \
          LRT_TMA_PARAMS) {                                                                    \
    latentrt::conv3d_tma<T, BM, BN, S, 2>(ta, tb, bias, y, ws, LRT_CONV_TMA_SHAPE);            \
  }
#define LRT_CONV_TMA_C4(T, SUF, BM, BN, S)                                                     \
  extern "C" __global__ void __cluster_dims__(4, 1, 1) __launch_bounds__(288, 1)               \
      latentrt_conv3d_tma_ndhwc_##SUF##_m##BM##_n##BN##_s##S##_c4(                             \
          const __grid_constant__ latentrt::TmaDesc ta,                                        \
          const __grid_constant__ latentrt::TmaDesc tb, const T* bias, T* y, float* ws,        \
          LRT_TMA_PARAMS) {                                                                    \
    latentrt::conv3d_tma<T, BM, BN, S, 4>(ta, tb, bias, y, ws, LRT_CONV_TMA_SHAPE);            \
  }
#define LRT_CONV_DTYPE(T, SUF)                                       \
  LRT_CONV_PACK(T, SUF)                                              \
  LRT_CONV_DIRECT(T, SUF, latentrt::kLayoutChannelsFirst, ncdhw)     \
  LRT_CONV_DIRECT(T, SUF, latentrt::kLayoutChannelsLast, ndhwc)
#define LRT_CONV_TC(T, SUF)                                          \
  LRT_CONV_IGEMM(T, SUF, latentrt::kLayoutChannelsFirst, ncdhw, 64)  \
  LRT_CONV_IGEMM(T, SUF, latentrt::kLayoutChannelsFirst, ncdhw, 128) \
  LRT_CONV_IGEMM(T, SUF, latentrt::kLayoutChannelsLast, ndhwc, 64)   \
  LRT_CONV_IGEMM(T, SUF, latentrt::kLayoutChannelsLast, ndhwc, 128) \
  LRT_CONV_SMALLC(T, SUF, latentrt::kLayoutChannelsFirst, ncdhw, 64) \
  LRT_CONV_SMALLC(T, SUF, latentrt::kLayoutChannelsFirst, ncdhw, 128) \
  LRT_CONV_SMALLC(T, SUF, latentrt::kLayoutChannelsLast, ndhwc, 64)  \
  LRT_CONV_SMALLC(T, SUF, latentrt::kLayoutChannelsLast, ndhwc, 128) \
  LRT_CONV_NARROW(T, SUF)                                            \
  LRT_CONV_WGMMA(T, SUF, 64)                                         \
  LRT_CONV_WGMMA(T, SUF, 96)                                         \
  LRT_CONV_WGMMA(T, SUF, 128)                                        \
  LRT_CONV_WGMMA_DEEP(T, SUF, 6)                                     \
  LRT_CONV_TMA(T, SUF, 128, 128, 3, 2)                               \
  LRT_CONV_TMA(T, SUF, 128, 192, 5, 1)                               \
  LRT_CONV_TMA(T, SUF, 128, 256, 4, 1)                               \
  LRT_CONV_TMA(T, SUF, 256, 128, 4, 1)                               \
  LRT_CONV_TMA_C4(T, SUF, 128, 192, 5)                               \
  LRT_CONV_TMA_C4(T, SUF, 128, 256, 4)

extern "C" __global__ void __launch_bounds__(256)
    latentrt_transpose_2b(const unsigned short* in, unsigned short* out, int R, int C) {
  latentrt::transpose_2b<false>(in, out, R, C);
}
extern "C" __global__ void __launch_bounds__(256)
    latentrt_transpose_2b_pairs(const unsigned short* in, unsigned short* out, int R, int C) {
  latentrt::transpose_2b<true>(in, out, R, C);
}
LRT_CONV_DTYPE(float, f32)
LRT_CONV_DTYPE(__half, f16)
LRT_CONV_DTYPE(__nv_bfloat16, bf16)
LRT_CONV_TC(__half, f16)
LRT_CONV_TC(__nv_bfloat16, bf16)

#ifndef __CUDACC_RTC__

#include <algorithm>

namespace {

// Stream-K's workspace bound on a GPU of `sms` SMs: a partial tile (at most 128 x 256 fp32) and
// a flag for each CTA, at most one per SM.
long long streamk_workspace_bytes(int sms) {
  return (static_cast<long long>(sms) * (128 * 256 + 1) * 4 + 255) / 256 * 256;
}

struct ConvGeometry {
  int Do, Ho, Wo;
  int pt, ph, pw;
};

// Output sizes and front pads; false when the attributes are inconsistent.
bool conv_geometry(int d, int h, int w, int kt, int kh, int kw, const int* pads, const int* strides,
                   const int* dil, int causal, ConvGeometry* g) {
  if (causal < 0 || causal > 2) return false;
  for (int i = 0; i < 3; ++i)
    if (strides[i] <= 0 || dil[i] <= 0 || pads[i] < 0 || pads[i + 3] < 0) return false;
  int t0 = pads[0], t1 = pads[3];
  if (causal != 0) {
    const int front = dil[0] * (kt - 1);
    const bool given_zero = t0 == 0 && t1 == 0;
    const bool given_causal = t0 == front && t1 == 0;
    if (!given_zero && !given_causal) return false;
    t0 = front;
    t1 = 0;
  }
  g->pt = t0;
  g->ph = pads[1];
  g->pw = pads[2];
  g->Do = (d + t0 + t1 - dil[0] * (kt - 1) - 1) / strides[0] + 1;
  g->Ho = (h + pads[1] + pads[4] - dil[1] * (kh - 1) - 1) / strides[1] + 1;
  g->Wo = (w + pads[2] + pads[5] - dil[2] * (kw - 1) - 1) / strides[2] + 1;
  const bool nonneg = d + t0 + t1 - dil[0] * (kt - 1) - 1 >= 0 &&
                      h + pads[1] + pads[4] - dil[1] * (kh - 1) - 1 >= 0 &&
                      w + pads[2] + pads[5] - dil[2] * (kw - 1) - 1 >= 0;
  return nonneg;
}

// The TMA kernel of a dtype suffix for (tile_m, tile_n, cluster size).
#define LRT_TMA_KERNEL(SUF, BM, BN, S, C) \
  reinterpret_cast<void*>(latentrt_conv3d_tma_ndhwc_##SUF##_m##BM##_n##BN##_s##S##C)
#define LRT_TMA_PICK_CL(SUF, C)                                                    \
  if (bn == 256) return LRT_TMA_KERNEL(SUF, 128, 256, 4, C);                       \
  if (bn == 192) return LRT_TMA_KERNEL(SUF, 128, 192, 5, C);                       \
  return bm == 256 ? LRT_TMA_KERNEL(SUF, 256, 128, 4, C) : LRT_TMA_KERNEL(SUF, 128, 128, 3, C);
#define LRT_TMA_PICK(SUF)                          \
  static void* tma(int bm, int bn, int cl) {       \
    if (cl == 2) {                                 \
      LRT_TMA_PICK_CL(SUF, _c2)                    \
    }                                              \
    LRT_TMA_PICK_CL(SUF, )                         \
  }

// The small-Cin kernel of a dtype suffix for (layout, tile_n).
#define LRT_SMALLC_KERNEL(L, SUF, BN) reinterpret_cast<void*>(latentrt_conv3d_smallc_##L##_##SUF##_n##BN)
#define LRT_SMALLC_PICK(SUF)                                                                 \
  static void* smallc(int layout, int bn) {                                                  \
    if (layout) return bn == 128 ? LRT_SMALLC_KERNEL(ndhwc, SUF, 128) : LRT_SMALLC_KERNEL(ndhwc, SUF, 64); \
    return bn == 128 ? LRT_SMALLC_KERNEL(ncdhw, SUF, 128) : LRT_SMALLC_KERNEL(ncdhw, SUF, 64); \
  }

template <typename T>
struct ConvKernels;
template <>
struct ConvKernels<float> {
  static constexpr bool tc = false;
  static void* direct(int layout) {
    return layout ? reinterpret_cast<void*>(latentrt_conv3d_direct_ndhwc_f32)
                  : reinterpret_cast<void*>(latentrt_conv3d_direct_ncdhw_f32);
  }
  static void* igemm(int, int) { return nullptr; }
  static void* smallc(int, int) { return nullptr; }
  static void* narrow() { return nullptr; }
  static void* wgmma(int, bool) { return nullptr; }
  static void* tma(int, int, int) { return nullptr; }
  static void* pack() { return reinterpret_cast<void*>(latentrt_conv3d_pack_f32); }
};
template <>
struct ConvKernels<__half> {
  static constexpr bool tc = true;
  static void* direct(int layout) {
    return layout ? reinterpret_cast<void*>(latentrt_conv3d_direct_ndhwc_f16)
                  : reinterpret_cast<void*>(latentrt_conv3d_direct_ncdhw_f16);
  }
  static void* igemm(int layout, int bm) {
    if (layout) return bm == 128 ? reinterpret_cast<void*>(latentrt_conv3d_igemm_ndhwc_f16_m128)
                                 : reinterpret_cast<void*>(latentrt_conv3d_igemm_ndhwc_f16_m64);
    return bm == 128 ? reinterpret_cast<void*>(latentrt_conv3d_igemm_ncdhw_f16_m128)
                     : reinterpret_cast<void*>(latentrt_conv3d_igemm_ncdhw_f16_m64);
  }
  LRT_SMALLC_PICK(f16)
  static void* narrow() { return reinterpret_cast<void*>(latentrt_conv3d_narrow_ndhwc_f16); }
  static void* wgmma(int bn, bool deep) {
    if (deep) return reinterpret_cast<void*>(latentrt_conv3d_wgmma_ndhwc_f16_n128_s6);
    return bn == 128 ? reinterpret_cast<void*>(latentrt_conv3d_wgmma_ndhwc_f16_n128)
           : bn == 96 ? reinterpret_cast<void*>(latentrt_conv3d_wgmma_ndhwc_f16_n96)
                      : reinterpret_cast<void*>(latentrt_conv3d_wgmma_ndhwc_f16_n64);
  }
  LRT_TMA_PICK(f16)
  static void* pack() { return reinterpret_cast<void*>(latentrt_conv3d_pack_f16); }
};
template <>
struct ConvKernels<__nv_bfloat16> {
  static constexpr bool tc = true;
  static void* direct(int layout) {
    return layout ? reinterpret_cast<void*>(latentrt_conv3d_direct_ndhwc_bf16)
                  : reinterpret_cast<void*>(latentrt_conv3d_direct_ncdhw_bf16);
  }
  static void* igemm(int layout, int bm) {
    if (layout) return bm == 128 ? reinterpret_cast<void*>(latentrt_conv3d_igemm_ndhwc_bf16_m128)
                                 : reinterpret_cast<void*>(latentrt_conv3d_igemm_ndhwc_bf16_m64);
    return bm == 128 ? reinterpret_cast<void*>(latentrt_conv3d_igemm_ncdhw_bf16_m128)
                     : reinterpret_cast<void*>(latentrt_conv3d_igemm_ncdhw_bf16_m64);
  }
  LRT_SMALLC_PICK(bf16)
  static void* narrow() { return reinterpret_cast<void*>(latentrt_conv3d_narrow_ndhwc_bf16); }
  static void* wgmma(int bn, bool deep) {
    if (deep) return reinterpret_cast<void*>(latentrt_conv3d_wgmma_ndhwc_bf16_n128_s6);
    return bn == 128 ? reinterpret_cast<void*>(latentrt_conv3d_wgmma_ndhwc_bf16_n128)
           : bn == 96 ? reinterpret_cast<void*>(latentrt_conv3d_wgmma_ndhwc_bf16_n96)
                      : reinterpret_cast<void*>(latentrt_conv3d_wgmma_ndhwc_bf16_n64);
  }
  LRT_TMA_PICK(bf16)
  static void* pack() { return reinterpret_cast<void*>(latentrt_conv3d_pack_bf16); }
};

// The BH x BW boxes covering an Ho x Wo frame with the fewest idle positions, a tile of bm
// positions being 1 << sub_log2 boxes (sub_log2 <= max_sub_log2); on a tie the fewest boxes, then
// the widest (the TMA and the small-Cin kernels' tiles).
void tma_box(int ho, int wo, int bm, int max_sub_log2, int* sub_log2, int* bw_log2, int* tiles_h,
             int* tiles_w) {
  long long best = -1;
  for (int sub = 0; sub <= max_sub_log2; ++sub) {
    const int pb = bm >> sub;
    for (int lg = (pb == 256 ? 8 : pb == 128 ? 7 : pb == 64 ? 6 : 5); lg >= 3; --lg) {
      const int bw = 1 << lg, bh = pb >> lg;
      const int th = (ho + bh - 1) / bh, tw = (wo + bw - 1) / bw;
      const long long area = static_cast<long long>(th) * bh * tw * bw;
      if (best < 0 || area < best) {
        best = area;
        *sub_log2 = sub;
        *bw_log2 = lg;
        *tiles_h = th;
        *tiles_w = tw;
      }
    }
  }
}

// Shared memory of a small-Cin CTA, at most: two CTAs per SM (228 KB, 1 KB reserved per CTA).
constexpr int kSmallcMaxSmem = 113 * 1024;

#if defined(LATENTRT_SM90A)
// Output-channel tile of the wgmma kernel. 128 wherever Cout exceeds 64 (on the H100 it beat 64 at
// every video-VAE shape measured, by 1.03-1.9x), except 96 where 96 divides Cout and 128 does not
// (no idle tile columns).
int wgmma_tile_n(int cout) {
  if (cout % 96 == 0 && cout % 128 != 0) return 96;
  return cout > 64 ? 128 : 64;
}

// The deep pipeline (6 stages, one CTA per SM) where 128-wide tiles leave at most one CTA per SM
// (H100, 1x384x5x32x32 fp16: 0.124 vs 0.129 ms; on grids of two or more CTAs per SM it is slower).
bool wgmma_deep(long long ctas, int bn, int sms) { return bn == 128 && ctas <= sms; }

// ---- TMA kernel: tensor maps and plan (mirror conv3d_tma_plan in plugins/harness.py) ----
static_assert(sizeof(CUtensorMap) == sizeof(latentrt::TmaDesc), "CUtensorMap is 128 bytes");

// A dense 16-bit tensor (dims innermost first) in box tiles, 128-byte swizzled, zero fill.
bool encode_tiled(CUtensorMap* map, const void* ptr, int rank, const cuuint64_t* dims,
                  const cuuint32_t* box) {
  const latentrt::EncodeTiled fn = latentrt::encode_tiled_fn();
  if (fn == nullptr) return false;
  cuuint64_t strides[4];
  cuuint64_t acc = 2;
  for (int i = 0; i + 1 < rank; ++i) strides[i] = acc *= dims[i];
  const cuuint32_t ones[5] = {1, 1, 1, 1, 1};
  return fn(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, static_cast<cuuint32_t>(rank),
            const_cast<void*>(ptr), dims, strides, box, ones, CU_TENSOR_MAP_INTERLEAVE_NONE,
            CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

using EncodeIm2col = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                  const cuuint64_t*, const cuuint64_t*, const int*, const int*,
                                  cuuint32_t, cuuint32_t, const cuuint32_t*, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion,
                                  CUtensorMapFloatOOBfill);

// A dense 16-bit NDHWC tensor (dims C, W, H, D, N) in im2col mode: loads of `pixels` consecutive
// positions of the bounding box (corners W, H, D), `channels` each, 128-byte swizzled, zero fill.
bool encode_im2col(CUtensorMap* map, const void* ptr, const cuuint64_t* dims, const int* lower,
                   const int* upper, int channels, int pixels) {
  static const EncodeIm2col fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeIm2col", &p, 12000,
                                                           cudaEnableDefault, &q);
    return e == cudaSuccess && q == cudaDriverEntryPointSuccess ? reinterpret_cast<EncodeIm2col>(p)
                                                                : nullptr;
  }();
  if (fn == nullptr) return false;
  cuuint64_t strides[4];
  cuuint64_t acc = 2;
  for (int i = 0; i < 4; ++i) strides[i] = acc *= dims[i];
  const cuuint32_t ones[5] = {1, 1, 1, 1, 1};
  return fn(map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 5, const_cast<void*>(ptr), dims, strides, lower,
            upper, static_cast<cuuint32_t>(channels), static_cast<cuuint32_t>(pixels), ones,
            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
            CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Whether TMA's im2col mode loads the TMA kernel's input tiles: zero padding (not replicate),
// bounding-box corners in [-16, 15] (pads <= 15) and at most 16 taps a dimension. Mirrors
// tma_im2col_supported in plugins/harness.py; `pads` are the effective ones (causal applied).
bool tma_im2col_supported(int kt, int kh, int kw, const int* pads, int causal) {
  const int p = std::max({pads[0], pads[1], pads[2], pads[3], pads[4], pads[5]});
  return causal != 2 && p <= 15 && std::max({kt, kh, kw}) <= 16;
}

// The TMA kernel's launch, as conv3d_tma_plan in plugins/harness.py: the variant with the fewest
// idle output channels (n256 before n192 before m256), or 128 x 128 tiles for a 128-channel grid
// under one wave. With stream-K allowed, 192/256-channel tiles run in clusters of two with
// stream-K over all units unless the last wave is at least 90% full; 128-channel tiles one CTA
// per tile, stream-K for a last wave under a quarter of the SMs after full ones. `resident`
// bounds the stream-K clusters (they wait on each other).
struct TmaLaunchPlan {
  int bm, bn, bw_log2, sub_log2, tiles_h, tiles_w, cluster;
  bool im2col;                          // A by im2col loads (tiles of bm consecutive positions)
  int tiles_m;                          // position tiles, rounded up to the cluster
  int dp_units, sk_units, sk_ctas, sk_iters;  // units of `cluster` tiles; sk_ctas: clusters
};
TmaLaunchPlan tma_launch_plan(int n, int cout, int frames, int ho, int wo, int sms, int nk,
                              bool streamk, int resident, bool im2col_ok) {
  const int pad256 = (cout + 255) / 256 * 256, pad192 = (cout + 191) / 192 * 192;
  const int pad128 = (cout + 127) / 128 * 128;
  TmaLaunchPlan p{};
  p.bn = pad256 <= pad192 && pad256 <= pad128 ? 256 : pad192 <= pad128 ? 192 : 128;
  p.bm = p.bn == 128 ? 256 : 128;
  tma_box(ho, wo, 128, 2, &p.sub_log2, &p.bw_log2, &p.tiles_h, &p.tiles_w);
  const long long m128 =
      (static_cast<long long>(n) * frames * p.tiles_h * p.tiles_w + (1 << p.sub_log2) - 1) >>
      p.sub_log2;
  if (p.bn == 128 && m128 * 128 / p.bm * ((cout + 127) / 128) < sms &&
      m128 * ((cout + 127) / 128) <= sms) {
    p.bm = 128;  // a 128-channel grid under one wave: 128 x 128 tiles, two CTAs per SM
    p.bn = 128;
  }
  tma_box(ho, wo, p.bm, p.bm == 256 ? 3 : 2, &p.sub_log2, &p.bw_log2, &p.tiles_h, &p.tiles_w);
  // im2col loads where the boxes would leave idle positions or split a tile (H100, 60 x 104
  // frames: 1.14-1.22x over four 4 x 8 boxes; frames boxes tile exactly ran 0-4% faster in boxes).
  p.im2col = im2col_ok && (p.sub_log2 > 0 || static_cast<long long>(p.tiles_h) * p.tiles_w *
                                                     (p.bm >> p.sub_log2) !=
                                                 static_cast<long long>(ho) * wo);
  if (p.im2col) p.sub_log2 = p.bw_log2 = 0, p.tiles_h = p.tiles_w = 1;
  const int cl = p.cluster = p.bn > 128 && streamk ? 2 : 1;
  const long long positions = static_cast<long long>(n) * frames * ho * wo;
  const long long boxes = p.im2col ? (positions + p.bm - 1) / p.bm
                                   : static_cast<long long>(n) * frames * p.tiles_h * p.tiles_w;
  const long long tiles_m = (((boxes + (1 << p.sub_log2) - 1) >> p.sub_log2) + cl - 1) / cl * cl;
  const long long units = tiles_m * ((cout + p.bn - 1) / p.bn) / cl;
  p.tiles_m = static_cast<int>(tiles_m < 0x7fffffffLL ? tiles_m : 0x7fffffffLL);
  const long long slots = sms / cl, rem = units % slots;
  long long sk = 0;
  if (streamk && cl == 2)
    sk = rem > 0 && 10 * rem < 9 * slots ? units : 0;
  else if (streamk)
    sk = units > slots && 4 * rem <= slots ? rem : 0;
  const long long ctas = std::min(std::min(std::max(resident, 1) * 1LL, slots), sk * nk);
  const long long iters = sk ? (sk * nk + ctas - 1) / ctas : 0;
  p.dp_units = static_cast<int>(std::min(units - sk, 0x7fffffffLL));
  p.sk_units = static_cast<int>(sk);
  p.sk_iters = static_cast<int>(iters);
  p.sk_ctas = sk ? static_cast<int>((sk * nk + iters - 1) / iters) : 0;
  return p;
}

// The TMA kernel: one cluster per unit, then stream-K where the plan has it and `ws` holds
// ws_bytes >= streamk_workspace_bytes(sms) (otherwise one CTA per tile).
template <typename T>
int launch_conv3d_tma(const T* x, const T* wp, const T* bias, T* y, int n, int cin, int d, int h,
                      int w, int cout, int kt, int kh, int kw, const ConvGeometry& g,
                      int replicate, bool im2col_ok, int sms, void* ws, long long ws_bytes,
                      cudaStream_t stream) {
  const int nk = kt * kh * kw * (cin / 64);
  const bool streamk = ws != nullptr && ws_bytes >= streamk_workspace_bytes(sms);
  TmaLaunchPlan plan =
      tma_launch_plan(n, cout, g.Do, g.Ho, g.Wo, sms, nk, streamk, sms, im2col_ok);
  const int bm = plan.bm, bn = plan.bn, cl = plan.cluster;
  void* k = ConvKernels<T>::tma(bm, bn, cl);
  const int smem = bn == 256   ? latentrt::TmaTiles<128, 256, 4>::SMEM_BYTES
                   : bn == 192 ? latentrt::TmaTiles<128, 192, 5>::SMEM_BYTES
                   : bm == 256 ? latentrt::TmaTiles<256, 128, 4>::SMEM_BYTES
                               : latentrt::TmaTiles<128, 128, 3>::SMEM_BYTES;
  const int threads = latentrt::TmaTiles<128, 128, 3>::THREADS;
  cudaError_t err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  if (plan.sk_units > 0 && cl > 1) {  // every stream-K cluster must be resident at once
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(cl);
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem;
    int resident = 0;
    err = cudaOccupancyMaxActiveClusters(&resident, k, &config);
    if (err != cudaSuccess) return err;
    plan = tma_launch_plan(n, cout, g.Do, g.Ho, g.Wo, sms, nk, streamk, resident, im2col_ok);
  }
  const long long units = static_cast<long long>(plan.dp_units) + plan.sk_units;
  const long long boxes = static_cast<long long>(plan.tiles_m) << plan.sub_log2;
  if (units * cl > 0x7fffffffLL || boxes >= 0x7fffffffLL) return cudaErrorInvalidValue;
  CUtensorMap ta, tb;
  const cuuint64_t adims[5] = {static_cast<cuuint64_t>(cin), static_cast<cuuint64_t>(w),
                               static_cast<cuuint64_t>(h), static_cast<cuuint64_t>(d),
                               static_cast<cuuint64_t>(n)};
  const cuuint32_t abox[5] = {64, 1u << plan.bw_log2,
                              (static_cast<cuuint32_t>(bm) >> plan.sub_log2) >> plan.bw_log2, 1, 1};
  const cuuint64_t bdims[2] = {static_cast<cuuint64_t>(kt) * kh * kw * cin,
                               static_cast<cuuint64_t>(cout)};
  const cuuint32_t bbox[2] = {64, static_cast<cuuint32_t>(bn / cl)};  // a cluster shares B
  // im2col: the bounding box of tap (0, 0, 0)'s positions, from the front pads to the back ones
  const int lower[3] = {-g.pw, -g.ph, -g.pt};
  const int upper[3] = {g.Wo - w - g.pw, g.Ho - h - g.ph, g.Do - d - g.pt};
  const bool a_ok = plan.im2col ? encode_im2col(&ta, x, adims, lower, upper, 64, bm)
                                : encode_tiled(&ta, x, 5, adims, abox);
  if (!a_ok || !encode_tiled(&tb, wp, 2, bdims, bbox)) return cudaErrorInvalidValue;
  float* wsf = nullptr;
  int N = n, Cin = cin, Cout = cout, kT = kt, kH = kh, kW = kw, Do = g.Do, Ho = g.Ho, Wo = g.Wo;
  int pt = g.pt, ph = g.ph, pw = g.pw, rep = replicate, bw_log2 = plan.bw_log2;
  int sub_log2 = plan.sub_log2;
  int tiles_h = plan.tiles_h, tiles_w = plan.tiles_w, tm = plan.tiles_m;
  int tile0 = 0, count = plan.dp_units, iters = nk, im2col = plan.im2col ? 1 : 0;
  void* args[] = {&ta,    &tb,      &bias,    &y,        &wsf, &N,     &Cin,  &Cout,
                  &kT,    &kH,      &kW,      &Do,       &Ho,  &Wo,    &pt,   &ph,
                  &pw,    &rep,     &bw_log2, &sub_log2, &tiles_h, &tiles_w, &tm, &tile0,
                  &count, &iters,   &im2col};
  if (plan.dp_units > 0) {
    err = cudaLaunchKernel(k, dim3(static_cast<unsigned>(plan.dp_units) * cl), dim3(threads), args,
                           smem, stream);
    if (err != cudaSuccess) return err;
  }
  if (plan.sk_units > 0) {
    const long long ctas = static_cast<long long>(plan.sk_ctas) * cl;
    wsf = static_cast<float*>(ws);
    err = cudaMemsetAsync(wsf + ctas * bm * bn, 0, ctas * sizeof(int), stream);  // the flags
    if (err != cudaSuccess) return err;
    tile0 = plan.dp_units;
    count = plan.sk_units;
    iters = plan.sk_iters;
    err = cudaLaunchKernel(k, dim3(static_cast<unsigned>(ctas)), dim3(threads), args, smem, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaGetLastError();
}
#endif

// The small-Cin kernel's launch, as conv3d_smallc_plan in plugins/harness.py: a 128-position
// box of one output frame x 64 or 128 channels, two CTAs per SM looping over the tiles; false
// where it does not apply (K padded past 256, or shared memory past `smem_limit`).
struct SmallcPlan {
  int bn, bw_log2, tiles_h, tiles_w, kp, smem;
  unsigned grid_x, grid_y;
};
template <int BN>
int smallc_smem(int kp, int halo) {
  return latentrt::SmallcTiles<BN>::smem_bytes(kp, halo);
}
bool smallc_plan(int n, int cin, int cout, int kt, int kh, int kw, const int* strides,
                 const int* dil, const ConvGeometry& g, int sms, int smem_limit, SmallcPlan* p) {
  p->kp = (kt * kh * kw * cin + 15) / 16 * 16;
  if (p->kp > latentrt::SmallcTiles<128>::MAX_K) return false;
  int one_box = 0;
  tma_box(g.Ho, g.Wo, 128, 0, &one_box, &p->bw_log2, &p->tiles_h, &p->tiles_w);
  const latentrt::SmallcHalo hl(kt, kh, kw, dil[0], dil[1], dil[2], strides[1], strides[2],
                                128 >> p->bw_log2, 1 << p->bw_log2);
  const long long halo = static_cast<long long>(hl.t) * hl.h * hl.w * cin;
  if (halo > 0x7fffffffLL / 4) return false;
  p->bn = cout <= 64 ? 64 : 128;
  p->smem = p->bn == 64 ? smallc_smem<64>(p->kp, static_cast<int>(halo))
                        : smallc_smem<128>(p->kp, static_cast<int>(halo));
  if (p->smem > std::min(smem_limit, kSmallcMaxSmem)) return false;
  p->grid_y = static_cast<unsigned>((cout + p->bn - 1) / p->bn);
  const long long tiles = static_cast<long long>(n) * g.Do * p->tiles_h * p->tiles_w;
  p->grid_x = static_cast<unsigned>(
      std::min(tiles, std::max(1LL, 2LL * sms / static_cast<long long>(p->grid_y))));
  return true;
}

// The narrow-output kernel's launch, as conv3d_narrow_plan in plugins/harness.py: channels-last,
// Cin % 8 == 0, Cout <= 16; Cin in chunks of 32, 16 or 8 channels, the widest whose halo and
// weight slice fit two CTAs per SM (and `smem_limit`) and whose reduction (taps x chunk) is
// whole k16 steps; false where none does.
// More boxes than two CTAs per SM hold, in a count that is not a multiple of them, are shared
// out by stream-K over (box, chunk) units: `ctas` = 2 * sms CTAs and a workspace of
// narrow_workspace_bytes(ctas); otherwise `ctas` = boxes, one each.
struct NarrowPlan {
  int bw_log2, tiles_h, tiles_w, cc, smem;
  long long tiles, ctas;
};
long long narrow_workspace_bytes(long long ctas) { return ctas * (2048 + 1) * 4; }
bool narrow_plan(int n, int cin, int cout, int kt, int kh, int kw, const int* strides,
                 const int* dil, const ConvGeometry& g, int sms, int smem_limit, NarrowPlan* p) {
  if (cin % 8 != 0 || cout > latentrt::NarrowTiles::BM) return false;
  int one_box = 0;
  tma_box(g.Ho, g.Wo, 128, 0, &one_box, &p->bw_log2, &p->tiles_h, &p->tiles_w);
  const latentrt::SmallcHalo hl(kt, kh, kw, dil[0], dil[1], dil[2], strides[1], strides[2],
                                128 >> p->bw_log2, 1 << p->bw_log2);
  const long long pixels = static_cast<long long>(hl.t) * hl.h * hl.w;
  if (pixels > (1 << 20)) return false;
  p->tiles = static_cast<long long>(n) * g.Do * p->tiles_h * p->tiles_w;
  for (int cc = 32; cc >= 8; cc /= 2) {
    if (cin % cc != 0 || kt * kh * kw * cc % 16 != 0) continue;
    p->cc = cc;
    p->smem = latentrt::NarrowTiles::smem_bytes(kt * kh * kw, cc, static_cast<int>(pixels));
    if (p->smem <= std::min(smem_limit, kSmallcMaxSmem) && p->tiles <= 0x7fffffffLL) {
      const long long slots = 2LL * sms;
      p->ctas = p->tiles > slots && p->tiles % slots != 0 ? slots : p->tiles;
      return true;
    }
  }
  return false;
}

long long align256(long long bytes) { return (bytes + 255) / 256 * 256; }

// Workspace bytes for running a channels-first Conv3d of 16-bit elements as layout change, a
// channels-last kernel and layout change back (the input's and the output's channels-last
// copies, 256-byte aligned), or 0 where the channels-first kernels run it: the channels-last
// side must have a kernel the channels-first side lacks, Hopper's wgmma/TMA kernels (`hopper`:
// an sm_90a build on compute capability 9.0; Cout % 8 == 0) or the narrow-output one, and the
// small-Cin kernel must not take the shape. Mirrors layout_change_bytes in plugins/harness.py.
long long layout_change_bytes(int elem_bytes, int n, int cin, int d, int h, int w, int cout,
                              int kt, int kh, int kw, const int* strides, const int* dil,
                              const ConvGeometry& g, int sms, int optin, bool hopper) {
  const long long dhw = static_cast<long long>(d) * h * w;
  const long long P = static_cast<long long>(g.Do) * g.Ho * g.Wo;
  if (elem_bytes != 2 || cin % 8 != 0 || dhw > 0x7fffffffLL || P > 0x7fffffffLL) return 0;
  SmallcPlan sp{};
  if (smallc_plan(n, cin, cout, kt, kh, kw, strides, dil, g, sms, optin, &sp)) return 0;
  NarrowPlan np{};
  if (!(hopper && cout % 8 == 0) &&
      !narrow_plan(n, cin, cout, kt, kh, kw, strides, dil, g, sms, optin, &np))
    return 0;
  return align256(2LL * n * cin * dhw) + align256(2LL * n * cout * P);
}

// Whether this build's Hopper kernels run on device `dev` (an sm_90a build on compute capability
// 9.0), its SM count and opt-in shared memory per block.
cudaError_t device_facts(int dev, bool* hopper, int* sms, int* optin) {
  int major = 0, minor = 0;
  cudaError_t err = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
#if defined(LATENTRT_SM90A)
  *hopper = major == 9 && minor == 0;
#else
  *hopper = false;
#endif
  return err;
}

// [batch, R, C] -> [batch, C, R] for 16-bit elements (latentrt_transpose_2b*).
cudaError_t launch_transpose_2b(const void* in, void* out, int batch, int R, int C,
                                cudaStream_t stream) {
  const auto addr = [](const void* p) { return reinterpret_cast<unsigned long long>(p); };
  const bool pairs = R % 2 == 0 && C % 2 == 0 && addr(in) % 4 == 0 && addr(out) % 4 == 0;
  const long long tiles = (R + 63LL) / 64 * ((C + 63LL) / 64);
  if (tiles > 0x7fffffffLL || batch > 65535) return cudaErrorInvalidValue;
  void* k = pairs ? reinterpret_cast<void*>(latentrt_transpose_2b_pairs)
                  : reinterpret_cast<void*>(latentrt_transpose_2b);
  const void* src = in;
  void* args[] = {&src, &out, &R, &C};
  const cudaError_t err = cudaLaunchKernel(k, dim3(static_cast<unsigned>(tiles), batch), dim3(256),
                                           args, 0, stream);
  return err != cudaSuccess ? err : cudaGetLastError();
}

int conv_ci_chunk(int cin, int taps) {
  int chunk = 16384 / (taps * 32);
  if (chunk >= 8) chunk -= chunk % 8;
  if (chunk < 1) chunk = 1;
  return chunk < cin ? chunk : cin;
}

template <typename T>
int launch_conv3d(const T* x, const T* wp, const T* bias, T* y, int n, int cin, int d, int h,
                  int w, int cout, int kt, int kh, int kw, const int* pads, const int* strides,
                  const int* dilations, int causal, int layout, void* ws, long long ws_bytes,
                  cudaStream_t stream) {
  if (n <= 0 || cin <= 0 || d <= 0 || h <= 0 || w <= 0 || cout <= 0 || kt <= 0 || kh <= 0 ||
      kw <= 0 || n > 65535 || (layout != 0 && layout != 1))
    return cudaErrorInvalidValue;
  ConvGeometry g{};
  if (!conv_geometry(d, h, w, kt, kh, kw, pads, strides, dilations, causal, &g))
    return cudaErrorInvalidValue;
  const long long P = static_cast<long long>(g.Do) * g.Ho * g.Wo;
  const int taps = kt * kh * kw;
  if (P > 0x7fffffffLL || taps > 512) return cudaErrorInvalidValue;
  int dev = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  const auto addr = [](const void* p) { return reinterpret_cast<unsigned long long>(p); };
  if (layout == 0 && ws != nullptr && addr(ws) % 256 == 0) {
    // Channels-first input where a channels-last kernel is the faster one: change the layout in
    // the workspace (x's copy, y's copy, then what stream-K may use), run, change it back.
    const long long xb = align256(static_cast<long long>(sizeof(T)) * n * cin * d * h * w);
    bool hopper = false;
    int optin = 0;
    err = device_facts(dev, &hopper, &sms, &optin);
    if (err != cudaSuccess) return err;
    const long long lb = layout_change_bytes(sizeof(T), n, cin, d, h, w, cout, kt, kh, kw, strides,
                                             dilations, g, sms, optin, hopper);
    if (lb > 0 && ws_bytes >= lb) {
      T* xl = static_cast<T*>(ws);
      T* yl = reinterpret_cast<T*>(static_cast<char*>(ws) + xb);
      err = launch_transpose_2b(x, xl, n, cin, d * h * w, stream);
      if (err == cudaSuccess)
        err = static_cast<cudaError_t>(launch_conv3d(
            xl, wp, bias, yl, n, cin, d, h, w, cout, kt, kh, kw, pads, strides, dilations, causal,
            1, static_cast<char*>(ws) + lb, ws_bytes - lb, stream));
      if (err == cudaSuccess) err = launch_transpose_2b(yl, y, n, static_cast<int>(P), cout, stream);
      return err;
    }
  }
  int Cin = cin, D = d, H = h, W = w, Cout = cout, kT = kt, kH = kh, kW = kw;
  int Do = g.Do, Ho = g.Ho, Wo = g.Wo, st = strides[0], sh = strides[1], sw = strides[2];
  int dt = dilations[0], dh = dilations[1], dw = dilations[2], pt = g.pt, ph = g.ph, pw = g.pw;
  int replicate = causal == 2 ? 1 : 0;
  const bool aligned = addr(x) % 16 == 0 && addr(wp) % 16 == 0;
#if defined(LATENTRT_SM90A)
  // Built for sm_90a (build_shared_library(arch="sm_90a")): Hopper's wgmma kernel where it runs.
  int major = 0, minor = 0;
  err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (err != cudaSuccess) return err;
  const bool hopper_ok = ConvKernels<T>::tc && layout == 1 && major == 9 && minor == 0 &&
                        cin % 8 == 0 && cout % 8 == 0 && aligned && addr(y) % 16 == 0;
  if (hopper_ok && cin % 64 == 0 && st == 1 && sh == 1 && sw == 1 && dt == 1 && dh == 1 &&
      dw == 1) {
    const int eff[6] = {g.pt, g.ph, g.pw, causal != 0 ? 0 : pads[3], pads[4], pads[5]};
    return launch_conv3d_tma(x, wp, bias, y, n, cin, d, h, w, cout, kt, kh, kw, g, replicate,
                             tma_im2col_supported(kt, kh, kw, eff, causal), sms,
                             addr(ws) % 16 == 0 ? ws : nullptr, ws_bytes, stream);
  }
  if (hopper_ok) {
    const int bn = wgmma_tile_n(cout);
    const bool deep = wgmma_deep((P + 127) / 128 * ((cout + bn - 1) / bn) * n, bn, sms);
    void* k = ConvKernels<T>::wgmma(bn, deep);
    const int smem = deep       ? latentrt::WgmmaTiles<128, 6>::SMEM_BYTES
                     : bn == 128 ? latentrt::WgmmaTiles<128>::SMEM_BYTES
                     : bn == 96 ? latentrt::WgmmaTiles<96>::SMEM_BYTES
                                : latentrt::WgmmaTiles<64>::SMEM_BYTES;
    err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    void* args[] = {&x,  &wp, &bias, &y,  &Cin, &D,  &H,  &W,  &Cout, &kT, &kH, &kW, &Do,
                    &Ho, &Wo, &st,   &sh, &sw,  &dt, &dh, &dw, &pt,   &ph, &pw, &replicate};
    const dim3 grid(static_cast<unsigned>((P + 127) / 128),
                    static_cast<unsigned>((cout + bn - 1) / bn), static_cast<unsigned>(n));
    err = cudaLaunchKernel(k, grid, dim3(256), args, smem, stream);
    return err != cudaSuccess ? err : cudaGetLastError();
  }
#else
  (void)ws;  // only the Hopper TMA kernel uses a workspace
  (void)ws_bytes;
#endif
  const bool use_tc = ConvKernels<T>::tc && cin % 32 == 0 && cin >= 64 && cout >= 64 && aligned;
  if (use_tc) {
    const long long tiles_n = (P + 127) / 128;
    const long long ctas128 = tiles_n * ((cout + 127) / 128) * n;
    const int bm = cout >= 128 && ctas128 >= 2LL * sms ? 128 : 64;
    void* k = ConvKernels<T>::igemm(layout, bm);
    const size_t smem =
        sizeof(T) * (layout ? (bm == 128 ? latentrt::IgemmTiles<1, 128>::SMEM_ELEMS
                                         : latentrt::IgemmTiles<1, 64>::SMEM_ELEMS)
                            : (bm == 128 ? latentrt::IgemmTiles<0, 128>::SMEM_ELEMS
                                         : latentrt::IgemmTiles<0, 64>::SMEM_ELEMS));
    err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return err;
    void* args[] = {&x,  &wp, &bias, &y,  &Cin, &D,  &H,  &W,  &Cout, &kT, &kH, &kW, &Do,
                    &Ho, &Wo, &st,   &sh, &sw,  &dt, &dh, &dw, &pt,   &ph, &pw, &replicate};
    const dim3 grid(static_cast<unsigned>(tiles_n), static_cast<unsigned>((cout + bm - 1) / bm),
                    static_cast<unsigned>(n));
    err = cudaLaunchKernel(k, grid, dim3(256), args, smem, stream);
    return err != cudaSuccess ? err : cudaGetLastError();
  }
  SmallcPlan sp{};
  int optin = 0;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  if (ConvKernels<T>::tc &&
      smallc_plan(n, cin, cout, kt, kh, kw, strides, dilations, g, sms, optin, &sp)) {
    void* k = ConvKernels<T>::smallc(layout, sp.bn);
    err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, sp.smem);
    if (err != cudaSuccess) return err;
    int N = n, bw_log2 = sp.bw_log2, tiles_h = sp.tiles_h, tiles_w = sp.tiles_w, kp = sp.kp;
    void* args[] = {&x,  &wp, &bias, &y,  &Cin, &D,  &H,  &W,  &Cout,      &kT,      &kH,
                    &kW, &Do, &Ho,   &Wo, &st,  &sh, &sw, &dt, &dh,        &dw,      &pt,
                    &ph, &pw, &replicate, &N,   &bw_log2,     &tiles_h,    &tiles_w, &kp};
    err = cudaLaunchKernel(k, dim3(sp.grid_x, sp.grid_y), dim3(256), args, sp.smem, stream);
    return err != cudaSuccess ? err : cudaGetLastError();
  }
  NarrowPlan np{};
  if (ConvKernels<T>::tc && layout == 1 && aligned &&
      narrow_plan(n, cin, cout, kt, kh, kw, strides, dilations, g, sms, optin, &np)) {
    void* k = ConvKernels<T>::narrow();
    err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, np.smem);
    if (err != cudaSuccess) return err;
    int N = n, bw_log2 = np.bw_log2, tiles_h = np.tiles_h, tiles_w = np.tiles_w, cc = np.cc;
    // Stream-K where the plan wants it and the workspace holds it; one CTA per box otherwise.
    float* wsf = nullptr;
    long long ctas = np.tiles;
    if (np.ctas < np.tiles && ws != nullptr && addr(ws) % 16 == 0 &&
        ws_bytes >= narrow_workspace_bytes(np.ctas)) {
      ctas = np.ctas;
      wsf = static_cast<float*>(ws);
      err = cudaMemsetAsync(wsf + ctas * 2048, 0, ctas * sizeof(int), stream);  // the flags
      if (err != cudaSuccess) return err;
    }
    void* args[] = {&x,  &wp, &bias, &y,  &Cin, &D,  &H,  &W,  &Cout,      &kT,      &kH,
                    &kW, &Do, &Ho,   &Wo, &st,  &sh, &sw, &dt, &dh,        &dw,      &pt,
                    &ph, &pw, &replicate, &N,   &bw_log2,     &tiles_h,    &tiles_w, &cc, &wsf};
    err = cudaLaunchKernel(k, dim3(static_cast<unsigned>(ctas)), dim3(256), args, np.smem,
                           stream);
    return err != cudaSuccess ? err : cudaGetLastError();
  }
  int ci_chunk = conv_ci_chunk(cin, taps);
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  int vec = layout == 1 && aligned && cin % V == 0 && ci_chunk % V == 0 ? 1 : 0;
  const size_t smem = static_cast<size_t>(ci_chunk) * taps * 8 * sizeof(float);
  void* k = ConvKernels<T>::direct(layout);
  void* args[] = {&x,  &wp, &bias, &y,  &Cin, &D,  &H,  &W,  &Cout, &kT,        &kH,
                  &kW, &Do, &Ho,   &Wo, &st,  &sh, &sw, &dt, &dh,   &dw,        &pt,
                  &ph, &pw, &replicate, &ci_chunk, &vec};
  const dim3 grid(static_cast<unsigned>((P + 127) / 128), static_cast<unsigned>((cout + 7) / 8),
                  static_cast<unsigned>(n));
  err = cudaLaunchKernel(k, grid, dim3(128), args, smem, stream);
  return err != cudaSuccess ? err : cudaGetLastError();
}

template <typename T>
int launch_pack(const T* w, T* wp, int cout, int cin, int taps, cudaStream_t stream) {
  if (cout <= 0 || cin <= 0 || taps <= 0) return cudaErrorInvalidValue;
  int Cout = cout, Cin = cin, Taps = taps;
  void* args[] = {&w, &wp, &Cout, &Cin, &Taps};
  const long long total = static_cast<long long>(cout) * cin * taps;
  const unsigned blocks = static_cast<unsigned>(total / 256 + 1 < 4096 ? total / 256 + 1 : 4096);
  cudaError_t err = cudaLaunchKernel(ConvKernels<T>::pack(), dim3(blocks), dim3(256), args, 0,
                                     stream);
  return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace

// Output spatial sizes (out3 = {Do, Ho, Wo}) for the given attributes; 0 or cudaErrorInvalidValue.
extern "C" int latentrt_conv3d_output_shape(int d, int h, int w, int kt, int kh, int kw,
                                            const int* pads, const int* strides,
                                            const int* dilations, int causal_time, int* out3) {
  ConvGeometry g{};
  if (!conv_geometry(d, h, w, kt, kh, kw, pads, strides, dilations, causal_time, &g))
    return cudaErrorInvalidValue;
  out3[0] = g.Do;
  out3[1] = g.Ho;
  out3[2] = g.Wo;
  return 0;
}

#if defined(LATENTRT_SM90A)
// The TMA kernel's plan for a channels-last shape with K steps nk, stream-K allowed or not,
// `resident` clusters at most and im2col loads allowed or not: out12 = {tile_m, tile_n, log2
// box width, log2 boxes per tile, boxes per frame height, boxes per frame width, cluster size,
// position tiles, one-per-cluster units, stream-K units, stream-K clusters, im2col}. Host-only,
// so CPU tests can hold it against plugins/harness.py.
extern "C" int latentrt_conv3d_tma_plan(int n, int cout, int frames, int ho, int wo, int sms,
                                        int nk, int streamk, int resident, int im2col_ok,
                                        int* out12) {
  if (n <= 0 || cout <= 0 || frames <= 0 || ho <= 0 || wo <= 0 || sms <= 0 || nk <= 0 ||
      resident <= 0)
    return cudaErrorInvalidValue;
  const TmaLaunchPlan p =
      tma_launch_plan(n, cout, frames, ho, wo, sms, nk, streamk != 0, resident, im2col_ok != 0);
  const int v[12] = {p.bm,      p.bn,      p.bw_log2,  p.sub_log2, p.tiles_h, p.tiles_w,
                     p.cluster, p.tiles_m, p.dp_units, p.sk_units, p.sk_ctas,  p.im2col};
  for (int i = 0; i < 12; ++i) out12[i] = v[i];
  return 0;
}
#endif

// The small-Cin kernel's plan (strides[3], dilations[3], output Do, Ho, Wo, at most smem_limit
// bytes of shared memory): out8 = {tile_n, log2 box width, boxes per frame height, boxes per frame
// width, padded K, shared memory bytes, grid x, grid y}; 0, or 1 where the kernel does not apply.
// Host-only, so CPU tests can hold it against plugins/harness.py.
extern "C" int latentrt_conv3d_smallc_plan(int n, int cin, int cout, int kt, int kh, int kw,
                                           const int* strides, const int* dilations, int d_out,
                                           int h_out, int w_out, int sms, int smem_limit,
                                           int* out8) {
  if (n <= 0 || cin <= 0 || cout <= 0 || kt <= 0 || kh <= 0 || kw <= 0 || d_out <= 0 ||
      h_out <= 0 || w_out <= 0 || sms <= 0)
    return cudaErrorInvalidValue;
  const ConvGeometry g{d_out, h_out, w_out, 0, 0, 0};
  SmallcPlan p{};
  if (!smallc_plan(n, cin, cout, kt, kh, kw, strides, dilations, g, sms, smem_limit, &p)) return 1;
  const int v[8] = {p.bn,   p.bw_log2, p.tiles_h, p.tiles_w, p.kp, p.smem,
                    static_cast<int>(p.grid_x), static_cast<int>(p.grid_y)};
  for (int i = 0; i < 8; ++i) out8[i] = v[i];
  return 0;
}

// The narrow-output kernel's plan (as latentrt_conv3d_smallc_plan) on a GPU of `sms` SMs: out6 =
// {log2 box width, boxes per frame height, boxes per frame width, Cin chunk, shared memory
// bytes, grid x (stream-K's CTAs where fewer than the boxes)}; 0, or 1 where the kernel does not
// apply.
extern "C" int latentrt_conv3d_narrow_plan(int n, int cin, int cout, int kt, int kh, int kw,
                                           const int* strides, const int* dilations, int d_out,
                                           int h_out, int w_out, int sms, int smem_limit,
                                           int* out6) {
  if (n <= 0 || cin <= 0 || cout <= 0 || kt <= 0 || kh <= 0 || kw <= 0 || d_out <= 0 ||
      h_out <= 0 || w_out <= 0 || sms <= 0)
    return cudaErrorInvalidValue;
  const ConvGeometry g{d_out, h_out, w_out, 0, 0, 0};
  NarrowPlan p{};
  if (!narrow_plan(n, cin, cout, kt, kh, kw, strides, dilations, g, sms, smem_limit, &p)) return 1;
  const int v[6] = {p.bw_log2, p.tiles_h, p.tiles_w, p.cc, p.smem, static_cast<int>(p.ctas)};
  for (int i = 0; i < 6; ++i) out6[i] = v[i];
  return 0;
}

// Bytes of workspace that let latentrt_conv3d_* use stream-K on the current device (the TMA
// kernel on Hopper, the narrow-output kernel anywhere: narrow_workspace_bytes(2 * sms) is less);
// a launch given less runs one CTA per tile.
extern "C" long long latentrt_conv3d_streamk_workspace_bytes() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return -1;
  return streamk_workspace_bytes(sms);
}

// The channels-last copies' bytes for a channels-first launch (0: it runs channels-first) on a
// GPU of `sms` SMs and `optin` shared memory per block, `hopper` where this build's Hopper
// kernels run; -1 on invalid arguments. Host-only, so CPU tests can hold it against
// plugins/harness.py.
extern "C" long long latentrt_conv3d_layout_change_bytes(int elem_bytes, int n, int cin, int d,
                                                         int h, int w, int cout, int kt, int kh,
                                                         int kw, const int* pads,
                                                         const int* strides, const int* dilations,
                                                         int causal_time, int sms, int optin,
                                                         int hopper) {
  ConvGeometry g{};
  if (n <= 0 || cin <= 0 || cout <= 0 || (elem_bytes != 2 && elem_bytes != 4) ||
      !conv_geometry(d, h, w, kt, kh, kw, pads, strides, dilations, causal_time, &g))
    return -1;
  return layout_change_bytes(elem_bytes, n, cin, d, h, w, cout, kt, kh, kw, strides, dilations, g,
                             sms, optin, hopper != 0);
}

// Bytes of workspace for latentrt_conv3d_* to run this shape its fastest way on the current
// device: the channels-last copies of a channels-first launch (layout 0) where a channels-last
// kernel is faster, then stream-K's part; -1 on invalid arguments or a failed device query.
// elem_bytes: 4 (fp32) or 2 (fp16/bf16). A launch given less skips the layout change, then
// stream-K.
extern "C" long long latentrt_conv3d_workspace_bytes(int elem_bytes, int n, int cin, int d, int h,
                                                     int w, int cout, int kt, int kh, int kw,
                                                     const int* pads, const int* strides,
                                                     const int* dilations, int causal_time,
                                                     int layout) {
  int dev = 0, sms = 0, optin = 0;
  bool hopper = false;
  if ((layout != 0 && layout != 1) || cudaGetDevice(&dev) != cudaSuccess ||
      device_facts(dev, &hopper, &sms, &optin) != cudaSuccess)
    return -1;
  const long long lb = layout == 0 ? latentrt_conv3d_layout_change_bytes(
                                         elem_bytes, n, cin, d, h, w, cout, kt, kh, kw, pads,
                                         strides, dilations, causal_time, sms, optin, hopper)
                                   : 0;
  return lb < 0 ? -1 : lb + streamk_workspace_bytes(sms);
}

// C-linkage launchers for a TensorRT IPluginV3::enqueue: device pointers x (NCDHW for layout 0,
// NDHWC for layout 1), packed weights [Cout, kT, kH, kW, Cin], bias [Cout] or null, y; host
// arrays pads[6] (ONNX order d0 h0 w0 d1 h1 w1), strides[3], dilations[3]; causal_time 0 (pads
// as given), 1 (temporal pad dilation*(kT-1) in front, zeros), 2 (same, replicating frame 0);
// a device workspace of ws_bytes or null (16-byte aligned for stream-K, 256 for the layout
// change): latentrt_conv3d_workspace_bytes says how much lets the launch do both.
#define LRT_CONV_LAUNCHER(T, SUF)                                                                  \
  extern "C" int latentrt_conv3d_##SUF(const T* x, const T* w_packed, const T* bias, T* y, int n, \
                                       int cin, int d, int h, int w, int cout, int kt, int kh,     \
                                       int kw, const int* pads, const int* strides,                \
                                       const int* dilations, int causal_time, int layout,          \
                                       void* ws, long long ws_bytes, cudaStream_t stream) {        \
    return launch_conv3d(x, w_packed, bias, y, n, cin, d, h, w, cout, kt, kh, kw, pads, strides,  \
                         dilations, causal_time, layout, ws, ws_bytes, stream);                    \
  }                                                                                                \
  extern "C" int latentrt_conv3d_pack_weights_##SUF(const T* w, T* w_packed, int cout, int cin,   \
                                                    int taps, cudaStream_t stream) {               \
    return launch_pack(w, w_packed, cout, cin, taps, stream);                                      \
  }

LRT_CONV_LAUNCHER(float, f32)
LRT_CONV_LAUNCHER(__half, f16)
LRT_CONV_LAUNCHER(__nv_bfloat16, bf16)

#endif  // __CUDACC_RTC__
