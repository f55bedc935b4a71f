// Causal multi-head attention on the GPU with every softmax option (AttentionOptions in
// ops/backend.h), the CPU backend's algorithm (ops/cpu/attention.cc) with the per-head
// loop as strided-batched cuBLAS GEMMs (one call per batch row covers its H heads):
//
// Forward:  A = scale·Q Kᵀ (GEMM);  per row: z = cap(A/τ), p = softmax(z), p' = clip(p)
//           (one block per query row);  O = P' V (GEMM).  probs keeps p, lse per row.
// Backward: dP' = dO Vᵀ, dV = P'ᵀ dO (GEMMs);  per row: dP = clip'(p)·dP',
//           dZ = p∘(dP − Σ p∘dP), dA = dZ·cap'/τ with cap' = 1 − (z/c)², z = log p + lse;
//           dQ = scale·dA K, dK = scale·dAᵀ Q (GEMMs).
//
// The T×T scores are materialised (B·H·T² floats, as the CPU does); AttentionKernel::kFused
// switches to fused_attention.cu, which stores nothing T×T.
#include "stability/ops/cuda/internal/common.cuh"

namespace stability::ops::cuda::internal {
namespace {

constexpr int kRowThreads = 128;

__device__ inline float ClipP(float p, float zeta, float gamma) {
  return fminf(fmaxf((zeta - gamma) * p + gamma, 0.0f), 1.0f);
}

// One block per (b·h, t) row of probs [B·H, T, T].
__global__ void SoftmaxRowsKernel(float* probs, float* pc, float* lse, float* row_max, double* row_entropy, int64_t t,
                                  AttentionOptions opt) {
  const int64_t row = blockIdx.x;  // (bh, ti)
  const int64_t ti = row % t;
  const int64_t len = ti + 1;
  float* p = probs + row * t;
  FloatPair maxima{-INFINITY, -INFINITY};  // of the raw scores, of z
  for (int64_t s = threadIdx.x; s < len; s += blockDim.x) {
    const float a = p[s];
    const float u = a / opt.temperature;
    const float z = opt.soft_cap > 0 ? opt.soft_cap * tanhf(u * (1.0f / opt.soft_cap)) : u;
    p[s] = z;
    maxima = {fmaxf(maxima.a, a), fmaxf(maxima.b, z)};
  }
  maxima = BlockMax(maxima);
  const float mx = maxima.a, zmax = maxima.b;
  FloatPair sums{0.0f, 0.0f};  // Σ e, Σ e·d
  for (int64_t s = threadIdx.x; s < len; s += blockDim.x) {
    const float d = p[s] - zmax;
    const float e = expf(d);
    p[s] = e;
    sums = {sums.a + e, sums.b + e * d};
  }
  sums = BlockSum(sums);
  const float sum = sums.a, ez = sums.b;
  const float inv = 1.0f / sum;
  const float log_sum = logf(sum);
  for (int64_t s = threadIdx.x; s < t; s += blockDim.x) {
    const float pv = s < len ? p[s] * inv : 0.0f;
    p[s] = pv;
    if (pc != p && pc != nullptr) pc[row * t + s] = s < len ? ClipP(pv, opt.clip_zeta, opt.clip_gamma) : 0.0f;
  }
  if (threadIdx.x == 0) {
    lse[row] = zmax + log_sum;
    row_max[row] = mx;
    // H = −Σ p log p = log Σe − Σ e·(z − zmax) / Σe: no log per element.
    row_entropy[row] = static_cast<double>(log_sum) - static_cast<double>(ez) * inv;
  }
}

__global__ void ClipProbsKernel(const float* probs, int64_t rows, int64_t t, float zeta, float gamma, float* pc) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= rows * t) return;
  const int64_t s = idx % t, ti = (idx / t) % t;
  pc[idx] = s <= ti ? ClipP(probs[idx], zeta, gamma) : 0.0f;
}

// dP (in dp) → dA, one block per row.
__global__ void SoftmaxBackwardRowsKernel(const float* probs, const float* lse, float* dp, int64_t t,
                                          AttentionOptions opt) {
  const int64_t row = blockIdx.x;
  const int64_t ti = row % t;
  const int64_t len = ti + 1;
  const float* p = probs + row * t;
  float* d = dp + row * t;
  const float clip_a = opt.clip_zeta - opt.clip_gamma;
  float pdp = 0;
  for (int64_t s = threadIdx.x; s < len; s += blockDim.x) {
    float g = d[s];
    if (opt.clip) {
      const float pre = clip_a * p[s] + opt.clip_gamma;
      g = (pre > 0.0f && pre < 1.0f) ? clip_a * g : 0.0f;
      d[s] = g;
    }
    pdp += p[s] * g;
  }
  pdp = BlockSum(pdp);
  const float row_lse = lse[row];
  const float inv_temp = 1.0f / opt.temperature;
  for (int64_t s = threadIdx.x; s < t; s += blockDim.x) {
    float dz = 0.0f;
    if (s < len) {
      dz = p[s] * (d[s] - pdp);
      if (opt.soft_cap > 0 && dz != 0.0f) {  // p = 0 contributes nothing (and has no log)
        const float th = (logf(p[s]) + row_lse) / opt.soft_cap;  // tanh(u/c) = z/c
        dz *= 1.0f - th * th;
      }
      dz *= inv_temp;
    }
    d[s] = dz;
  }
}

