// What the CUDA kernels of ops/cuda share: the backend class, error checks, the
// row-major GEMM over cuBLAS, deterministic reductions and device scratch.
#ifndef STABILITY_OPS_CUDA_INTERNAL_COMMON_CUH_
#define STABILITY_OPS_CUDA_INTERNAL_COMMON_CUH_

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "stability/ops/backend.h"
#include "stability/ops/cuda/cuda_backend.h"
#include "stability/ops/cuda/internal/kernel_profile.cuh"
#include "stability/ops/cuda/internal/lt_linear.cuh"

namespace stability::ops::cuda::internal {

// CUDA errors inside an op are bugs or a broken device: they throw, with the call named.
inline void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}
inline void Check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLAS: ") + what + ": status " + std::to_string(static_cast<int>(s)));
  }
}
// After every launch: a launch error throws, with the launch named; the kernel profile, when
// on, marks it.
inline void Launched(const char* what) {
  Check(cudaGetLastError(), what);
  if (Profile().on()) Profile().Mark(what);
}
#define STABILITY_CUDA_LAUNCHED(what) ::stability::ops::cuda::internal::Launched(what)
// A copy or memset: checked, and marked in the kernel profile like a launch.
inline void Issued(cudaError_t e, const char* what) {
  Check(e, what);
  if (Profile().on()) Profile().Mark(what);
}

// A kernel over 48 KB of dynamic shared memory must say so before its launch; past the
// device's limit this throws, naming the kernel and the bytes.
template <typename Kernel>
void AllowSharedBytes(Kernel kernel, size_t bytes, const char* what) {
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA: ") + what + " needs " + std::to_string(bytes) +
                             " bytes of shared memory a block, more than this device allows: " + cudaGetErrorString(e));
  }
}

// A matrix product's row in the kernel profile: "<what> M×N×K" (× batch when batched).
inline void MarkProduct(const char* what, int64_t m, int64_t n, int64_t k, int64_t batch = 1) {
  if (!Profile().on()) return;
  std::string name = std::string(what) + " " + std::to_string(m) + "×" + std::to_string(n) + "×" + std::to_string(k);
  if (batch > 1) name += " ×" + std::to_string(batch);
  Profile().Mark(name);
}

// cudaMalloc, or std::bad_alloc after printing the bytes asked for and free (the trainer
// turns it into an out-of-memory error with what to change).
void* DeviceMalloc(size_t bytes);

// Row chunks of the deterministic column sums (a function of the shape alone, so the order
// of the sums is fixed): about 64 rows a chunk. A GPT-2 matrix (8,192 × 768) gets 128
// chunks, 384 blocks; a per-head norm's gradient (98,304 rows × 64) 1,536 — with a fixed
// number its threads would each walk thousands of rows, one dependent load at a time.
inline int RowChunks(int64_t rows) { return static_cast<int>(rows < 64 ? 1 : rows / 64 < 4096 ? rows / 64 : 4096); }

