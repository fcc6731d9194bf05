// latentrt plugin kernels: helpers shared by groupnorm_silu.cu and conv3d.cu.
//
// Compiles under nvcc (the TensorRT plugin build) and NVRTC (plugins/harness.py inlines this
// header textually). Everything here is static or inline so both .cu files can link into one
// shared library.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif

namespace latentrt {

// Layout codes shared by the launchers and the Python harness.
enum : int { kLayoutChannelsFirst = 0, kLayoutChannelsLast = 1 };

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// V elements of T moved as one access (16 bytes when V * sizeof(T) == 16).
template <typename T, int V>
struct alignas(V * sizeof(T)) Pack {
  T v[V];
};

template <typename T>
__device__ __forceinline__ T zero_value() {
  return from_f32<T>(0.0f);
}

}  // namespace latentrt
