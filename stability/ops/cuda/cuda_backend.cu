// The CUDA backend: set-up, allocator, cuBLAS GEMM, reductions, and the elementwise,
// embedding, linear, RoPE, layer-scale and AdamW ops. Norms, attention, cross-entropy and
// σ-reparam have files of their own. Math and conventions: ops/backend.h.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "stability/ops/cuda/cuda_backend.h"
#include "stability/ops/cuda/internal/common.cuh"
#include "stability/ops/cuda/internal/cublas_api.cuh"

namespace stability::ops::cuda {
namespace internal {
namespace {

constexpr int kThreads = 256;

class CudaAllocator final : public Allocator {
 public:
  void* Allocate(size_t bytes) override { return DeviceMalloc(bytes); }
  void Free(void* p) override { cudaFree(p); }
  void Zero(void* p, size_t bytes) override { Issued(cudaMemset(p, 0, bytes), "cudaMemset"); }
  void CopyFromHost(void* dst, const void* src, size_t bytes) override {
    Issued(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (to the GPU)");
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    Issued(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (from the GPU)");
  }
};

__global__ void EmbeddingForwardKernel(const int32_t* ids, int64_t n, int64_t t, const float* wte, const float* wpe,
                                       int64_t c, float* out) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n * c) return;
  const int64_t i = idx / c, j = idx % c;
  float e = wte[static_cast<int64_t>(ids[i]) * c + j];
  if (wpe) e += wpe[(i % t) * c + j];
  out[idx] = e;
}

// The embedding's backward, deterministic and parallel: each token's gradient rows are
// added to its dwte row in position order (the CPU's order, so the same float sums), one
// thread per (token id, column); dwpe per (position, column), batches in order.
//
// order = the positions sorted by (id, position): thread i's rank is the number of
// positions before it in that order, counted over tiles of ids in shared memory (N² simple
// comparisons: ~67 M at 8,192 tokens, microseconds).
constexpr int kRankThreads = 256;
__global__ void TokenOrderKernel(const int32_t* ids, int64_t n, int32_t* order) {
  __shared__ int32_t tile[kRankThreads];
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int32_t id = i < n ? ids[i] : 0;
  int64_t rank = 0;
  for (int64_t t0 = 0; t0 < n; t0 += kRankThreads) {
    __syncthreads();
    if (t0 + threadIdx.x < n) tile[threadIdx.x] = ids[t0 + threadIdx.x];
    __syncthreads();
    const int64_t m = n - t0 < kRankThreads ? n - t0 : kRankThreads;
    for (int64_t k = 0; k < m; ++k) {
      const int32_t other = tile[k];
      rank += other < id || (other == id && t0 + k < i);
    }
  }
  if (i < n) order[rank] = static_cast<int32_t>(i);
}

// Block x: sorted index k; the thread at the start of a token's run sums the run.
__global__ void TokenGradKernel(const int32_t* ids, const int32_t* order, int64_t n, const float* dout, int64_t c,
                                float* dwte) {
  const int64_t k = blockIdx.x;
  const int64_t j = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int32_t id = ids[order[k]];
  if (j >= c || (k > 0 && ids[order[k - 1]] == id)) return;
  float* e = dwte + static_cast<int64_t>(id) * c + j;
  float acc = *e;
  for (int64_t m = k; m < n && ids[order[m]] == id; ++m) acc += dout[static_cast<int64_t>(order[m]) * c + j];
  *e = acc;
}

__global__ void PositionGradKernel(const float* dout, int64_t n, int64_t t, int64_t c, float* dwpe) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= t * c) return;
  float acc = dwpe[idx];
  for (int64_t i = idx / c; i < n; i += t) acc += dout[i * c + idx % c];
  dwpe[idx] = acc;
}

__global__ void AddRowVectorKernel(float* y, const float* b, int64_t n, int64_t c) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx < n * c) y[idx] += b[idx % c];
}

// partials[block] of a·b over ReduceBlocks(n) blocks.
__global__ void DotPartialsKernel(const float* a, const float* b, int64_t n, double* partials) {
  const double s = DotPartial(a, b, n, blockIdx.x, gridDim.x);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Column sums: each thread one column of one row chunk (gridDim.y = RowChunks(rows)), its
// rows in order, then the chunks' partials added in a fixed order (ColumnTotalsKernel).
// Loops unrolled so that a thread has several loads in flight (the sums still run in row order).

// partials[chunk, j] = Σ rows of the chunk (in order) of x[:, j] (x fp32 or bf16)
template <typename In>
__global__ void ColumnPartialsKernel(const In* x, int64_t rows, int64_t cols, double* partials) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t chunk = blockIdx.y, chunks = gridDim.y;
  if (j >= cols) return;
  double s = 0;
#pragma unroll 4
  for (int64_t r = rows * chunk / chunks; r < rows * (chunk + 1) / chunks; ++r) s += Load(x + r * cols + j);
  partials[chunk * cols + j] = s;
}
// out[j] += Σ_chunks partials[chunk, j]: a block of 32 columns × kTotalsWarps warps, warp w
// adding the chunks w, w + kTotalsWarps, … in order, then its warps' sums in order. Not one
// thread a column: a norm's gains have 768 columns (a per-head one's 64) over 512 chunks (2,048),
// which one thread a column would add one dependent round trip to L2 after another.
constexpr int kTotalsWarps = 16;
__global__ void ColumnTotalsKernel(const double* partials, int64_t cols, int chunks, float* out) {
  __shared__ double warp_sums[kTotalsWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t j = blockIdx.x * 32 + lane;
  double s = 0;
  if (j < cols) {
#pragma unroll 4
    for (int c = warp; c < chunks; c += kTotalsWarps) s += partials[c * cols + j];
  }
  warp_sums[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && j < cols) {
    double total = 0;
    for (int w = 0; w < kTotalsWarps; ++w) total += warp_sums[w][lane];
    out[j] += static_cast<float>(total);
  }
}

// One warp per row: ‖x[r, :]‖ in double (x fp32 or bf16).
template <typename In>
__global__ void RowNormsKernel(const In* x, int64_t rows, int64_t d, double* norms) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x & 31;
  double s = 0;
  for (int64_t j = lane; j < d; j += 32) {
    const double v = Load(x + r * d + j);
    s += v * v;
  }
  s = WarpSum(s);
  if (lane == 0) norms[r] = sqrt(s);
}

// QueueSumSquaresOfEach's batch: up to kEachMax buffers, passed by value (3.5 KB of kernel
// parameters), each with its queue slot; buffer k owns ReduceBlocks(n[k]) blocks from
// first_block[k].
constexpr int kEachMax = 128;
struct EachSpans {
  const float* x[kEachMax];
  int64_t n[kEachMax];
  double* out[kEachMax];
  int32_t first_block[kEachMax + 1];
  int count;
};
static_assert(sizeof(EachSpans) <= 4096, "kernel parameters are at most 4 KB before CUDA 12.1 / Volta");

