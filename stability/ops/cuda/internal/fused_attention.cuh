// What the fused attention kernels share (fused_attention.cu on CUDA cores in fp32,
// tensor_core_attention.cu in bf16): the softmax's elementwise math of AttentionOptions
// (ops/backend.h: Softmax, fp32's; the bf16 kernels run it in base 2, their Softmax2) and the
// dispatch over the head dims they are compiled for.
//   a → z = cap(a/τ),  dz/du = 1 − (z/c)²,  p' = clip(p),  dp'/dp = ζ − γ inside (0, 1).
#ifndef STABILITY_OPS_CUDA_INTERNAL_FUSED_ATTENTION_CUH_
#define STABILITY_OPS_CUDA_INTERNAL_FUSED_ATTENTION_CUH_

#include <cstdint>

#include "stability/ops/backend.h"
#include "stability/ops/cuda/internal/common.cuh"

namespace stability::ops::cuda::internal {

struct Softmax {
  AttentionOptions o;
  __device__ float Z(float a) const { return Capped(a / o.temperature); }  // a → z: temperature, then the cap
  __device__ float Capped(float u) const { return o.soft_cap > 0 ? o.soft_cap * tanhf(u * (1.0f / o.soft_cap)) : u; }
  __device__ float CapSlope(float z) const {  // dz/du
    if (o.soft_cap <= 0) return 1.0f;
    const float th = z / o.soft_cap;
    return 1.0f - th * th;
  }
  __device__ float Clip(float p) const {
    return o.clip ? fminf(fmaxf((o.clip_zeta - o.clip_gamma) * p + o.clip_gamma, 0.0f), 1.0f) : p;
  }
  __device__ float ClipSlope(float p) const {
    if (!o.clip) return 1.0f;
    const float a = o.clip_zeta - o.clip_gamma, pre = a * p + o.clip_gamma;
    return (pre > 0.0f && pre < 1.0f) ? a : 0.0f;
  }
};

// Where head hi of batch bi starts in x [B·T, ·] whose rows are `ld` floats apart (row r of
// the head at [r·ld]): q, k, v and their gradients may be column blocks of a wider buffer
// (AttentionStrides); out and dout are contiguous (ld = H·hd).
__host__ __device__ inline int64_t HeadOffset(int64_t bi, int64_t hi, int64_t t, int64_t ld, int64_t hd) {
  return bi * t * ld + hi * hd;
}

// Head dims of the presets (tiny 16; mid, GPT-2 124M and the 830M shape 64) and neighbours.
template <template <int> class Launch, typename... Args>
bool ForHeadDim(int64_t hd, Args&&... args) {
  switch (hd) {
    case 16: Launch<16>::Run(args...); return true;
    case 32: Launch<32>::Run(args...); return true;
    case 64: Launch<64>::Run(args...); return true;
    case 96: Launch<96>::Run(args...); return true;
    case 128: Launch<128>::Run(args...); return true;
  }
  return false;
}

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_FUSED_ATTENTION_CUH_
