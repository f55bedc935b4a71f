// Fused causal attention (FlashAttention's tiling and recomputation, on CUDA cores in fp32):
// the T×T scores are never stored. Every option of AttentionOptions is supported; the
// clipped softmax needs the exact p, so each pass that uses p first has the row's
// log-sum-exp (the forward computes it in a first sweep over the keys).
//
// Forward, one thread per query row t, key tiles of kTile rows in shared memory:
//   sweep 1: a = scale·q·k_s, z = cap(a/τ); online max m and Σ exp(z − m) → lse = m + log Σ;
//            and the max raw logit (telemetry)
//   sweep 2: p = exp(z − lse), p' = clip(p); o += p'·v_s;  Σ p·z → entropy = lse − Σ p·z
// Backward (FlashAttention-2's split, no atomics, so runs repeat bit for bit):
//   per query row t:  dP'_s = dO_t·v_s, dP_s = clip'(p)·dP'_s, D_t = Σ_s p·dP_s (sweep 1);
//                     dZ = p·(dP − D_t)·cap'/τ, dQ_t = scale·Σ_s dZ·k_s (sweep 2)
//   per key row s:    over queries t ≥ s: dK_s = scale·Σ_t dZ·q_t, dV_s = Σ_t p'·dO_t
// cap' = 1 − (z/c)². Threads own rows, so every sum runs in a fixed order.
//
// This is the fp32 kernel (parity with the CPU, one row per thread on CUDA cores); in bf16
// (MatmulPrecision::kBf16) the same algorithm runs on the tensor cores:
// tensor_core_attention.cu.
#include "stability/ops/cuda/internal/fused_attention.cuh"
#include "stability/ops/cuda/internal/common.cuh"

namespace stability::ops::cuda::internal {
namespace {

constexpr int kRows = 64;  // query (or key) rows per block: one per thread
constexpr int kTile = 32;  // rows of the other side staged in shared memory per step

// Rows [row0, row0 + kTile) of x [T, ·] (stride c, head offset folded into x) into tile.
template <int HD>
__device__ void LoadTile(const float* x, int64_t row0, int64_t t, int64_t c, float (*tile)[HD]) {
  for (int i = threadIdx.x; i < kTile * HD; i += blockDim.x) {
    const int r = i / HD, d = i % HD;
    tile[r][d] = row0 + r < t ? x[(row0 + r) * c + d] : 0.0f;
  }
}

template <int HD>
__global__ void ForwardKernel(const float* q, const float* k, const float* v, int64_t t, int64_t h, Softmax sm,
                              AttentionStrides ld, float* out, float* lse, float* row_max, double* row_entropy) {
  __shared__ float ks[kTile][HD], vs[kTile][HD];
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD;
  const int64_t off = HeadOffset(bi, hi, t, c, HD);
  q += HeadOffset(bi, hi, t, ld.q, HD), k += HeadOffset(bi, hi, t, ld.k, HD), v += HeadOffset(bi, hi, t, ld.v, HD);
  const int64_t tq = blockIdx.x * static_cast<int64_t>(kRows) + threadIdx.x;
  const bool active = tq < t;
  const int64_t last = std::min<int64_t>(t - 1, (blockIdx.x + 1) * static_cast<int64_t>(kRows) - 1);
  float qr[HD], acc[HD];
  for (int d = 0; d < HD; ++d) qr[d] = active ? q[tq * ld.q + d] : 0.0f, acc[d] = 0.0f;
  float m = -INFINITY, l = 0.0f, amax = -INFINITY;
  for (int64_t s0 = 0; s0 <= last; s0 += kTile) {  // sweep 1: the row's log-sum-exp
    LoadTile<HD>(k, s0, t, ld.k, ks);
    __syncthreads();
    for (int j = 0; j < kTile && active; ++j) {
      if (s0 + j > tq) break;
      float a = 0.0f;
      for (int d = 0; d < HD; ++d) a += qr[d] * ks[j][d];
      a *= sm.o.scale;
      amax = fmaxf(amax, a);
      const float z = sm.Z(a);
      if (z > m) {
        l = l * expf(m - z) + 1.0f;
        m = z;
      } else {
        l += expf(z - m);
      }
    }
    __syncthreads();
  }
  const float row_lse = m + logf(l);
  float pz = 0.0f;
  for (int64_t s0 = 0; s0 <= last; s0 += kTile) {  // sweep 2: exact p, clip, P'·V
    LoadTile<HD>(k, s0, t, ld.k, ks);
    LoadTile<HD>(v, s0, t, ld.v, vs);
    __syncthreads();
    for (int j = 0; j < kTile && active; ++j) {
      if (s0 + j > tq) break;
      float a = 0.0f;
      for (int d = 0; d < HD; ++d) a += qr[d] * ks[j][d];
      const float z = sm.Z(a * sm.o.scale);
      const float p = expf(z - row_lse);
      pz += p * z;
      const float pc = sm.Clip(p);
      for (int d = 0; d < HD; ++d) acc[d] += pc * vs[j][d];
    }
    __syncthreads();
  }
  if (!active) return;
  for (int d = 0; d < HD; ++d) out[off + tq * c + d] = acc[d];
  const int64_t row = bh * t + tq;
  lse[row] = row_lse;
  row_max[row] = amax;
  row_entropy[row] = static_cast<double>(row_lse) - pz;
}

// Per query row: D = Σ_s p·dP (sweep 1), then dQ (sweep 2).
template <int HD>
__global__ void BackwardQueryKernel(const float* q, const float* k, const float* v, const float* lse,
                                    const float* dout, int64_t t, int64_t h, Softmax sm, AttentionStrides ld,
                                    float* dq, float* rowd) {
  __shared__ float ks[kTile][HD], vs[kTile][HD];
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD;
  const int64_t off = HeadOffset(bi, hi, t, c, HD);
  q += HeadOffset(bi, hi, t, ld.q, HD), k += HeadOffset(bi, hi, t, ld.k, HD), v += HeadOffset(bi, hi, t, ld.v, HD);
  dq += HeadOffset(bi, hi, t, ld.dq, HD);
  const int64_t tq = blockIdx.x * static_cast<int64_t>(kRows) + threadIdx.x;
  const bool active = tq < t;
  const int64_t last = std::min<int64_t>(t - 1, (blockIdx.x + 1) * static_cast<int64_t>(kRows) - 1);
  float qr[HD], dor[HD], acc[HD];
  for (int d = 0; d < HD; ++d) {
    qr[d] = active ? q[tq * ld.q + d] : 0.0f;
    dor[d] = active ? dout[off + tq * c + d] : 0.0f;
    acc[d] = 0.0f;
  }
  const float row_lse = active ? lse[bh * t + tq] : 0.0f;
  float D = 0.0f;
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t s0 = 0; s0 <= last; s0 += kTile) {
      LoadTile<HD>(k, s0, t, ld.k, ks);
      LoadTile<HD>(v, s0, t, ld.v, vs);
      __syncthreads();
      for (int j = 0; j < kTile && active; ++j) {
        if (s0 + j > tq) break;
        float a = 0.0f, dpp = 0.0f;
        for (int d = 0; d < HD; ++d) a += qr[d] * ks[j][d], dpp += dor[d] * vs[j][d];
        const float z = sm.Z(a * sm.o.scale);
        const float p = expf(z - row_lse);
        const float dp = sm.ClipSlope(p) * dpp;
        if (pass == 0) {
          D += p * dp;
        } else {
          const float dz = p * (dp - D) * sm.CapSlope(z) / sm.o.temperature;
          for (int d = 0; d < HD; ++d) acc[d] += dz * ks[j][d];
        }
      }
      __syncthreads();
    }
  }
  if (!active) return;
  for (int d = 0; d < HD; ++d) dq[tq * ld.dq + d] = sm.o.scale * acc[d];
  rowd[bh * t + tq] = D;
}