inline int Blocks(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

// Grid of the two-pass reductions (partial sums, then one block over the partials): a
// function of the length alone, so a buffer's summation order never changes. Large buffers
// get the full grid; small ones (a bias, a norm's gain) about 8 values a thread instead of
// 256 blocks mostly idle. GPT-2 124M's matrices all get the full grid.
constexpr int kReduceBlocks = 256;
constexpr int kReduceThreads = 256;
inline int ReduceBlocks(int64_t n) {
  const int64_t blocks = (n + 8 * kReduceThreads - 1) / (8 * kReduceThreads);
  return blocks < 1 ? 1 : blocks > kReduceBlocks ? kReduceBlocks : static_cast<int>(blocks);
}

// Buffer k of a batch owns the blocks [first_block[k], first_block[k + 1]); the buffer of
// block b (first_block ascending, count ≥ 1).
template <typename Int>
__device__ inline int BufferOfBlock(const Int* first_block, int count, int64_t b) {
  int k = 0;
  while (k + 1 < count && b >= first_block[k + 1]) ++k;
  return k;
}

// Reductions over a warp, then over the block, along a fixed tree: the same bits every run.
// A FloatPair is two values reduced in one tree (one set of barriers), each with the bits it
// would get alone. Another type reduces when it has a ShuffleDown overload (found by ADL).
struct FloatPair {
  float a, b;
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
  __device__ FloatPair operator()(FloatPair x, FloatPair y) const { return {x.a + y.a, x.b + y.b}; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ FloatPair operator()(FloatPair x, FloatPair y) const { return {fmaxf(x.a, y.a), fmaxf(x.b, y.b)}; }
};

// An fp32 or bf16 buffer's value as fp32 (kernels templated on what they read).
__device__ inline float Load(const float* x) { return *x; }
__device__ inline float Load(const __nv_bfloat16* x) { return __bfloat162float(*x); }
// x into an fp32 or bf16 buffer (rounded to nearest even).
__device__ inline void Store(float x, float* y) { *y = x; }
__device__ inline void Store(float x, __nv_bfloat16* y) { *y = __float2bfloat16_rn(x); }

// A grid-stride loop over i = start, start + stride, … < n, kBatch indices at a time: value(i)
// for each of a batch first — its loads —, then store(i, value) for each. A loop that stores
// as it goes cannot issue its next load before the store (the pointers may alias as far as the
// compiler knows), so it waits out one memory latency an element.
template <int kBatch, typename Value, typename Store>
__device__ inline void GridStrideBatched(int64_t start, int64_t stride, int64_t n, Value value, Store store) {
  using T = decltype(value(start));
  for (int64_t i = start; i < n; i += kBatch * stride) {
    T v[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      if (i + k * stride < n) v[k] = value(i + k * stride);
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      if (i + k * stride < n) store(i + k * stride, v[k]);
    }
  }
}

// tanh(x) = 1 − 2/(e^(2x) + 1) on the fast exponential and division (e^(2x) = ∞ gives 1, 0
// gives −1): at most 7e-7 off, absolute, by the two intrinsics' documented error bounds (a
// float64 sweep of x in [−30, 30]: worst 6.5e-7 near x = −4.3), for a few instructions where
// tanhf's accurate polynomial and the branch between its two ranges take several times as many.
// For math whose result is rounded to bf16 (2⁻⁹) anyway.
__device__ inline float FastTanh(float x) { return 1.0f - __fdividef(2.0f, __expf(2.0f * x) + 1.0f); }

// 2^x and 1/x in one MUFU instruction each (ex2/rcp.approx.ftz: ~2 ulp relative; results
// under 2⁻¹²⁶ flush to zero) — what __expf and __fdividef are made of, less their scaling and
// subnormal handling, for math rounded to bf16 afterwards (the tensor-core attention's softmax).
#if defined(STABILITY_OPS_CUDA_EMULATOR_CUDA_EMULATOR_H_)
__device__ inline float Exp2Approx(float x) { return std::exp2(x); }
__device__ inline float RcpApprox(float x) { return 1.0f / x; }
#else
__device__ inline float Exp2Approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ inline float RcpApprox(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
#endif

__device__ inline float ShuffleDown(float v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
__device__ inline double ShuffleDown(double v, int o) { return __shfl_down_sync(0xffffffffu, v, o); }
__device__ inline FloatPair ShuffleDown(FloatPair v, int o) { return {ShuffleDown(v.a, o), ShuffleDown(v.b, o)}; }

template <typename T, typename Op>
__device__ inline T WarpReduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, ShuffleDown(v, o));
  return v;  // lane 0 holds the result
}
__device__ inline double WarpSum(double v) { return WarpReduce(v, SumOp{}); }
// Σ v over each aligned group of L lanes (L = 32: the warp) in every lane of it: a butterfly,
// where the two lanes of each pair add the same two values (addition commutes), so every lane
// of a group ends with the same bits. Every lane of the warp takes part.
template <int L = 32>
__device__ inline double GroupAllSum(double v) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float WarpSum(float v) { return WarpReduce(v, SumOp{}); }

// For blockDim.x a multiple of 32 (≤ 1024); every thread gets the result. Each
// instantiation has its own shared slots. Two calls in a row need no barrier between them:
// the next call writes warp_part before its first barrier, which this call's readers of
// warp_part passed at its second, and total only after it, which every reader of total
// reaches after reading it (the emulator's race checker, cuda_backend_racecheck_test, agrees).
template <typename T, typename Op>
__device__ inline T BlockReduce(T v, T identity, Op op) {
  __shared__ T warp_part[32];
  __shared__ T total;
  v = WarpReduce(v, op);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < (blockDim.x >> 5) ? warp_part[lane] : identity;
    w = WarpReduce(w, op);
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}
template <typename T>
__device__ inline T BlockSum(T v) {
  return BlockReduce(v, T(0), SumOp{});
}
__device__ inline FloatPair BlockSum(FloatPair v) { return BlockReduce(v, FloatPair{0.0f, 0.0f}, SumOp{}); }
__device__ inline float BlockMax(float v) { return BlockReduce(v, -INFINITY, MaxOp{}); }
__device__ inline FloatPair BlockMax(FloatPair v) { return BlockReduce(v, FloatPair{-INFINITY, -INFINITY}, MaxOp{}); }

// Σ x[i] over i < n by one block in a fixed order (each thread its stride, then the tree):
// the second pass of every two-pass reduction, so that batched and single ones agree.
__device__ inline double BlockSumInOrder(const double* x, int64_t n) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  return BlockSum(s);
}

// Block `block` of the `blocks` (ReduceBlocks(n)) of Σ a[i]·b[i] over i < n, in double: each
// thread its stride, one fused multiply-add a term, then the block's tree. Every reduction that
// promises another's bits (a dot, a sum of squares, batched or not) goes through here.
__device__ inline double DotPartial(const float* a, const float* b, int64_t n, int64_t block, int64_t blocks) {
  double s = 0;
  for (int64_t i = block * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x) {
    s = fma(static_cast<double>(a[i]), static_cast<double>(b[i]), s);
  }
  return BlockSum(s);
}

enum class Trans : char { kNo = 'N', kYes = 'T' };

// Throws where an attention kernel that reads q, k, v in fp32 is given them in bf16 alone
// (kept->x_rounded on AttentionForward's entry): a caller's error, not a fallback.
void RefuseRoundedInputs(const Bf16Operands* kept);
// The same for dout given in bf16 alone (kept->dy_rounded on AttentionBackward's entry).
void RefuseRoundedGradient(const Bf16Operands* kept);

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device_index, const struct CublasApi* blas);
  ~CudaBackend() override;
  Device device() const override { return {DeviceType::kCuda, device_index_}; }
  const char* name() const override { return "cuda"; }
  bool SetMatmulPrecision(MatmulPrecision precision) override;
  bool SetAttentionKernel(AttentionKernel kernel) override {
    attention_kernel_ = kernel;
    return true;
  }

  void EmbeddingForward(const int32_t* ids, int64_t n, int64_t t, const float* wte, const float* wpe, int64_t c,
                        float* out) override;
  void EmbeddingBackward(const int32_t* ids, int64_t n, int64_t t, const float* dout, int64_t c, float* dwte,
                         float* dwpe) override;
  void LinearForward(const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out, float* y,
                     Bf16Operands* kept, Bf16Operands* next) override;
  void LinearActivationForward(Activation act, const float* x, const float* w, const float* b, int64_t n, int64_t in,
                               int64_t out, void* y_pre, float* y, Bf16Operands* kept, Bf16Operands* next) override;
  void LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in, int64_t out, float* dx,
                      float* dw, float* db, const Bf16Operands* kept) override;
  void LinearActivationBackward(Activation act, const float* x, const float* w, const void* y_pre, const float* dy,
                                int64_t n, int64_t in, int64_t out, float* d_pre, float* dx, float* dw, float* db,
                                const Bf16Operands* kept) override;
  void MlpBackward(Activation act, const LinearGradients& fc1, const LinearGradients& fc2, const void* y_pre,
                   const float* dz, int64_t n, int64_t in, int64_t hidden, int64_t out, float* dh, float* d_pre,
                   float* dx) override;
  void NormForward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* b, int64_t rows,
                   int64_t d, float eps, float* y, float* mean, float* rstd, Bf16Operands* next) override;
  void NormBackward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* mean,
                    const float* rstd, const float* dy, int64_t rows, int64_t d, float* dx, float* dg, float* db,
                    Bf16Operands* next) override;
  void AddNormForward(NormKind kind, const float* x, const float* a, const float* s, const float* g, const float* b,
                      int64_t rows, int64_t d, float eps, float* sum, float* y, float* mean, float* rstd,
                      Bf16Operands* next) override;
  void AddNormBackward(NormKind kind, const float* sum, const float* g, const float* mean, const float* rstd,
                       const float* dy, int64_t rows, int64_t d, float* dsum, float* dg, float* db,
                       const Bf16Operands* from, Bf16Operands* next) override;
  void AttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h, int64_t hd,
                        const AttentionOptions& opt, const AttentionStrides& ld, float* out, float* probs, float* lse,
                        AttentionStats* stats, Bf16Operands* kept, Bf16Operands* next) override;
  void AttentionBackward(const float* q, const float* k, const float* v, const float* out, const float* probs,
                         const float* lse, const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                         const AttentionOptions& opt, const AttentionStrides& ld, const Bf16Operands* kept, float* dq,
                         float* dk, float* dv) override;
  void AttentionQkvBackward(const float* qkv, const float* q, const float* k, const float* v,
                            const AttentionStrides& ld, const float* out, const float* probs, const float* lse,
                            const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd, const AttentionOptions& opt,
                            const Bf16Operands* kept, const QkvNorms& norms, const LinearGradients& qkv_layer,
                            float* dq, float* dk, float* dv, float* dqkv, float* dx, bool accumulate_dx) override;
  void Rope(const float* x, int64_t x_ld, float* y, int64_t y_ld, int64_t b, int64_t t, int64_t h, int64_t hd,
            float base, bool inverse) override;
  void ActivationForward(Activation act, const float* x, int64_t n, float* y) override;
  void ActivationBackward(Activation act, const float* x, const float* dy, int64_t n, float* dx) override;
  void Add(const float* x, const float* a, int64_t n, float* y) override;
  void AddInPlace(float* y, const float* x, int64_t n) override;
  void Copy(const float* x, int64_t n, float* y) override;
  void ChannelScaleForward(const float* x, const float* s, int64_t n, int64_t c, float* y) override;
  void ChannelScaleBackward(const float* x, const float* s, const float* dy, int64_t n, int64_t c, float* dx, float* ds,
                            Bf16Operands* next) override;
  void SigmaReparamForward(const float* w, const float* g, int64_t out, int64_t in, bool update, float* u, float* v,
                           float* sigma, float* w_eff) override;
  void SigmaReparamBackward(const float* w, const float* g, const float* sigma, const float* u, const float* v,
                            const float* dw_eff, int64_t out, int64_t in, float* dw, float* dg) override;
  // sigma_reparam.cu: batched over layers (the single-layer ops are a batch of one).
  void SigmaReparamForwardEach(const std::vector<SigmaReparamLayer>& layers, bool update) override;
  void SigmaReparamBackwardEach(const std::vector<SigmaReparamLayer>& layers) override;
  void CrossEntropyForward(const float* logits, const int32_t* targets, int64_t n, int64_t v,
                           const CrossEntropyOptions& opt, float* lse, CrossEntropyStats* stats) override;
  void CrossEntropyBackward(const float* logits, const int32_t* targets, const float* lse, int64_t n, int64_t v,
                            const CrossEntropyOptions& opt, float dloss, float* dlogits) override;
  int64_t SavedValueBytes() const override { return precision_ == MatmulPrecision::kBf16 ? 2 : 4; }
  int64_t LogitsRowStride(int64_t v) const override;  // cross_entropy.cu
  bool CrossEntropyLinearForward(const float* x, const float* w, const int32_t* targets, int64_t n, int64_t c,
                                 int64_t v, const CrossEntropyOptions& opt, void* logits, float* lse,
                                 CrossEntropyStats* stats, Bf16Operands* kept, bool with_gradient) override;
  void CrossEntropyLinearBackward(const void* logits, const int32_t* targets, const float* lse, int64_t n, int64_t v,
                                  const CrossEntropyOptions& opt, float dloss, const float* x, const float* w,
                                  int64_t c, void* dlogits, float* dx, float* dw, const Bf16Operands* kept,
                                  bool gradient_ready) override;
  void AdamW(float* p, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, float bias_correction1, float bias_correction2, float grad_scale) override;
  void AdamWEach(const std::vector<AdamWBuffer>& buffers, float lr, float beta1, float beta2, float eps,
                 float bias_correction1, float bias_correction2, float grad_scale) override;
  double SumSquares(const float* x, int64_t n) override;
  double MeanRowNorm(const float* x, int64_t rows, int64_t d) override;
  void Scale(float* x, int64_t n, float s) override;
  void QueueSumSquares(const float* x, int64_t n) override;
  void QueueMeanRowNorm(const float* x, int64_t rows, int64_t d) override;
  void QueueMeanRowNormOfSaved(const void* x, int64_t rows, int64_t d) override;
  void QueueSumSquaresOfEach(const std::vector<std::pair<const float*, int64_t>>& xs) override;
  std::vector<double> ReadQueued() override;
  void QueueValue(const float* x) override;
  bool StartKernelProfile() override {
    Profile().Start();
    return true;
  }
  std::vector<KernelTime> StopKernelProfile() override { return Profile().Stop(); }

  // Row-major C[M,N] = alpha·op(A)·op(B) + beta·C (the CPU Sgemm's contract), `batch`
  // times with element strides between the matrices.
  void Gemm(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
            const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int64_t batch = 1, int64_t stride_a = 0,
            int64_t stride_b = 0, int64_t stride_c = 0);
  // Gemm in fp32 whatever the precision (cuBLAS SGEMM).
  void GemmFp32(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int64_t batch = 1,
                int64_t stride_a = 0, int64_t stride_b = 0, int64_t stride_c = 0);
  // The same product from operands already rounded to bf16 (tensor cores, fp32 accumulation).
  // c_type: C's element type, fp32 (float* c) or CUDA_R_16BF (C rounded to bf16).
  void GemmBf16(Trans ta, Trans tb, int64_t m, int64_t n, int64_t k, float alpha, const __nv_bfloat16* a, int64_t lda,
                const __nv_bfloat16* b, int64_t ldb, float beta, void* c, int64_t ldc, int64_t batch = 1,
                int64_t stride_a = 0, int64_t stride_b = 0, int64_t stride_c = 0, cudaDataType c_type = CUDA_R_32F);
  // LinearBackward's two products from dy already in bf16 (x and w: the forward's kept
  // copies, or rounded here); dx (nullable) fp32, or bf16 where dx_type says so — or, where
  // kept->dx is set, into kept->dx in bf16 instead; dx_beta 1: dx added to (fp32), in the
  // product's epilogue. db (nullable): the bias gradient += Σ_n dy16, from the
  // weight-gradient product's cuBLASLt BGRADB epilogue where it has one (no pass over dy16),
  // else a column-sum pass.
  void LinearBackwardBf16(const float* x, const float* w, const __nv_bfloat16* dy16, int64_t n, int64_t in, int64_t out,
                          void* dx, float* dw, float* db, const Bf16Operands* kept, cudaDataType dx_type = CUDA_R_32F,
                          float dx_beta = 0.0f);
  // The loss head's products in bf16 (cross_entropy.cu), over the vocabulary in aligned
  // pieces: logits [n, v] (rows ld apart, bf16) = x·wᵀ; dx = dy_scale·dl·w (fp32, overwritten)
  // and dw += dy_scale·dlᵀ·x from dl [n, v] (rows ld apart). x and w: kept's, or rounded here.
  void HeadForwardBf16(const float* x, const float* w, int64_t n, int64_t c, int64_t v, int64_t ld,
                       __nv_bfloat16* logits, Bf16Operands* kept);
  void HeadBackwardBf16(const float* x, const float* w, const __nv_bfloat16* dl, int64_t n, int64_t c, int64_t v,
                        int64_t ld, float dy_scale, float* dx, float* dw, const Bf16Operands* kept);
  // A bf16 linear backward's gradient operand: act'(pre)·dy (pre, as LinearActivationForward
  // saved it in bf16; null: dy, act unused), dy fp32 or bf16, rounded to bf16 into d16, its
  // column sums added to db (nullable) on the way.
  // dy rounded to bf16 (scratch kBf16C) once for a linear backward's two products; with a
  // bias gradient db, its sums taken in the same pass (dy read once).
  __nv_bfloat16* GradientOperand(const float* dy, int64_t n, int64_t out, float* db);
  template <typename DY>
  void GradientToBf16(Activation act, const __nv_bfloat16* pre, const DY* dy, int64_t n, int64_t out,
                      __nv_bfloat16* d16, float* db);
  // x[0, n) rounded to bf16 into `into` (n bf16 values) or, when null, scratch slot `slot`
  // (kBf16A/B/C).
  __nv_bfloat16* ToBf16(const float* x, int64_t n, int slot, void* into = nullptr);
  bool KeepsBf16Operands() const override { return precision_ == MatmulPrecision::kBf16; }
  DeviceMemory Memory() const override;
  bool AttentionStoresProbs(int64_t head_dim) const override {
    return attention_kernel_ == AttentionKernel::kGemm || !FusedAttentionSupports(head_dim);
  }
  bool AttentionReadsRoundedInputs(int64_t head_dim, const AttentionOptions& opt) const override;
  static bool FusedAttentionSupports(int64_t head_dim) {
    return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 96 || head_dim == 128;
  }
  // fused_attention.cu; false (nothing done) for a head dim it has no kernel for.
  // kept, next: as AttentionForward's (the tensor-core kernels use them).
  bool FusedAttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                             int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld, float* out,
                             float* lse, AttentionStats* stats, Bf16Operands* kept, Bf16Operands* next);
  bool FusedAttentionBackward(const float* q, const float* k, const float* v, const float* out, const float* lse,
                              const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                              const AttentionOptions& opt, const AttentionStrides& ld, const Bf16Operands* kept,
                              float* dq, float* dk, float* dv);
  // tensor_core_attention.cu (bf16): false, nothing done, for a head dim it has no kernel
  // for or buffers not 16-byte aligned. Per-row telemetry into row_max and row_entropy;
  // rowd [B·H·T] is the backward's scratch; dq, dk, dv fp32 or bf16 (G).
  // out16 (nullable): out rounded to bf16 as well. kept (nullable): AttentionForward's — the
  // forward rounds q, k, v into kept->x (else into scratch), the backward reads them there
  // where kept->x_rounded (else rounds them into scratch).
  bool TensorCoreAttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                                  int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld, float* out,
                                  __nv_bfloat16* out16, float* lse, float* row_max, double* row_entropy,
                                  Bf16Operands* kept);
  template <typename G>
  bool TensorCoreAttentionBackward(const float* q, const float* k, const float* v, const float* out, const float* lse,
                                   const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                                   const AttentionOptions& opt, const AttentionStrides& ld, const Bf16Operands* kept,
                                   G* dq, G* dk, G* dv, float* rowd);
  // The per-row attention telemetry (device arrays) → stats, reduced on the host in row order.
  void ReadAttentionStats(const double* row_entropy, const float* row_max, int64_t rows, AttentionStats* stats);
  // next->x (marked rounded) where an op writes its output straight into the next
  // product's bf16 operand (bf16 only; null otherwise).
  __nv_bfloat16* NextOperand(Bf16Operands* next);
  // next->dy (marked rounded) where a norm's backward writes its dx straight into the next
  // product's bf16 gradient operand (bf16 only; null otherwise).
  __nv_bfloat16* NextGradient(Bf16Operands* next);
  // A bf16 backward's dy operand: kept->dy where the op before rounded it there (dy_rounded;
  // the bias gradient, db, then left to the weight-gradient product: *db_left = db), else dy
  // rounded here with db's column sums on the way (*db_left = nullptr).
  const __nv_bfloat16* BackwardOperand(const float* dy, int64_t n, int64_t out, float* db, const Bf16Operands* kept,
                                       float** db_left);
  // A bf16 forward's operands: x as the op that produced it left it rounded in kept
  // (x_rounded, then cleared), else rounded here (into kept when given); w rounded (into kept).
  std::pair<const __nv_bfloat16*, const __nv_bfloat16*> ForwardOperands(const float* x, const float* w, int64_t n,
                                                                        int64_t in, int64_t out, Bf16Operands* kept);
  // y = x·wᵀ + b (fp32) from bf16 operands (b nullable): cuBLASLt with the bias in its
  // epilogue where it has a kernel for it, else cuBLAS and a pass adding the bias.
  // cuda_backend.cu's: pre16 = x16·w16ᵀ + b16 (rounded), y/y16 (each nullable) = act(pre).
  void ProductAndPreActivation(Activation act, const __nv_bfloat16* x16, const __nv_bfloat16* w16,
                               const __nv_bfloat16* b16, int64_t n, int64_t in, int64_t out, __nv_bfloat16* pre16,
                               float* y, __nv_bfloat16* y16);
  void ForwardBf16(const __nv_bfloat16* x16, const __nv_bfloat16* w16, const float* b, int64_t n, int64_t in,
                   int64_t out, float* y);
  // cuBLASLt (internal/lt_linear.cuh): y = x·wᵀ + b, or with gelu_pre, gelu_pre = x·wᵀ + b
  // and y = GELU of it; y, b and gelu_pre of y_type. False, nothing written, where cuBLASLt
  // has no kernel for it.
  bool LtLinearForward(const __nv_bfloat16* x16, const __nv_bfloat16* w16, const void* b, int64_t n, int64_t in,
                       int64_t out, void* y, cudaDataType y_type, void* gelu_pre);
  // Device scratch of at least `bytes` in slot i (grows, kept).
  void* Scratch(int slot, size_t bytes);
  // Blocks of `kernel` (threads a block, dynamic shared bytes) the whole GPU holds at once:
  // SMs × cudaOccupancyMaxActiveBlocksPerMultiprocessor, asked once per kernel and launch shape;
  // 0 where the runtime cannot say. A grid of whole multiples of it leaves no last wave partly
  // empty.
  int ResidentBlocks(const void* kernel, int threads, size_t shared) const;
  // Σ a·b over n elements in double, deterministic (a fixed grid of partial sums, then one
  // block's fixed tree), into *out on the device or returned.
  void DotInto(const float* a, const float* b, int64_t n, double* out);
  double Dot(const float* a, const float* b, int64_t n);
  // NormBackward (dx overwritten) and AddNormBackward (accumulate: dx +=); dy and dx fp32,
  // or bf16 (AttentionQkvBackward's: the attention's bf16 gradient in, QKV's operand out);
  // dx16 (nullable; x_rows contiguous): dx as stored, rounded to bf16 (the next product's dy).
  template <typename DY, typename DX>
  void NormBackwardRows(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* mean,
                        const float* rstd, const DY* dy, int64_t rows, int64_t d, bool accumulate, DX* dx, float* dg,
                        float* db, __nv_bfloat16* dx16 = nullptr);
  // Σ over rows of ‖x[r, :]‖ in double into *out on the device (MeanRowNorm's numerator);
  // x fp32 or bf16.
  template <typename In>
  void RowNormSumInto(const In* x, int64_t rows, int64_t d, double* out);
  // out[cols] += Σ over `chunks` row chunks of partials [chunks, cols], in chunk order.
  void AddColumnTotals(const double* partials, int chunks, int64_t cols, float* out);
  // Column sums of x [rows, cols] (fp32 or bf16) added to out[cols] (+=), deterministic.
  template <typename In>
  void AddColumnSums(const In* x, int64_t rows, int64_t cols, float* out);

 private:
  int device_index_;
  int multiprocessors_ = 0;
  mutable std::map<std::tuple<const void*, int, size_t>, int> resident_blocks_;  // ResidentBlocks'
  const struct CublasApi* blas_;  // internal/cublas_api.cuh: opened at run time, not linked
  cublasHandle_t cublas_ = nullptr;
  std::unique_ptr<LtLinear> lt_;
  MatmulPrecision precision_ = MatmulPrecision::kFp32;
  AttentionKernel attention_kernel_ = AttentionKernel::kGemm;
  // ReadQueued's batch: values on the device, each divided on the host by its divisor
  // (rows for a mean row norm, 1 for a sum of squares), as MeanRowNorm divides.
  static constexpr int kQueueCapacity = 1024;
  double* queue_dev_ = nullptr;                // kQueueCapacity slots
  std::vector<double> queue_divisors_;         // one per queued value
  std::vector<double> queue_read_;             // values already copied back (a full batch)
  double* NextQueueSlot(double divisor);
  static constexpr int kSlots = 17;
  void* scratch_[kSlots] = {};
  size_t scratch_bytes_[kSlots] = {};
};