// Block b: DotPartialsKernel's block for x_k·x_k (the same grid, stride and tree).
__global__ void EachSquarePartialsKernel(EachSpans spans, double* partials) {
  const int k = BufferOfBlock(spans.first_block, spans.count, blockIdx.x);
  const int64_t first = spans.first_block[k], blocks = spans.first_block[k + 1] - first;
  const double s = DotPartial(spans.x[k], spans.x[k], spans.n[k], blockIdx.x - first, blocks);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// One block per buffer: SumDoublesKernel over its partials, into its queue slot.
__global__ void EachSumKernel(EachSpans spans, const double* partials) {
  const int k = blockIdx.x;
  const double s = BlockSumInOrder(partials + spans.first_block[k], spans.first_block[k + 1] - spans.first_block[k]);
  if (threadIdx.x == 0) *spans.out[k] = s;
}

// One block: Σ x in a fixed order (each thread's stride, then the block tree).
__global__ void SumDoublesKernel(const double* x, int64_t n, double* out) {
  const double s = BlockSumInOrder(x, n);
  if (threadIdx.x == 0) *out = s;
}

__global__ void RopeKernel(const float* x, int64_t x_ld, float* y, int64_t y_ld, int64_t b, int64_t t, int64_t h,
                           int64_t hd, float base, float sign) {
  const int64_t half = hd / 2;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= b * t * h * half) return;
  const int64_t i = idx % half, row = idx / half;  // row = (bi·T + pos)·H + hi
  const int64_t token = row / h, hi = row % h, pos = token % t;
  const double theta = pos * pow(static_cast<double>(base), -2.0 * i / hd);
  const float c = static_cast<float>(cos(theta)), s = sign * static_cast<float>(sin(theta));
  const float* xr = x + token * x_ld + hi * hd;
  float* yr = y + token * y_ld + hi * hd;
  const float x1 = xr[i], x2 = xr[i + half];
  yr[i] = x1 * c - x2 * s;
  yr[i + half] = x1 * s + x2 * c;
}

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)

// Not inlined: every kernel that applies the activation gets the same bits.
__device__ __noinline__ float ActivationValue(Activation act, float v) {
  if (act == Activation::kRelu) return v > 0 ? v : 0.0f;
  return 0.5f * v * (1.0f + tanhf(kGeluScale * (v + 0.044715f * v * v * v)));
}

__global__ void ActivationForwardKernel(Activation act, const float* x, int64_t n, float* y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = ActivationValue(act, x[i]);
}

// FC1's epilogue where cuBLASLt's is not taken, in one pass over a row chunk of the fp32
// product z [rows, cols]: v = z + b (b16 nullable: the bias as cuBLASLt's bf16 epilogue adds
// it), saved in bf16 (pre16), and act(v) rounded into the next product's operand y16 (with
// y, where given, that rounded value) or, without y16, y = act(v) in fp32.
__global__ void PreActivationKernel(Activation act, const float* z, const __nv_bfloat16* b16, int64_t rows,
                                    int64_t cols, __nv_bfloat16* pre16, float* y, __nv_bfloat16* y16) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  const float v = b16 ? z[i] + __bfloat162float(b16[i % cols]) : z[i];
  pre16[i] = __float2bfloat16_rn(v);
  if (y == nullptr && y16 == nullptr) return;  // the product and bias alone (LinearForward's next)
  const float a = ActivationValue(act, v);
  if (y16) {
    const __nv_bfloat16 r = __float2bfloat16_rn(a);
    y16[i] = r;
    if (y) y[i] = __bfloat162float(r);
  } else {
    y[i] = a;
  }
}

__global__ void WidenKernel(const __nv_bfloat16* x, int64_t n, float* y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = __bfloat162float(x[i]);
}

// dy·act'(v): the one formula of both backward kernels below, not inlined so that both run
// the same compiled instructions (inlined, FMA contraction could differ between them).
__device__ __noinline__ float ActivationGrad(Activation act, float v, float dy) {
  if (act == Activation::kRelu) return v > 0 ? dy : 0.0f;
  // th and 1 − th² from e = exp(−2|u|), as the CPU op: 1 − th² from th itself cancels for
  // |u| ≳ 2 (CpuBackend::ActivationBackward has the numbers).
  const float u = kGeluScale * (v + 0.044715f * v * v * v);
  const float e = expf(-2.0f * fabsf(u)), d = 1.0f + e;
  const float th = copysignf((1.0f - e) / d, u), sech2 = 4.0f * e / (d * d);
  const float dth = sech2 * kGeluScale * (1.0f + 3.0f * 0.044715f * v * v);
  return dy * (0.5f * (1.0f + th) + 0.5f * v * dth);
}

__global__ void ActivationBackwardKernel(Activation act, const float* x, const float* dy, int64_t n, float* dx) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  dx[i] = ActivationGrad(act, x[i], dy[i]);
}

// A bf16 linear backward's gradient in one pass: g = act'(pre)·dy (pre: the bf16 saved
// pre-activation; null: g = dy; dy fp32 or bf16) stored in bf16 (what the products read) and
// its column sums' partials for the bias gradient (partials nullable), from the fp32 value —
// with fp32 dy the same grid, order and bits as ActivationBackwardKernel (of pre widened),
// ToBf16Kernel and ColumnPartialsKernel one after the other, without the fp32 gradient
// written or read twice.
template <typename DY>
__global__ void GradientToBf16Kernel(Activation act, const __nv_bfloat16* __restrict__ pre, const DY* __restrict__ dy,
                                     int64_t rows, int64_t cols, __nv_bfloat16* d_pre, double* partials) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t chunk = blockIdx.y, chunks = gridDim.y;
  if (j >= cols) return;
  double s = 0;
#pragma unroll 4
  for (int64_t r = rows * chunk / chunks; r < rows * (chunk + 1) / chunks; ++r) {
    const float d = Load(dy + r * cols + j);
    const float g = pre ? ActivationGrad(act, __bfloat162float(pre[r * cols + j]), d) : d;
    d_pre[r * cols + j] = __float2bfloat16_rn(g);
    s += g;
  }
  if (partials) partials[chunk * cols + j] = s;
}

__global__ void AddKernel(const float* x, const float* a, int64_t n, float* y) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = x[i] + a[i];
}

__global__ void ChannelScaleKernel(const float* x, const float* s, int64_t n, int64_t c, float* y) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx < n * c) y[idx] = x[idx] * s[idx % c];
}