// Per key row s: dK and dV over the queries t ≥ s.
template <int HD>
__global__ void BackwardKeyKernel(const float* q, const float* k, const float* v, const float* lse, const float* rowd,
                                  const float* dout, int64_t t, int64_t h, Softmax sm, AttentionStrides ld, float* dk,
                                  float* dv) {
  __shared__ float qs[kTile][HD], dos[kTile][HD];
  __shared__ float lses[kTile], ds[kTile];
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD;
  const int64_t off = HeadOffset(bi, hi, t, c, HD);
  q += HeadOffset(bi, hi, t, ld.q, HD), k += HeadOffset(bi, hi, t, ld.k, HD), v += HeadOffset(bi, hi, t, ld.v, HD);
  dk += HeadOffset(bi, hi, t, ld.dk, HD), dv += HeadOffset(bi, hi, t, ld.dv, HD);
  const int64_t sk = blockIdx.x * static_cast<int64_t>(kRows) + threadIdx.x;
  const bool active = sk < t;
  const int64_t first = blockIdx.x * static_cast<int64_t>(kRows);  // queries before it see no key of this block
  float kr[HD], vr[HD], dka[HD], dva[HD];
  for (int d = 0; d < HD; ++d) {
    kr[d] = active ? k[sk * ld.k + d] : 0.0f;
    vr[d] = active ? v[sk * ld.v + d] : 0.0f;
    dka[d] = dva[d] = 0.0f;
  }
  for (int64_t t0 = first - first % kTile; t0 < t; t0 += kTile) {
    LoadTile<HD>(q, t0, t, ld.q, qs);
    LoadTile<HD>(dout + off, t0, t, c, dos);
    for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
      lses[i] = t0 + i < t ? lse[bh * t + t0 + i] : 0.0f;
      ds[i] = t0 + i < t ? rowd[bh * t + t0 + i] : 0.0f;
    }
    __syncthreads();
    for (int j = 0; j < kTile && active; ++j) {
      const int64_t tq = t0 + j;
      if (tq < sk || tq >= t) continue;
      float a = 0.0f, dpp = 0.0f;
      for (int d = 0; d < HD; ++d) a += qs[j][d] * kr[d], dpp += dos[j][d] * vr[d];
      const float z = sm.Z(a * sm.o.scale);
      const float p = expf(z - lses[j]);
      const float dp = sm.ClipSlope(p) * dpp;
      const float dz = p * (dp - ds[j]) * sm.CapSlope(z) / sm.o.temperature;
      const float pc = sm.Clip(p);
      for (int d = 0; d < HD; ++d) dka[d] += dz * qs[j][d], dva[d] += pc * dos[j][d];
    }
    __syncthreads();
  }
  if (!active) return;
  for (int d = 0; d < HD; ++d) {
    dk[sk * ld.dk + d] = sm.o.scale * dka[d];
    dv[sk * ld.dv + d] = dva[d];
  }
}

