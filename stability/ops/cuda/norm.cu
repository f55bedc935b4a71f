// LayerNorm and RMSNorm on the GPU: statistics in double through a fixed reduction tree;
// one warp a row both ways, the backward's blocks a chunk of rows each with dx and the
// parameter gradients' deterministic column sums in one pass over x and dy.
#include <type_traits>

#include "stability/ops/cuda/internal/common.cuh"

namespace stability::ops::cuda::internal {
namespace {

constexpr int kForwardWarps = 4;  // rows a block of the forward

// One warp a row (lane l: columns l, l + 32, …), the statistics by shuffles alone: no block
// barrier, and a per-head row (64 wide) keeps every lane busy. With a (AddNormForward; x
// contiguous): the row of x + a ⊙ s (s nullable) is written to sum and normalised from there;
// each lane reads back only what it wrote. __fmul_rn: a·s rounded on its own, as
// ChannelScaleKernel does. y16 (nullable): y rounded to bf16 (the next product's operand), y
// then nullable.
__global__ void NormForwardKernel(bool layer, const float* x, RowLayout x_rows, const float* a, const float* s,
                                  const float* g, const float* b, int64_t rows, int64_t d, float eps, float* sum,
                                  float* y, __nv_bfloat16* y16, float* mean, float* rstd) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(kForwardWarps) + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x & 31;
  const float* xr = x + x_rows.Offset(r, d);
  if (a) {
    const float* ar = a + r * d;
    float* sr = sum + r * d;
    for (int64_t j = lane; j < d; j += 32) sr[j] = xr[j] + (s ? __fmul_rn(ar[j], s[j]) : ar[j]);
    xr = sr;
  }
  double mu = 0;
  if (layer) {
    double s = 0;
    for (int64_t j = lane; j < d; j += 32) s += xr[j];
    mu = WarpAllSum(s) / d;
  }
  double s2 = 0;
  for (int64_t j = lane; j < d; j += 32) s2 += (xr[j] - mu) * (xr[j] - mu);
  const double var = WarpAllSum(s2) / d;
  const float rs = static_cast<float>(1.0 / sqrt(var + eps));
  const float m = static_cast<float>(mu);
  for (int64_t j = lane; j < d; j += 32) {
    const float v = (xr[j] - m) * rs * g[j] + (b ? b[j] : 0.0f);
    if (y) y[r * d + j] = v;
    if (y16) y16[r * d + j] = __float2bfloat16_rn(v);
  }
  if (lane == 0) {
    if (mean) mean[r] = m;
    rstd[r] = rs;
  }
}

// Row chunks of the backward: ~32 rows a block, so that a GPT-2 norm (16,384 rows) gets 512
// blocks and a per-head one (196,608 rows × 64) 2,048, and at most 2,048 partial rows for the
// column totals to add up.
int NormChunks(int64_t rows) { return static_cast<int>(rows < 32 ? 1 : rows / 32 < 2048 ? rows / 32 : 2048); }
// Warps a block of the backward: as many (up to 8) as keep their column sums (8 bytes a column
// each) within the default 48 KB of shared memory — 8 to d = 768, 6 at 1,024, 1 from 6,144.
int NormBackwardWarps(int64_t d) {
  const int64_t fit = 48 * 1024 / (2 * d * static_cast<int64_t>(sizeof(float)));
  return static_cast<int>(fit < 1 ? 1 : fit > 8 ? 8 : fit);
}

// dx and the parameter gradients' partials in one pass over x and dy: block `chunk` (of
// gridDim.x = NormChunks) takes its rows, one warp a row (lane l: columns l, l + 32, …; warp w
// rows w, w + warps, … of the chunk), the row's two sums by shuffles alone — no block barrier
// a row, which the one-block-a-row kernel before paid twice (145 µs a GPT-2 norm on the H200,
// ~1.4 TB/s) —
//   dx = r·(ĝ − [LayerNorm] mean(ĝ) − x̂·mean(ĝ·x̂)),  ĝ = dy·g,  x̂ = (x − μ)·r
// (accumulate: dx += , the residual stream's gradient; dx laid out as x; dy and dx fp32 or
// bf16, the math fp32 either way, the row sums in double; dx16 nullable: the stored dx rounded
// to bf16, contiguous rows — the next product's operand). Each lane adds its columns' dy·x̂ and
// dy into its warp's own shared slots (float, the warp's rows in order: a few — 4 of a GPT-2
// 124M norm's 16,384 rows, 12 of its per-head norms' 196,608), and the block writes partials_g/partials_b[chunk, j] (double: the
// warps' slots in warp order; partials_b nullable) for AddColumnTotals. The second pass over
// the row reads what the first just loaded (L1), so x and dy come from memory once.
template <typename DY, typename DX>
__global__ void NormBackwardKernel(bool layer, const float* x, RowLayout x_rows, const float* g, const float* mean,
                                   const float* rstd, const DY* dy, int64_t rows, int64_t d, bool accumulate, DX* dx,
                                   __nv_bfloat16* dx16, double* partials_g, double* partials_b) {
  extern __shared__ float acc[];  // warp w: [2dw, 2dw + d) its Σ dy·x̂, [2dw + d, 2dw + 2d) its Σ dy
  const int64_t chunk = blockIdx.x, chunks = gridDim.x;
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  float* const sum_g = acc + 2 * d * warp;
  float* const sum_b = sum_g + d;
  for (int64_t j = lane; j < d; j += 32) sum_g[j] = sum_b[j] = 0;  // each slot its owner's: no barrier
  for (int64_t r = rows * chunk / chunks + warp; r < rows * (chunk + 1) / chunks; r += warps) {
    const float* xr = x + x_rows.Offset(r, d);
    DX* dxr = dx + x_rows.Offset(r, d);
    const DY* dyr = dy + r * d;
    const float m = layer ? mean[r] : 0.0f, rs = rstd[r];
    double sg = 0, sgx = 0;
    for (int64_t j = lane; j < d; j += 32) {
      const double gh = Load(dyr + j) * g[j];
      sg += gh;
      sgx += gh * (xr[j] - m) * rs;
    }
    const float mg = layer ? static_cast<float>(WarpAllSum(sg) / d) : 0.0f;
    const float mgx = static_cast<float>(WarpAllSum(sgx) / d);
    for (int64_t j = lane; j < d; j += 32) {
      const float xh = (xr[j] - m) * rs, dyj = Load(dyr + j);
      const float v = rs * (dyj * g[j] - mg - xh * mgx);
      const float stored = accumulate ? __fadd_rn(Load(dxr + j), v) : v;  // never an FMA: the bits of Add's
      Store(stored, dxr + j);
      if (dx16) dx16[r * d + j] = __float2bfloat16_rn(stored);
      sum_g[j] += dyj * xh;
      sum_b[j] += dyj;
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    double tg = 0, tb = 0;
    for (int w = 0; w < warps; ++w) {
      tg += acc[2 * d * w + j];
      tb += acc[2 * d * w + d + j];
    }
    partials_g[chunk * d + j] = tg;
    if (partials_b) partials_b[chunk * d + j] = tb;
  }
}

}  // namespace

// The next product's bf16 operand, where it is written here: then marked as rounded.
__nv_bfloat16* CudaBackend::NextOperand(Bf16Operands* next) {
  if (next == nullptr || !KeepsBf16Operands()) return nullptr;
  next->x_rounded = true;
  return static_cast<__nv_bfloat16*>(next->x);
}

__nv_bfloat16* CudaBackend::NextGradient(Bf16Operands* next) {
  if (next == nullptr || next->dy == nullptr || !KeepsBf16Operands()) return nullptr;
  next->dy_rounded = true;
  return static_cast<__nv_bfloat16*>(next->dy);
}

void CudaBackend::NormForward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* b,
                              int64_t rows, int64_t d, float eps, float* y, float* mean, float* rstd,
                              Bf16Operands* next) {
  NormForwardKernel<<<Blocks(rows, kForwardWarps), 32 * kForwardWarps>>>(kind == NormKind::kLayerNorm, x, x_rows,
                                                                         nullptr, nullptr, g, b, rows, d, eps, nullptr,
                                                                         y, NextOperand(next), mean, rstd);
  STABILITY_CUDA_LAUNCHED("NormForwardKernel");
}