// Layer scale's backward in one pass: dx = dy·s and the partials of ds = Σ_rows dy·x (in
// double, as the CPU), a fixed grid of row chunks per column like ColumnPartialsKernel. Each
// element is read before it is written by the same thread, so dx may alias dy. dx16
// (nullable): dx rounded to bf16 too (the next product's dy). Rows four at a time, their loads
// before their stores: with dx possibly dy, a load after a store waits for it (one memory
// latency a row); the sums still run in row order.
__global__ void ChannelScaleBackwardKernel(const float* x, const float* s, const float* dy, int64_t rows, int64_t cols,
                                           float* dx, __nv_bfloat16* dx16, double* partials) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t chunk = blockIdx.y, chunks = gridDim.y;
  if (j >= cols) return;
  const float sj = s[j];
  double acc = 0;
  GridStrideBatched<4>(
      rows * chunk / chunks, 1, rows * (chunk + 1) / chunks,
      [&](int64_t r) { return make_float2(dy[r * cols + j], x[r * cols + j]); },
      [&](int64_t r, float2 gx) {
        acc += static_cast<double>(gx.x) * gx.y;
        const float d = gx.x * sj;
        dx[r * cols + j] = d;
        if (dx16) dx16[r * cols + j] = __float2bfloat16_rn(d);
      });
  partials[chunk * cols + j] = acc;
}

__global__ void ScaleKernel(float* x, int64_t n, float s) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] *= s;
}

__global__ void FloatToDoubleKernel(const float* x, double* y) { *y = *x; }

// One element's update on its values (p, m, v updated in place): rounded operations in the
// CPU's order (no FMA contraction), so an update matches the CPU backend's bit for bit on the
// same inputs.
__device__ inline void AdamWStep(float& p, float grad, float& m, float& v, float beta1, float beta2, float eps,
                                 float step_size, float sqrt_bc2, float decay, float grad_scale) {
  const float g = __fmul_rn(grad, grad_scale);
  m = __fadd_rn(__fmul_rn(beta1, m), __fmul_rn(__fsub_rn(1.0f, beta1), g));
  v = __fadd_rn(__fmul_rn(beta2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, beta2), g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), sqrt_bc2), eps);
  p = __fsub_rn(__fmul_rn(p, decay), __fdiv_rn(__fmul_rn(step_size, m), denom));
}

__device__ inline float AdamWUpdate(float* p, const float* grad, float* m, float* v, int64_t i, float beta1,
                                    float beta2, float eps, float step_size, float sqrt_bc2, float decay,
                                    float grad_scale) {
  float pi = p[i], mi = m[i], vi = v[i];
  AdamWStep(pi, grad[i], mi, vi, beta1, beta2, eps, step_size, sqrt_bc2, decay, grad_scale);
  m[i] = mi;
  v[i] = vi;
  p[i] = pi;
  return pi;
}

__global__ void AdamWKernel(float* p, const float* grad, float* m, float* v, int64_t n, float beta1, float beta2,
                            float eps, float step_size, float sqrt_bc2, float decay, float grad_scale) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) AdamWUpdate(p, grad, m, v, i, beta1, beta2, eps, step_size, sqrt_bc2, decay, grad_scale);
}

// AdamWEach's batch, passed by value (~2.9 KB of kernel parameters): buffer k owns blocks
// [first_block[k], first_block[k + 1]), kAdamWPerBlock elements each; p16[k] (nullable) gets
// the updated p rounded to bf16.
constexpr int kAdamWMax = 48;
constexpr int kAdamWPerBlock = 1024;
struct AdamWBatch {
  float* p[kAdamWMax];
  const float* grad[kAdamWMax];
  float* m[kAdamWMax];
  float* v[kAdamWMax];
  __nv_bfloat16* p16[kAdamWMax];
  int64_t n[kAdamWMax];
  float decay[kAdamWMax];
  int64_t first_block[kAdamWMax + 1];
  int count;
};
static_assert(sizeof(AdamWBatch) <= 4096, "kernel parameters are at most 4 KB before CUDA 12.1 / Volta");

// A thread's kAdamWPerBlock / blockDim.x elements, all loaded before the first store
// (GridStrideBatched: one batch).
__global__ void AdamWEachKernel(AdamWBatch batch, float beta1, float beta2, float eps, float step_size, float sqrt_bc2,
                                float grad_scale) {
  const int k = BufferOfBlock(batch.first_block, batch.count, blockIdx.x);
  const int64_t first = (blockIdx.x - batch.first_block[k]) * static_cast<int64_t>(kAdamWPerBlock);
  const int64_t end = first + kAdamWPerBlock < batch.n[k] ? first + kAdamWPerBlock : batch.n[k];
  GridStrideBatched<kAdamWPerBlock / kThreads>(
      first + threadIdx.x, kThreads, end,
      [&](int64_t i) { return make_float4(batch.p[k][i], batch.grad[k][i], batch.m[k][i], batch.v[k][i]); },
      [&](int64_t i, float4 e) {  // e: p, grad, m, v
        AdamWStep(e.x, e.y, e.z, e.w, beta1, beta2, eps, step_size, sqrt_bc2, batch.decay[k], grad_scale);
        batch.m[k][i] = e.z;
        batch.v[k][i] = e.w;
        batch.p[k][i] = e.x;
        if (batch.p16[k]) batch.p16[k][i] = __float2bfloat16_rn(e.x);
      });
}

cublasOperation_t Op(Trans t) { return t == Trans::kYes ? CUBLAS_OP_T : CUBLAS_OP_N; }

// About four values a thread, the grid's threads side by side at each step (coalesced), the
// four loaded before the first store.
constexpr int kToBf16PerThread = 4;
__global__ void ToBf16Kernel(const float* x, int64_t n, __nv_bfloat16* y) {
  GridStrideBatched<kToBf16PerThread>(
      blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, static_cast<int64_t>(gridDim.x) * blockDim.x, n,
      [&](int64_t i) { return x[i]; }, [&](int64_t i, float v) { y[i] = __float2bfloat16_rn(v); });
}

// Elements from a matrix's first to its last, over `batch` matrices `stride` apart:
// rows × cols stored row-major with leading dimension ld.
int64_t Span(int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}

}  // namespace

void* DeviceMalloc(size_t bytes) {
  void* p = nullptr;
  if (bytes == 0) return nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    std::fprintf(stderr, "CUDA out of memory: %.1f MiB requested, %.1f MiB free of %.1f MiB\n", bytes / 1048576.0,
                 free_b / 1048576.0, total_b / 1048576.0);
    throw std::bad_alloc();
  }
  return p;  // cudaMalloc aligns to 256 bytes
}

CudaBackend::CudaBackend(int device_index, const CublasApi* blas) : device_index_(device_index), blas_(blas) {
  Check(cudaSetDevice(device_index), "cudaSetDevice");
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device_index) == cudaSuccess) multiprocessors_ = prop.multiProcessorCount;
  Check(blas_->create(&cublas_), "cublasCreate");
  // fp32 SGEMM without TF32 tensor cores: the fp32 mode is for parity with the CPU.
  Check(blas_->set_math_mode(cublas_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
  lt_ = std::make_unique<LtLinear>(blas_);
}

CudaBackend::~CudaBackend() {
  lt_.reset();
  cudaFree(queue_dev_);
  for (void* p : scratch_) cudaFree(p);
  if (cublas_) blas_->destroy(cublas_);
}

int CudaBackend::ResidentBlocks(const void* kernel, int threads, size_t shared) const {
  const auto [it, added] = resident_blocks_.try_emplace({kernel, threads, shared}, 0);
  if (added) {
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared) == cudaSuccess) {
      it->second = per_sm * multiprocessors_;
    } else {
      cudaGetLastError();  // the query's failure is no kernel's: not left for the next launch check
    }
  }
  return it->second;
}