template <int HD>
struct LaunchForward {
  static void Run(dim3 grid, const float* q, const float* k, const float* v, int64_t t, int64_t h, Softmax sm,
                  const AttentionStrides& ld, float* out, float* lse, float* row_max, double* row_entropy) {
    ForwardKernel<HD><<<grid, kRows>>>(q, k, v, t, h, sm, ld, out, lse, row_max, row_entropy);
  }
};
template <int HD>
struct LaunchBackward {
  static void Run(dim3 grid, const float* q, const float* k, const float* v, const float* lse, const float* dout,
                  int64_t t, int64_t h, Softmax sm, const AttentionStrides& ld, float* dq, float* dk, float* dv,
                  float* rowd) {
    BackwardQueryKernel<HD><<<grid, kRows>>>(q, k, v, lse, dout, t, h, sm, ld, dq, rowd);
    BackwardKeyKernel<HD><<<grid, kRows>>>(q, k, v, lse, rowd, dout, t, h, sm, ld, dk, dv);
  }
};

}  // namespace

bool CudaBackend::FusedAttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                                        int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld, float* out,
                                        float* lse, AttentionStats* stats, Bf16Operands* kept, Bf16Operands* next) {
  const int64_t rows = b * h * t;
  char* stats_buf = static_cast<char*>(Scratch(kRowStats, rows * (sizeof(float) + sizeof(double))));
  double* row_entropy = reinterpret_cast<double*>(stats_buf);
  float* row_max = reinterpret_cast<float*>(stats_buf + rows * sizeof(double));
  const dim3 grid(static_cast<unsigned>((t + kRows - 1) / kRows), static_cast<unsigned>(b * h));
  // bf16: the tensor cores (out into `next` too); fp32 (or buffers not 16-byte aligned): this
  // file's kernel.
  auto* out16 = precision_ == MatmulPrecision::kBf16 && next ? static_cast<__nv_bfloat16*>(next->x) : nullptr;
  if (precision_ == MatmulPrecision::kBf16 &&
      TensorCoreAttentionForward(q, k, v, b, t, h, hd, opt, ld, out, out16, lse, row_max, row_entropy, kept)) {
    if (out16) next->x_rounded = true;
  } else {
    RefuseRoundedInputs(kept);
    if (!ForHeadDim<LaunchForward>(hd, grid, q, k, v, t, h, Softmax{opt}, ld, out, lse, row_max, row_entropy)) {
      return false;
    }
    STABILITY_CUDA_LAUNCHED("fused attention forward");
  }
  if (stats) ReadAttentionStats(row_entropy, row_max, rows, stats);
  return true;
}

bool CudaBackend::FusedAttentionBackward(const float* q, const float* k, const float* v, const float* out,
                                         const float* lse, const float* dout, int64_t b, int64_t t, int64_t h,
                                         int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld,
                                         const Bf16Operands* kept, float* dq, float* dk, float* dv) {
  float* rowd = static_cast<float*>(Scratch(kRowStats, b * h * t * sizeof(float)));
  if (precision_ == MatmulPrecision::kBf16 &&
      TensorCoreAttentionBackward(q, k, v, out, lse, dout, b, t, h, hd, opt, ld, kept, dq, dk, dv, rowd)) {
    return true;
  }
  RefuseRoundedGradient(kept);
  const dim3 grid(static_cast<unsigned>((t + kRows - 1) / kRows), static_cast<unsigned>(b * h));
  if (!ForHeadDim<LaunchBackward>(hd, grid, q, k, v, lse, dout, t, h, Softmax{opt}, ld, dq, dk, dv, rowd)) {
    return false;
  }
  STABILITY_CUDA_LAUNCHED("fused attention backward");
  return true;
}

}  // namespace stability::ops::cuda::internal