void CudaBackend::AddNormForward(NormKind kind, const float* x, const float* a, const float* s, const float* g,
                                 const float* b, int64_t rows, int64_t d, float eps, float* sum, float* y, float* mean,
                                 float* rstd, Bf16Operands* next) {
  NormForwardKernel<<<Blocks(rows, kForwardWarps), 32 * kForwardWarps>>>(kind == NormKind::kLayerNorm, x,
                                                                         RowLayout::Contiguous(d), a, s, g, b, rows, d,
                                                                         eps, sum, y, NextOperand(next), mean, rstd);
  STABILITY_CUDA_LAUNCHED("NormForwardKernel (add)");
}

template <typename DY, typename DX>
void CudaBackend::NormBackwardRows(NormKind kind, const float* x, const RowLayout& x_rows, const float* g,
                                   const float* mean, const float* rstd, const DY* dy, int64_t rows, int64_t d,
                                   bool accumulate, DX* dx, float* dg, float* db, __nv_bfloat16* dx16) {
  const int chunks = NormChunks(rows);
  double* partials_g = static_cast<double*>(Scratch(kColumnPartials, 2 * chunks * d * sizeof(double)));
  double* partials_b = db ? partials_g + chunks * d : nullptr;
  const int warps = NormBackwardWarps(d);
  const size_t shared = 2 * d * warps * sizeof(float);  // past the default 48 KB from d = 6,145
  if (shared > 48 * 1024) {
    AllowSharedBytes(NormBackwardKernel<DY, DX>, shared, "NormBackwardKernel (the norm's width)");
  }
  NormBackwardKernel<DY, DX><<<chunks, 32 * warps, shared>>>(kind == NormKind::kLayerNorm, x, x_rows, g, mean, rstd, dy,
                                                             rows, d, accumulate, dx, dx16, partials_g, partials_b);
  STABILITY_CUDA_LAUNCHED((std::is_same_v<DX, float> ? "NormBackwardKernel" : "NormBackwardKernel (bf16)"));
  AddColumnTotals(partials_g, chunks, d, dg);
  if (db) AddColumnTotals(partials_b, chunks, d, db);
}
template void CudaBackend::NormBackwardRows(NormKind, const float*, const RowLayout&, const float*, const float*,
                                            const float*, const __nv_bfloat16*, int64_t, int64_t, bool, __nv_bfloat16*,
                                            float*, float*, __nv_bfloat16*);  // attention.cu's