// One block: out = {Σ entropy, max of the maxima} over the rows, in a fixed order.
__global__ void AttentionStatsKernel(const double* row_entropy, const float* row_max, int64_t rows, double* out) {
  double s = 0;
  float m = -INFINITY;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    s += row_entropy[r];
    m = fmaxf(m, row_max[r]);
  }
  s = BlockSum(s);
  m = BlockMax(m);
  if (threadIdx.x == 0) out[0] = s, out[1] = m;
}

}  // namespace

void RefuseRoundedInputs(const Bf16Operands* kept) {
  if (kept && kept->x_rounded) {
    throw std::logic_error(
        "AttentionForward: q, k and v were written in bf16 alone (kept->x_rounded) for a kernel that reads them in "
        "fp32; a producer may write them so only where AttentionReadsRoundedInputs says the kernel reads them there");
  }
}

void RefuseRoundedGradient(const Bf16Operands* kept) {
  if (kept && kept->dy_rounded) {
    throw std::logic_error(
        "AttentionBackward: dout was written in bf16 alone (kept->dy_rounded) for a kernel that reads it in fp32; "
        "Proj's backward may write it so only where AttentionReadsRoundedInputs says the kernel reads it there");
  }
}

// Reduced on the device: two values come back, not the B·H·T rows (1.2 MB a layer at 124M).
void CudaBackend::ReadAttentionStats(const double* row_entropy, const float* row_max, int64_t rows,
                                     AttentionStats* stats) {
  double* out = static_cast<double*>(Scratch(kReducePartials, (kReduceBlocks + 1) * sizeof(double)));
  AttentionStatsKernel<<<1, 1024>>>(row_entropy, row_max, rows, out);
  STABILITY_CUDA_LAUNCHED("AttentionStatsKernel");
  double host[2];
  Issued(cudaMemcpy(host, out, sizeof(host), cudaMemcpyDeviceToHost), "cudaMemcpy (attention telemetry)");
  stats->entropy_sum = host[0];
  stats->max_logit = static_cast<float>(host[1]);
}

void CudaBackend::AttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                                   int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld, float* out,
                                   float* probs, float* lse, AttentionStats* stats, Bf16Operands* kept,
                                   Bf16Operands* next) {
  if (attention_kernel_ == AttentionKernel::kFused &&
      FusedAttentionForward(q, k, v, b, t, h, hd, opt, ld, out, lse, stats, kept, next)) {
    return;
  }
  RefuseRoundedInputs(kept);
  const int64_t c = h * hd, rows = b * h * t;
  float* pc = opt.clip ? static_cast<float*>(Scratch(kAttentionClip, rows * t * sizeof(float))) : probs;
  // Row statistics for telemetry: max raw logit (float) and entropy (double) per row.
  char* stats_buf = static_cast<char*>(Scratch(kRowStats, rows * (sizeof(float) + sizeof(double))));
  double* row_entropy = reinterpret_cast<double*>(stats_buf);
  float* row_max = reinterpret_cast<float*>(stats_buf + rows * sizeof(double));
  for (int64_t bi = 0; bi < b; ++bi) {
    Gemm(Trans::kNo, Trans::kYes, t, t, hd, opt.scale, q + bi * t * ld.q, ld.q, k + bi * t * ld.k, ld.k, 0.0f,
         probs + bi * h * t * t, t, h, hd, hd, t * t);  // A, per head
  }
  SoftmaxRowsKernel<<<static_cast<unsigned>(rows), kRowThreads>>>(probs, opt.clip ? pc : nullptr, lse, row_max,
                                                                   row_entropy, t, opt);
  STABILITY_CUDA_LAUNCHED("SoftmaxRowsKernel");
  for (int64_t bi = 0; bi < b; ++bi) {
    Gemm(Trans::kNo, Trans::kNo, t, hd, t, 1.0f, pc + bi * h * t * t, t, v + bi * t * ld.v, ld.v, 0.0f,
         out + bi * t * c, c, h, t * t, hd, hd);  // O = P' V, per head
  }
  if (stats) ReadAttentionStats(row_entropy, row_max, rows, stats);
}