void* CudaBackend::Scratch(int slot, size_t bytes) {
  if (scratch_bytes_[slot] < bytes) {
    cudaFree(scratch_[slot]);
    scratch_[slot] = nullptr;
    scratch_bytes_[slot] = 0;
    scratch_[slot] = DeviceMalloc(bytes);
    scratch_bytes_[slot] = bytes;
  }
  return scratch_[slot];
}

bool CudaBackend::SetMatmulPrecision(MatmulPrecision precision) {
  // fp32: no TF32 tensor cores (parity); bf16: tensor cores with fp32 accumulation.
  Check(blas_->set_math_mode(cublas_, precision == MatmulPrecision::kFp32 ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH),
        "cublasSetMathMode");
  precision_ = precision;
  return true;
}

// Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: swap the operands and the sizes M, N.
void CudaBackend::Gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                       const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int64_t batch,
                       int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  if (precision_ == MatmulPrecision::kBf16) {
    // Round the operands' spans to bf16 (same layout, same strides), multiply on the
    // tensor cores with fp32 accumulation into the fp32 C.
    const int64_t span_a = ta == Trans::kNo ? Span(m, k, lda, batch, stride_a) : Span(k, m, lda, batch, stride_a);
    const int64_t span_b = tb == Trans::kNo ? Span(k, n, ldb, batch, stride_b) : Span(n, k, ldb, batch, stride_b);
    GemmBf16(ta, tb, m, n, k, alpha, ToBf16(a, span_a, kBf16A), lda, ToBf16(b, span_b, kBf16B), ldb, beta, c, ldc,
             batch, stride_a, stride_b, stride_c);
    return;
  }
  GemmFp32(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, batch, stride_a, stride_b, stride_c);
}

void CudaBackend::GemmFp32(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int64_t batch,
                           int64_t stride_a, int64_t stride_b, int64_t stride_c) {
  if (batch == 1) {
    Check(blas_->sgemm(cublas_, Op(tb), Op(ta), static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha,
                      b, static_cast<int>(ldb), a, static_cast<int>(lda), &beta, c, static_cast<int>(ldc)),
          "cublasSgemm");
    MarkProduct("cublasSgemm", m, n, k);
    return;
  }
  Check(blas_->sgemm_strided_batched(cublas_, Op(tb), Op(ta), static_cast<int>(n), static_cast<int>(m),
                                  static_cast<int>(k), &alpha, b, static_cast<int>(ldb), stride_b, a,
                                  static_cast<int>(lda), stride_a, &beta, c, static_cast<int>(ldc), stride_c,
                                  static_cast<int>(batch)),
        "cublasSgemmStridedBatched");
  MarkProduct("cublasSgemm", m, n, k, batch);
}

__nv_bfloat16* CudaBackend::ToBf16(const float* x, int64_t n, int slot, void* into) {
  auto* y = static_cast<__nv_bfloat16*>(into ? into : Scratch(slot, n * sizeof(__nv_bfloat16)));
  ToBf16Kernel<<<Blocks(n, kToBf16PerThread * kThreads), kThreads>>>(x, n, y);
  STABILITY_CUDA_LAUNCHED("ToBf16Kernel");
  return y;
}