// Scratch slots (one use each, so no two live uses collide).
enum ScratchSlot {
  kReducePartials = 0,
  kColumnPartials = 1,
  kAttentionTile = 2,
  kAttentionClip = 3,
  kRowStats = 4,
  kVector = 5,  // σ-reparam's w v of a batch of layers
  kBf16A = 6,   // a GEMM's operands rounded to bf16 (MatmulPrecision::kBf16)
  kBf16B = 7,
  kLtWorkspace = 8,         // cuBLASLt's
  kSigma = 9,               // σ-reparam's σ of a batch of layers, in double
  kBf16C = 10,              // a third bf16 operand (LinearBackward's dy, shared by its two products)
  kTokenOrder = 11,         // EmbeddingBackward's positions sorted by token id
  kEachPartials = 12,       // QueueSumSquaresOfEach's partial sums, σ-reparam's ⟨G, w⟩ ones
  kPreActivation = 13,      // a row chunk of FC1's fp32 pre-activation, where cuBLASLt's GELU epilogue is not taken
  kBf16Bias = 14,           // FC1's bias rounded to bf16 (the type of its bf16 output)
  kBiasGradient = 15,       // a bias gradient from cuBLASLt's BGRADB epilogue (which overwrites), to add
  kAttentionOperands = 16,  // the tensor-core attention's q, k, v and dO in bf16 (tensor_core_attention.cu)
};

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_COMMON_CUH_