void CudaBackend::NormBackward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g,
                               const float* mean, const float* rstd, const float* dy, int64_t rows, int64_t d,
                               float* dx, float* dg, float* db, Bf16Operands* next) {
  NormBackwardRows(kind, x, x_rows, g, mean, rstd, dy, rows, d, /*accumulate=*/false, dx, dg, db,
                   x_rows.IsContiguous(d) ? NextGradient(next) : nullptr);
}

void CudaBackend::AddNormBackward(NormKind kind, const float* sum, const float* g, const float* mean, const float* rstd,
                                  const float* dy, int64_t rows, int64_t d, float* dsum, float* dg, float* db,
                                  const Bf16Operands* from, Bf16Operands* next) {
  if (from && from->dx) {  // dy as the product before wrote it, in bf16
    NormBackwardRows(kind, sum, RowLayout::Contiguous(d), g, mean, rstd, static_cast<const __nv_bfloat16*>(from->dx),
                     rows, d, /*accumulate=*/true, dsum, dg, db, NextGradient(next));
    return;
  }
  NormBackwardRows(kind, sum, RowLayout::Contiguous(d), g, mean, rstd, dy, rows, d, /*accumulate=*/true, dsum, dg, db,
                   NextGradient(next));
}

}  // namespace stability::ops::cuda::internal