void CudaBackend::GemmBf16(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const __nv_bfloat16* a,
                           int64_t lda, const __nv_bfloat16* b, int64_t ldb, float beta, void* c, int64_t ldc,
                           int64_t batch, int64_t stride_a, int64_t stride_b, int64_t stride_c, cudaDataType c_type) {
  Check(blas_->gemm_strided_batched_ex(
            cublas_, Op(tb), Op(ta), static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b,
            CUDA_R_16BF, static_cast<int>(ldb), stride_b, a, CUDA_R_16BF, static_cast<int>(lda), stride_a, &beta, c,
            c_type, static_cast<int>(ldc), stride_c, static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx (bf16)");
  MarkProduct(c_type == CUDA_R_16BF ? "cublasGemmEx bf16 (bf16 out)" : "cublasGemmEx bf16", m, n, k, batch);
}

void CudaBackend::DotInto(const float* a, const float* b, int64_t n, double* out) {
  double* partials = static_cast<double*>(Scratch(kReducePartials, (kReduceBlocks + 1) * sizeof(double)));
  const int blocks = ReduceBlocks(n);
  DotPartialsKernel<<<blocks, kReduceThreads>>>(a, b, n, partials);
  STABILITY_CUDA_LAUNCHED("DotPartialsKernel");
  SumDoublesKernel<<<1, 1024>>>(partials, blocks, out);
  STABILITY_CUDA_LAUNCHED("SumDoublesKernel");
}

double CudaBackend::Dot(const float* a, const float* b, int64_t n) {
  double* result = static_cast<double*>(Scratch(kReducePartials, (kReduceBlocks + 1) * sizeof(double))) +
                   kReduceBlocks;  // after the partial sums
  DotInto(a, b, n, result);
  double s = 0;
  Issued(cudaMemcpy(&s, result, sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy (reduction)");
  return s;
}

template <typename In>
void CudaBackend::RowNormSumInto(const In* x, int64_t rows, int64_t d, double* out) {
  double* norms = static_cast<double*>(Scratch(kRowStats, std::max<int64_t>(rows, 1) * sizeof(double)));
  RowNormsKernel<<<Blocks(rows * 32, kThreads), kThreads>>>(x, rows, d, norms);
  STABILITY_CUDA_LAUNCHED("RowNormsKernel");
  SumDoublesKernel<<<1, 1024>>>(norms, rows, out);  // on the device: one value comes back
  STABILITY_CUDA_LAUNCHED("SumDoublesKernel");
}

double* CudaBackend::NextQueueSlot(double divisor) {
  if (queue_dev_ == nullptr) queue_dev_ = static_cast<double*>(DeviceMalloc(kQueueCapacity * sizeof(double)));
  const size_t pending = queue_divisors_.size() - queue_read_.size();
  if (pending == kQueueCapacity) {  // full: bring these back and start the device slots again
    queue_read_.resize(queue_read_.size() + pending);
    Issued(cudaMemcpy(queue_read_.data() + queue_read_.size() - pending, queue_dev_, pending * sizeof(double),
                      cudaMemcpyDeviceToHost),
           "cudaMemcpy (queued reductions)");
  }
  double* slot = queue_dev_ + (queue_divisors_.size() - queue_read_.size());
  queue_divisors_.push_back(divisor);
  return slot;
}

void CudaBackend::QueueSumSquares(const float* x, int64_t n) { DotInto(x, x, n, NextQueueSlot(1.0)); }

void CudaBackend::QueueSumSquaresOfEach(const std::vector<std::pair<const float*, int64_t>>& xs) {
  for (size_t i = 0; i < xs.size();) {
    // Slots for a whole batch without the queue flushing in the middle of it (a flush reads
    // the pending slots, so it may only happen before the batch's first).
    const size_t pending = queue_divisors_.size() - queue_read_.size();
    const size_t room = pending == kQueueCapacity ? kQueueCapacity : kQueueCapacity - pending;
    const int count = static_cast<int>(std::min({xs.size() - i, room, static_cast<size_t>(kEachMax)}));
    EachSpans spans{};
    spans.count = count;
    for (int k = 0; k < count; ++k) {
      spans.x[k] = xs[i + k].first;
      spans.n[k] = xs[i + k].second;
      spans.out[k] = NextQueueSlot(1.0);
      spans.first_block[k + 1] = spans.first_block[k] + ReduceBlocks(spans.n[k]);
    }
    double* partials = static_cast<double*>(Scratch(kEachPartials, kEachMax * kReduceBlocks * sizeof(double)));
    EachSquarePartialsKernel<<<spans.first_block[count], kReduceThreads>>>(spans, partials);
    STABILITY_CUDA_LAUNCHED("EachSquarePartialsKernel");
    EachSumKernel<<<count, 1024>>>(spans, partials);
    STABILITY_CUDA_LAUNCHED("EachSumKernel");
    i += count;
  }
}

void CudaBackend::QueueValue(const float* x) {
  FloatToDoubleKernel<<<1, 1>>>(x, NextQueueSlot(1.0));
  STABILITY_CUDA_LAUNCHED("FloatToDoubleKernel");
}

void CudaBackend::QueueMeanRowNorm(const float* x, int64_t rows, int64_t d) {
  if (rows == 0) {
    Issued(cudaMemset(NextQueueSlot(1.0), 0, sizeof(double)), "cudaMemset (queue)");
    return;
  }
  RowNormSumInto(x, rows, d, NextQueueSlot(static_cast<double>(rows)));
}

void CudaBackend::QueueMeanRowNormOfSaved(const void* x, int64_t rows, int64_t d) {
  if (SavedValueBytes() == 4 || rows == 0) {
    QueueMeanRowNorm(static_cast<const float*>(x), rows, d);
    return;
  }
  RowNormSumInto(static_cast<const __nv_bfloat16*>(x), rows, d, NextQueueSlot(static_cast<double>(rows)));
}

std::vector<double> CudaBackend::ReadQueued() {
  std::vector<double> values = std::move(queue_read_);
  const size_t done = values.size();
  values.resize(queue_divisors_.size());
  if (values.size() > done) {
    Issued(
        cudaMemcpy(values.data() + done, queue_dev_, (values.size() - done) * sizeof(double), cudaMemcpyDeviceToHost),
        "cudaMemcpy (queued reductions)");
  }
  for (size_t i = 0; i < values.size(); ++i) values[i] /= queue_divisors_[i];
  queue_divisors_.clear();
  queue_read_.clear();
  return values;
}

void CudaBackend::AddColumnTotals(const double* partials, int chunks, int64_t cols, float* out) {
  ColumnTotalsKernel<<<Blocks(cols, 32), 32 * kTotalsWarps>>>(partials, cols, chunks, out);
  STABILITY_CUDA_LAUNCHED("ColumnTotalsKernel");
}

template <typename In>
void CudaBackend::AddColumnSums(const In* x, int64_t rows, int64_t cols, float* out) {
  const int chunks = RowChunks(rows);
  double* partials = static_cast<double*>(Scratch(kColumnPartials, chunks * cols * sizeof(double)));
  ColumnPartialsKernel<<<dim3(Blocks(cols, kThreads), chunks), kThreads>>>(x, rows, cols, partials);
  STABILITY_CUDA_LAUNCHED("ColumnPartialsKernel");
  AddColumnTotals(partials, chunks, cols, out);
}
template void CudaBackend::AddColumnSums(const __nv_bfloat16*, int64_t, int64_t, float*);  // attention.cu's

void CudaBackend::EmbeddingForward(const int32_t* ids, int64_t n, int64_t t, const float* wte, const float* wpe,
                                   int64_t c, float* out) {
  EmbeddingForwardKernel<<<Blocks(n * c, kThreads), kThreads>>>(ids, n, t, wte, wpe, c, out);
  STABILITY_CUDA_LAUNCHED("EmbeddingForwardKernel");
}

void CudaBackend::EmbeddingBackward(const int32_t* ids, int64_t n, int64_t t, const float* dout, int64_t c,
                                    float* dwte, float* dwpe) {
  if (n == 0) return;
  auto* order = static_cast<int32_t*>(Scratch(kTokenOrder, n * sizeof(int32_t)));
  TokenOrderKernel<<<Blocks(n, kRankThreads), kRankThreads>>>(ids, n, order);
  STABILITY_CUDA_LAUNCHED("TokenOrderKernel");
  TokenGradKernel<<<dim3(static_cast<unsigned>(n), Blocks(c, 128)), 128>>>(ids, order, n, dout, c, dwte);
  STABILITY_CUDA_LAUNCHED("TokenGradKernel");
  if (dwpe) {
    PositionGradKernel<<<Blocks(t * c, kThreads), kThreads>>>(dout, n, t, c, dwpe);
    STABILITY_CUDA_LAUNCHED("PositionGradKernel");
  }
}

std::pair<const __nv_bfloat16*, const __nv_bfloat16*> CudaBackend::ForwardOperands(const float* x, const float* w,
                                                                                   int64_t n, int64_t in, int64_t out,
                                                                                   Bf16Operands* kept) {
  const __nv_bfloat16* x16 = nullptr;
  if (kept && kept->x_rounded) {  // the producer's rounding
    kept->x_rounded = false;
    x16 = static_cast<const __nv_bfloat16*>(kept->x);
  } else {
    x16 = ToBf16(x, n * in, kBf16B, kept ? kept->x : nullptr);
  }
  if (kept && kept->w_rounded) return {x16, static_cast<const __nv_bfloat16*>(kept->w)};  // the optimizer's copy
  return {x16, ToBf16(w, out * in, kBf16A, kept ? kept->w : nullptr)};
}

constexpr size_t kLtWorkspaceBytes = 32 << 20;  // what cuBLASLt's heuristics ask for on Hopper

bool CudaBackend::LtLinearForward(const __nv_bfloat16* x16, const __nv_bfloat16* w16, const void* b, int64_t n,
                                  int64_t in, int64_t out, void* y, cudaDataType y_type, void* gelu_pre) {
  if (!lt_->Ready(n, in, out, b, y_type, gelu_pre, kLtWorkspaceBytes)) return false;
  return lt_->Forward(x16, w16, b, n, in, out, y, y_type, gelu_pre, Scratch(kLtWorkspace, kLtWorkspaceBytes),
                      kLtWorkspaceBytes);
}

void CudaBackend::ForwardBf16(const __nv_bfloat16* x16, const __nv_bfloat16* w16, const float* b, int64_t n, int64_t in,
                              int64_t out, float* y) {
  if (b && LtLinearForward(x16, w16, b, n, in, out, y, CUDA_R_32F, nullptr)) return;  // the epilogue fused
  GemmBf16(Trans::kNo, Trans::kYes, n, out, in, 1.0f, x16, in, w16, in, 0.0f, y, out);
  if (b) {
    AddRowVectorKernel<<<Blocks(n * out, kThreads), kThreads>>>(y, b, n, out);
    STABILITY_CUDA_LAUNCHED("AddRowVectorKernel");
  }
}

// bf16 into `next`: one cuBLASLt product with the bias epilogue writing y rounded straight into
// next's operand (the bias rounded to bf16, as that epilogue takes it with a bf16 output; y
// widened from the operand only where asked, for telemetry): QKV's output for the attention,
// no fp32 pass over its N×3C values. Where cuBLASLt has no such kernel, the fp32 product by row
// chunks and the same bias add and rounding (PreActivationKernel without an activation).
void CudaBackend::LinearForward(const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out,
                                float* y, Bf16Operands* kept, Bf16Operands* next) {
  if (precision_ == MatmulPrecision::kBf16) {  // the operands rounded into the kept copies, if any
    const auto [x16, w16] = ForwardOperands(x, w, n, in, out, kept);
    if (__nv_bfloat16* y16 = NextOperand(next)) {
      const __nv_bfloat16* b16 = b ? ToBf16(b, out, kBf16Bias) : nullptr;
      if (!LtLinearForward(x16, w16, b16, n, in, out, y16, CUDA_R_16BF, nullptr)) {
        ProductAndPreActivation(Activation::kGelu /*none: no y*/, x16, w16, b16, n, in, out, y16, nullptr, nullptr);
      }
      if (y) {
        WidenKernel<<<Blocks(n * out, kThreads), kThreads>>>(y16, n * out, y);
        STABILITY_CUDA_LAUNCHED("WidenKernel");
      }
      return;
    }
    ForwardBf16(x16, w16, b, n, in, out, y);
    return;
  }
  Gemm(Trans::kNo, Trans::kYes, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
  if (b) {
    AddRowVectorKernel<<<Blocks(n * out, kThreads), kThreads>>>(y, b, n, out);
    STABILITY_CUDA_LAUNCHED("AddRowVectorKernel");
  }
}

// The product in fp32 by row chunks (kPreActivationChunkBytes of scratch), each then one
// PreActivationKernel pass: pre16 = x16·w16ᵀ + b16 rounded, and act of it into y/y16 where given.
constexpr int64_t kPreActivationChunkBytes = 16 << 20;
void CudaBackend::ProductAndPreActivation(Activation act, const __nv_bfloat16* x16, const __nv_bfloat16* w16,
                                          const __nv_bfloat16* b16, int64_t n, int64_t in, int64_t out,
                                          __nv_bfloat16* pre16, float* y, __nv_bfloat16* y16) {
  const int64_t chunk = std::max<int64_t>(1, kPreActivationChunkBytes / (out * static_cast<int64_t>(sizeof(float))));
  for (int64_t r = 0; r < n; r += chunk) {
    const int64_t rows = std::min(chunk, n - r);
    auto* z = static_cast<float*>(Scratch(kPreActivation, rows * out * sizeof(float)));
    GemmBf16(Trans::kNo, Trans::kYes, rows, out, in, 1.0f, x16 + r * in, in, w16, in, 0.0f, z, out);
    PreActivationKernel<<<Blocks(rows * out, kThreads), kThreads>>>(
        act, z, b16, rows, out, pre16 + r * out, y ? y + r * out : nullptr, y16 ? y16 + r * out : nullptr);
    STABILITY_CUDA_LAUNCHED("PreActivationKernel");
  }
}

// bf16: y_pre saved in bf16, the bias rounded to bf16 as cuBLASLt's bf16 epilogue takes it.
// GELU into `next`: one cuBLASLt product with the bias + GELU epilogue writing y rounded
// straight into next's operand and y_pre beside it — no fp32 pass over the N×4C values (y
// widened from next's operand only where asked, for telemetry). Otherwise
// ProductAndPreActivation: the same values from the same bf16 bias, the activation ours.
void CudaBackend::LinearActivationForward(Activation act, const float* x, const float* w, const float* b, int64_t n,
                                          int64_t in, int64_t out, void* y_pre, float* y, Bf16Operands* kept,
                                          Bf16Operands* next) {
  if (precision_ != MatmulPrecision::kBf16) {
    Backend::LinearActivationForward(act, x, w, b, n, in, out, y_pre, y, kept, next);
    return;
  }
  const auto [x16, w16] = ForwardOperands(x, w, n, in, out, kept);
  const __nv_bfloat16* b16 = b ? ToBf16(b, out, kBf16Bias) : nullptr;
  auto* pre16 = static_cast<__nv_bfloat16*>(y_pre);
  __nv_bfloat16* y16 = NextOperand(next);
  if (y16 && act == Activation::kGelu && LtLinearForward(x16, w16, b16, n, in, out, y16, CUDA_R_16BF, pre16)) {
    if (y) {
      WidenKernel<<<Blocks(n * out, kThreads), kThreads>>>(y16, n * out, y);
      STABILITY_CUDA_LAUNCHED("WidenKernel");
    }
    return;
  }
  ProductAndPreActivation(act, x16, w16, b16, n, in, out, pre16, y, y16);
}

void CudaBackend::LinearBackwardBf16(const float* x, const float* w, const __nv_bfloat16* dy16, int64_t n, int64_t in,
                                     int64_t out, void* dx, float* dw, float* db, const Bf16Operands* kept,
                                     cudaDataType dx_type, float dx_beta) {
  if (dx) {
    const auto* w16 = kept ? static_cast<const __nv_bfloat16*>(kept->w) : ToBf16(w, out * in, kBf16A);
    if (kept && kept->dx) {  // for the norm backward that reads it in bf16
      if (dx_beta != 0.0f) throw std::logic_error("LinearBackward: kept->dx with a dx the product adds into");
      dx = kept->dx;
      dx_type = CUDA_R_16BF;
    }
    GemmBf16(Trans::kNo, Trans::kNo, n, in, out, 1.0f, dy16, out, w16, in, dx_beta, dx, in, 1, 0, 0, 0, dx_type);
  }
  const auto* x16 = kept ? static_cast<const __nv_bfloat16*>(kept->x) : ToBf16(x, n * in, kBf16B);
  if (db) {  // BGRADB writes the sums: into scratch, then added to db
    auto* sums = static_cast<float*>(Scratch(kBiasGradient, out * sizeof(float)));
    if (lt_->WeightGradient(dy16, x16, n, in, out, dw, sums, Scratch(kLtWorkspace, kLtWorkspaceBytes),
                            kLtWorkspaceBytes)) {
      AddInPlace(db, sums, out);
      return;
    }
  }
  if (db) AddColumnSums(dy16, n, out, db);
  GemmBf16(Trans::kYes, Trans::kNo, out, in, n, 1.0f, dy16, out, x16, in, 1.0f, dw, in);
}

template <typename DY>
void CudaBackend::GradientToBf16(Activation act, const __nv_bfloat16* pre, const DY* dy, int64_t n, int64_t out,
                                 __nv_bfloat16* d16, float* db) {
  const int chunks = RowChunks(n);
  double* partials = db ? static_cast<double*>(Scratch(kColumnPartials, chunks * out * sizeof(double))) : nullptr;
  GradientToBf16Kernel<<<dim3(Blocks(out, kThreads), chunks), kThreads>>>(act, pre, dy, n, out, d16, partials);
  STABILITY_CUDA_LAUNCHED(pre ? "GradientToBf16Kernel" : "GradientToBf16Kernel (dy)");
  if (db) AddColumnTotals(partials, chunks, out, db);
}

__nv_bfloat16* CudaBackend::GradientOperand(const float* dy, int64_t n, int64_t out, float* db) {
  if (!db) return ToBf16(dy, n * out, kBf16C);
  auto* dy16 = static_cast<__nv_bfloat16*>(Scratch(kBf16C, n * out * sizeof(__nv_bfloat16)));
  GradientToBf16(Activation::kGelu /*unused: no pre-activation*/, nullptr, dy, n, out, dy16, db);
  return dy16;
}

const __nv_bfloat16* CudaBackend::BackwardOperand(const float* dy, int64_t n, int64_t out, float* db,
                                                  const Bf16Operands* kept, float** db_left) {
  if (kept && kept->dy_rounded) {
    *db_left = db;
    return static_cast<const __nv_bfloat16*>(kept->dy);
  }
  *db_left = nullptr;
  return GradientOperand(dy, n, out, db);
}

void CudaBackend::LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in, int64_t out,
                                 float* dx, float* dw, float* db, const Bf16Operands* kept) {
  if (precision_ == MatmulPrecision::kBf16) {
    float* db_left = nullptr;
    const __nv_bfloat16* dy16 = BackwardOperand(dy, n, out, db, kept, &db_left);
    LinearBackwardBf16(x, w, dy16, n, in, out, dx, dw, db_left, kept);
    return;
  }
  if (dx) Gemm(Trans::kNo, Trans::kNo, n, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in);
  Gemm(Trans::kYes, Trans::kNo, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
  if (db) AddColumnSums(dy, n, out, db);
}

void CudaBackend::LinearActivationBackward(Activation act, const float* x, const float* w, const void* y_pre,
                                           const float* dy, int64_t n, int64_t in, int64_t out, float* d_pre, float* dx,
                                           float* dw, float* db, const Bf16Operands* kept) {
  if (precision_ != MatmulPrecision::kBf16) {
    Backend::LinearActivationBackward(act, x, w, y_pre, dy, n, in, out, d_pre, dx, dw, db, kept);
    return;
  }
  auto* d16 = reinterpret_cast<__nv_bfloat16*>(d_pre);  // fits in the first half of the fp32 scratch
  GradientToBf16(act, static_cast<const __nv_bfloat16*>(y_pre), dy, n, out, d16, db);
  LinearBackwardBf16(x, w, d16, n, in, out, dx, dw, nullptr, kept);
}

// bf16, GELU: FC2's dx product through cuBLASLt's DGELU epilogue writes FC1's pre-activation
// gradient GELU'(pre) ⊙ (dz·w2) straight in bf16 (into d_pre's first half; GELU' of the fp32
// product), FC1's bias gradient its column sums: no dh at all, and no pass reading pre and dh.
// Where cuBLASLt has no such kernel (or another activation): FC2's dx product writes dh rounded
// to bf16 (into dh's first half), which FC1's GradientToBf16Kernel reads — 2 bytes of dh
// written and read a value, not 4 (FC1's backward rounds act'(y_pre)·dh to bf16 either way).
void CudaBackend::MlpBackward(Activation act, const LinearGradients& fc1, const LinearGradients& fc2, const void* y_pre,
                              const float* dz, int64_t n, int64_t in, int64_t hidden, int64_t out, float* dh,
                              float* d_pre, float* dx) {
  if (precision_ != MatmulPrecision::kBf16) {
    Backend::MlpBackward(act, fc1, fc2, y_pre, dz, n, in, hidden, out, dh, d_pre, dx);
    return;
  }
  const auto* pre16 = static_cast<const __nv_bfloat16*>(y_pre);
  auto* d16 = reinterpret_cast<__nv_bfloat16*>(d_pre);
  float* db2_left = nullptr;
  const __nv_bfloat16* dz16 = BackwardOperand(dz, n, out, fc2.db, fc2.kept, &db2_left);
  if (act == Activation::kGelu) {
    const auto* w2 = fc2.kept ? static_cast<const __nv_bfloat16*>(fc2.kept->w) : ToBf16(fc2.w, out * hidden, kBf16A);
    if (lt_->GeluBackward(dz16, w2, n, hidden, out, pre16, d16, Scratch(kLtWorkspace, kLtWorkspaceBytes),
                          kLtWorkspaceBytes)) {
      LinearBackwardBf16(fc2.x, fc2.w, dz16, n, hidden, out, nullptr, fc2.dw, db2_left, fc2.kept);
      LinearBackwardBf16(fc1.x, fc1.w, d16, n, in, hidden, dx, fc1.dw, fc1.db, fc1.kept);
      return;
    }
  }
  auto* dh16 = reinterpret_cast<__nv_bfloat16*>(dh);
  LinearBackwardBf16(fc2.x, fc2.w, dz16, n, hidden, out, dh16, fc2.dw, db2_left, fc2.kept, CUDA_R_16BF);
  GradientToBf16(act, pre16, dh16, n, hidden, d16, fc1.db);
  LinearBackwardBf16(fc1.x, fc1.w, d16, n, in, hidden, dx, fc1.dw, nullptr, fc1.kept);
}

void CudaBackend::Rope(const float* x, int64_t x_ld, float* y, int64_t y_ld, int64_t b, int64_t t, int64_t h,
                       int64_t hd, float base, bool inverse) {
  RopeKernel<<<Blocks(b * t * h * (hd / 2), kThreads), kThreads>>>(x, x_ld, y, y_ld, b, t, h, hd, base,
                                                                   inverse ? -1.0f : 1.0f);
  STABILITY_CUDA_LAUNCHED("RopeKernel");
}

void CudaBackend::ActivationForward(Activation act, const float* x, int64_t n, float* y) {
  ActivationForwardKernel<<<Blocks(n, kThreads), kThreads>>>(act, x, n, y);
  STABILITY_CUDA_LAUNCHED("ActivationForwardKernel");
}

void CudaBackend::ActivationBackward(Activation act, const float* x, const float* dy, int64_t n, float* dx) {
  ActivationBackwardKernel<<<Blocks(n, kThreads), kThreads>>>(act, x, dy, n, dx);
  STABILITY_CUDA_LAUNCHED("ActivationBackwardKernel");
}

void CudaBackend::Add(const float* x, const float* a, int64_t n, float* y) {
  AddKernel<<<Blocks(n, kThreads), kThreads>>>(x, a, n, y);
  STABILITY_CUDA_LAUNCHED("AddKernel");
}

void CudaBackend::AddInPlace(float* y, const float* x, int64_t n) { Add(y, x, n, y); }

void CudaBackend::Copy(const float* x, int64_t n, float* y) {
  Issued(cudaMemcpy(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice), "cudaMemcpy (device)");
}

void CudaBackend::ChannelScaleForward(const float* x, const float* s, int64_t n, int64_t c, float* y) {
  ChannelScaleKernel<<<Blocks(n * c, kThreads), kThreads>>>(x, s, n, c, y);
  STABILITY_CUDA_LAUNCHED("ChannelScaleKernel");
}

void CudaBackend::ChannelScaleBackward(const float* x, const float* s, const float* dy, int64_t n, int64_t c, float* dx,
                                       float* ds, Bf16Operands* next) {
  const int chunks = RowChunks(n);
  double* partials = static_cast<double*>(Scratch(kColumnPartials, chunks * c * sizeof(double)));
  ChannelScaleBackwardKernel<<<dim3(Blocks(c, kThreads), chunks), kThreads>>>(x, s, dy, n, c, dx, NextGradient(next),
                                                                              partials);
  STABILITY_CUDA_LAUNCHED("ChannelScaleBackwardKernel");
  AddColumnTotals(partials, chunks, c, ds);
}

void CudaBackend::AdamW(float* p, const float* grad, float* m, float* v, int64_t n, float lr, float beta1,
                        float beta2, float eps, float weight_decay, float bias_correction1, float bias_correction2,
                        float grad_scale) {
  const float step_size = lr / bias_correction1;
  const float sqrt_bc2 = std::sqrt(bias_correction2);
  const float decay = 1.0f - lr * weight_decay;
  AdamWKernel<<<Blocks(n, kThreads), kThreads>>>(p, grad, m, v, n, beta1, beta2, eps, step_size, sqrt_bc2, decay,
                                                 grad_scale);
  STABILITY_CUDA_LAUNCHED("AdamWKernel");
}

void CudaBackend::AdamWEach(const std::vector<AdamWBuffer>& buffers, float lr, float beta1, float beta2, float eps,
                            float bias_correction1, float bias_correction2, float grad_scale) {
  // The scalars as AdamW computes them (the same bits per buffer).
  const float step_size = lr / bias_correction1;
  const float sqrt_bc2 = std::sqrt(bias_correction2);
  for (size_t i = 0; i < buffers.size();) {
    AdamWBatch batch{};
    batch.first_block[0] = 0;
    while (batch.count < kAdamWMax && i < buffers.size()) {
      const AdamWBuffer& b = buffers[i++];
      if (b.n == 0) continue;
      const int k = batch.count++;
      batch.p[k] = b.p;
      batch.grad[k] = b.grad;
      batch.m[k] = b.m;
      batch.v[k] = b.v;
      batch.p16[k] = static_cast<__nv_bfloat16*>(b.p_bf16);
      batch.n[k] = b.n;
      batch.decay[k] = 1.0f - lr * b.weight_decay;
      batch.first_block[k + 1] = batch.first_block[k] + (b.n + kAdamWPerBlock - 1) / kAdamWPerBlock;
    }
    if (batch.count == 0) continue;
    AdamWEachKernel<<<static_cast<unsigned>(batch.first_block[batch.count]), kThreads>>>(
        batch, beta1, beta2, eps, step_size, sqrt_bc2, grad_scale);
    STABILITY_CUDA_LAUNCHED("AdamWEachKernel");
  }
}

DeviceMemory CudaBackend::Memory() const {
  int current = 0;
  cudaGetDevice(&current);
  cudaSetDevice(device_index_);
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  cudaSetDevice(current);
  return {static_cast<int64_t>(free_b), static_cast<int64_t>(total_b)};
}

double CudaBackend::SumSquares(const float* x, int64_t n) { return Dot(x, x, n); }

double CudaBackend::MeanRowNorm(const float* x, int64_t rows, int64_t d) {
  if (rows == 0) return 0;
  double* total = static_cast<double*>(Scratch(kReducePartials, (kReduceBlocks + 1) * sizeof(double)));
  RowNormSumInto(x, rows, d, total);
  double s = 0;
  Issued(cudaMemcpy(&s, total, sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy (row norms)");
  return s / rows;
}

void CudaBackend::Scale(float* x, int64_t n, float s) {
  ScaleKernel<<<Blocks(n, kThreads), kThreads>>>(x, n, s);
  STABILITY_CUDA_LAUNCHED("ScaleKernel");
}

}  // namespace internal

absl::StatusOr<Backend*> InitCudaBackend(int device_index) {
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::UnavailableError(absl::StrFormat(
        "no GPU is visible (cudaGetDeviceCount: %s); use --device=cpu",
        e == cudaSuccess ? "0 devices" : cudaGetErrorString(e)));
  }
  if (device_index < 0 || device_index >= count) {
    return absl::InvalidArgumentError(absl::StrFormat("cuda:%d does not exist: %d GPU(s) visible (cuda:0 .. cuda:%d)",
                                                      device_index, count, count - 1));
  }
  // Never destroyed: tensors may outlive main(), and CUDA must not be torn down under them.
  static auto* allocator = new internal::CudaAllocator;
  static auto* backends = new std::vector<internal::CudaBackend*>(count, nullptr);
  std::string blas_error;
  const internal::CublasApi* blas = internal::LoadCublas(&blas_error);
  if (blas == nullptr)
    return absl::UnavailableError(absl::StrFormat("cuda:%d cannot be used: %s", device_index, blas_error));
  if ((*backends)[device_index] == nullptr) {
    try {
      (*backends)[device_index] = new internal::CudaBackend(device_index, blas);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrFormat("cuda:%d cannot be used: %s", device_index, e.what()));
    }
  }
  if (cudaError_t e = cudaSetDevice(device_index); e != cudaSuccess) {
    return absl::UnavailableError(absl::StrFormat("cuda:%d: cudaSetDevice: %s", device_index, cudaGetErrorString(e)));
  }
  RegisterAllocator(DeviceType::kCuda, allocator);
  RegisterBackend(DeviceType::kCuda, (*backends)[device_index]);
  return (*backends)[device_index];
}

absl::Status CublasStatus() {
  std::string error;
  return internal::LoadCublas(&error) != nullptr ? absl::OkStatus() : absl::UnavailableError(error);
}

}  // namespace stability::ops::cuda