void CudaBackend::AttentionBackward(const float* q, const float* k, const float* v, const float* out,
                                    const float* probs, const float* lse, const float* dout, int64_t b, int64_t t,
                                    int64_t h, int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld,
                                    const Bf16Operands* kept, float* dq, float* dk, float* dv) {
  if (attention_kernel_ == AttentionKernel::kFused &&
      FusedAttentionBackward(q, k, v, out, lse, dout, b, t, h, hd, opt, ld, kept, dq, dk, dv)) {
    return;
  }
  RefuseRoundedGradient(kept);
  const int64_t c = h * hd, rows = b * h * t;
  float* dp = static_cast<float*>(Scratch(kAttentionTile, rows * t * sizeof(float)));
  const float* pc = probs;
  if (opt.clip) {
    float* clipped = static_cast<float*>(Scratch(kAttentionClip, rows * t * sizeof(float)));
    ClipProbsKernel<<<Blocks(rows * t, 256), 256>>>(probs, rows, t, opt.clip_zeta, opt.clip_gamma, clipped);
    STABILITY_CUDA_LAUNCHED("ClipProbsKernel");
    pc = clipped;
  }
  for (int64_t bi = 0; bi < b; ++bi) {
    const int64_t off = bi * t * c, poff = bi * h * t * t;
    Gemm(Trans::kNo, Trans::kYes, t, t, hd, 1.0f, dout + off, c, v + bi * t * ld.v, ld.v, 0.0f, dp + poff, t, h,
         hd, hd, t * t);  // dP'
    Gemm(Trans::kYes, Trans::kNo, t, hd, t, 1.0f, pc + poff, t, dout + off, c, 0.0f, dv + bi * t * ld.dv, ld.dv, h,
         t * t, hd, hd);  // dV
  }
  SoftmaxBackwardRowsKernel<<<static_cast<unsigned>(rows), kRowThreads>>>(probs, lse, dp, t, opt);
  STABILITY_CUDA_LAUNCHED("SoftmaxBackwardRowsKernel");
  for (int64_t bi = 0; bi < b; ++bi) {
    const int64_t poff = bi * h * t * t;
    Gemm(Trans::kNo, Trans::kNo, t, hd, t, opt.scale, dp + poff, t, k + bi * t * ld.k, ld.k, 0.0f,
         dq + bi * t * ld.dq, ld.dq, h, t * t, hd, hd);  // dQ
    Gemm(Trans::kYes, Trans::kNo, t, hd, t, opt.scale, dp + poff, t, q + bi * t * ld.q, ld.q, 0.0f,
         dk + bi * t * ld.dk, ld.dk, h, t * t, hd, hd);  // dK
  }
}

// bf16, the tensor-core kernels: the attention's gradients written in bf16 — a block read in
// place straight into QKV's gradient operand (the first half of dqkv: the values
// LinearBackward would round it to), one behind a norm into the first half of its scratch, from
// which the norm's backward writes its own into the operand; QKV's bias gradient the column
// sums of the operand's bf16 values (as FC1's under DGELU); under accumulate_dx the product adds
// dx itself (beta 1). Otherwise (fp32, the GEMM kernel, a
// head dim or alignment the tensor-core kernels do not take) the default's ops.
void CudaBackend::AttentionQkvBackward(const float* qkv, const float* q, const float* k, const float* v,
                                       const AttentionStrides& ld, const float* out, const float* probs,
                                       const float* lse, const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                                       const AttentionOptions& opt, const Bf16Operands* kept, const QkvNorms& norms,
                                       const LinearGradients& qkv_layer, float* dq, float* dk, float* dv, float* dqkv,
                                       float* dx, bool accumulate_dx) {
  const int64_t c = h * hd, n = b * t, w = 3 * c;
  if (precision_ == MatmulPrecision::kBf16 && attention_kernel_ == AttentionKernel::kFused) {
    auto* d16 = reinterpret_cast<__nv_bfloat16*>(dqkv);
    const QkvNorm* norm[3] = {norms.q, norms.k, norms.v};
    __nv_bfloat16* grad[3];
    float* scratch[3] = {dq, dk, dv};
    for (int i = 0; i < 3; ++i) grad[i] = norm[i] ? reinterpret_cast<__nv_bfloat16*>(scratch[i]) : d16 + i * c;
    float* rowd = static_cast<float*>(Scratch(kRowStats, b * h * t * sizeof(float)));
    if (TensorCoreAttentionBackward(q, k, v, out, lse, dout, b, t, h, hd, opt, ld, kept, grad[0], grad[1], grad[2],
                                    rowd)) {
      for (int i = 0; i < 3; ++i) {
        if (norm[i] == nullptr) continue;
        NormBackwardRows(norms.kind, qkv + i * c, norms.layout, norm[i]->g, norm[i]->mean, norm[i]->rstd,
                         static_cast<const __nv_bfloat16*>(grad[i]), norms.rows, norms.d, /*accumulate=*/false,
                         d16 + i * c, norm[i]->dg, norm[i]->db);
      }
      LinearBackwardBf16(qkv_layer.x, qkv_layer.w, d16, n, c, w, dx, qkv_layer.dw, qkv_layer.db, qkv_layer.kept,
                         CUDA_R_32F, accumulate_dx ? 1.0f : 0.0f);  // += in the product's epilogue: no pass
      return;
    }
  }
  Backend::AttentionQkvBackward(qkv, q, k, v, ld, out, probs, lse, dout, b, t, h, hd, opt, kept, norms, qkv_layer, dq,
                                dk, dv, dqkv, dx, accumulate_dx);
}

}  // namespace stability::ops::cuda::internal
