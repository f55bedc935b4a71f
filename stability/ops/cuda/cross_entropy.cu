// Cross-entropy with the final-logit soft cap and z-loss on the GPU (math in
// ops/backend.h). Forward: one block per row, one pass (online max and Σ exp(z − max)), so
// the probabilities are never stored and the logits are read once (N×V: 1.6 GB at GPT-2
// 124M, 4.2 GB at the 830M shape's 256K vocabulary); backward recomputes them elementwise
// from the saved log-sum-exp. The loss statistics are summed on the host in row order, as
// the CPU does. In bf16 the loss head (CrossEntropyLinearForward/Backward) keeps its logits
// and their gradient in bf16 (SavedValueBytes() = 2) and does all its math in fp32; in a
// training step (with_gradient) one kernel does both, the gradient written over the logits.
// In bf16 the logits' rows are padded to a multiple of 64 values (LogitsRowStride: 128-byte
// rows) and the head's products split the vocabulary into a piece of whole 64s and the rest:
// GPT-2's 50,257 made every row unaligned, and on an H200 cuBLAS ran the three head products
// at 96–152 TFLOP/s against 344–838 for aligned shapes (docs/gpu/README.md); the loss kernels
// read and write aligned rows 16 bytes at a time.
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "stability/ops/cuda/internal/common.cuh"
#include "stability/ops/row_stats.h"

namespace stability::ops::cuda::internal {
namespace {

constexpr int kRowThreads = 256;

// The elementwise math for logits of type In: fp32 logits (the parity mode) with expf and
// tanhf, as the CPU; bf16 logits (training) with __expf and FastTanh — their ~1e-6 relative
// and 7e-7 absolute errors far under the logits' own 2⁻⁹ rounding, for a fraction of the
// instructions a logit (the loss kernel ran compute-bound on the H200: ~240 G logits/s at
// both GPT-2's and the 830M shape's vocabulary, whether its second pass hit the caches or not).
template <typename In>
struct LossMath {
  __device__ static float Exp(float x) { return expf(x); }
  __device__ static float Tanh(float x) { return tanhf(x); }
};
template <>
struct LossMath<__nv_bfloat16> {
  __device__ static float Exp(float x) { return __expf(x); }
  __device__ static float Tanh(float x) { return FastTanh(x); }
};

template <typename In>
__device__ inline float Cap(float l, float cap) {
  return cap > 0 ? cap * LossMath<In>::Tanh(l * (1.0f / cap)) : l;
}

// A running softmax denominator: Σ exp(z − m) over what was seen, m its largest z. A plain
// aggregate (no initialisers), so that it may live in shared memory; Empty() starts one.
struct MaxSum {
  float m, s;
  __device__ static MaxSum Empty() { return {-INFINITY, 0.0f}; }
  // K values z at once, zmax their largest: one rescale and K independent exponentials, not a
  // compare and a branch a value.
  template <typename In, int K>
  __device__ void Add(const float (&z)[K], float zmax) {
    if (zmax > m) {
      s *= LossMath<In>::Exp(m - zmax);  // m = −∞ at first: 0 · 0
      m = zmax;
    }
#pragma unroll
    for (int i = 0; i < K; ++i) s += LossMath<In>::Exp(z[i] - m);
  }
  __device__ static MaxSum Merge(MaxSum a, MaxSum b) {
    MaxSum r = Empty();
    r.m = fmaxf(a.m, b.m);
    if (r.m == -INFINITY) return r;
    r.s = (a.m == -INFINITY ? 0.0f : a.s * expf(a.m - r.m)) + (b.m == -INFINITY ? 0.0f : b.s * expf(b.m - r.m));
    return r;
  }
};

// (internal:: names the float overload, which this one hides.)
__device__ inline MaxSum ShuffleDown(MaxSum v, int o) {
  return {internal::ShuffleDown(v.m, o), internal::ShuffleDown(v.s, o)};
}
struct MergeOp {
  __device__ MaxSum operator()(MaxSum a, MaxSum b) const { return MaxSum::Merge(a, b); }
};

// 16 bytes of a row: 8 bf16 or 4 fp32 values, one load or store (a uint4 moved in and out
// with memcpy, llm.c's Packed128: reading the values through a cast pointer to the uint4 is
// undefined, and GCC at -O2 read stale stack for them in the emulator).
template <typename T>
struct Pack {
  static constexpr int kValues = 16 / sizeof(T);
  T values[kValues];
  __device__ static Pack LoadFrom(const T* at) {  // at: 16-byte aligned
    const uint4 bits = *reinterpret_cast<const uint4*>(at);
    Pack p;
    memcpy(static_cast<void*>(p.values), &bits, sizeof(bits));
    return p;
  }
  __device__ void StoreTo(T* at) const {
    uint4 bits;
    memcpy(&bits, values, sizeof(bits));
    *reinterpret_cast<uint4*>(at) = bits;
  }
  __device__ float Get(int i) const { return Load(values + i); }
  __device__ void Set(int i, float x) { Store(x, values + i); }
};

// The first value of a row past its whole 16-byte packs: 0 where the row does not start on
// 16 bytes (its values then one at a time), else its packs' end.
template <typename T>
__device__ inline int64_t PackedEnd(const T* row, int64_t v) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) return 0;
  return v / Pack<T>::kValues * Pack<T>::kValues;
}

// f(values) for each of a row's v values, a thread every blockDim.x-th 16-byte pack, four
// packs' loads at a time (GridStrideBatched) — a memory transaction 16 bytes a thread, not 2:
// the loss kernels ran at ~1 TB/s of an H200's 4.8 reading a bf16 at a time; values a float[8]
// (bf16) or float[4] (fp32) —, then the values past the packs one at a time (a float[1]).
template <typename T, typename F>
__device__ inline void ForEachInRow(const T* row, int64_t v, F f) {
  constexpr int kValues = Pack<T>::kValues;
  const int64_t packed = PackedEnd(row, v);
  GridStrideBatched<4>(
      threadIdx.x, blockDim.x, packed / kValues, [&](int64_t p) { return Pack<T>::LoadFrom(row + p * kValues); },
      [&](int64_t, const Pack<T>& pack) {
        float x[kValues];
#pragma unroll
        for (int i = 0; i < kValues; ++i) x[i] = pack.Get(i);
        f(x);
      });
  for (int64_t j = packed + threadIdx.x; j < v; j += blockDim.x) {
    const float x[1] = {Load(row + j)};
    f(x);
  }
}

// row[j] = f(j, row[j]) for each j < v, as ForEachInRow visits them (each value read and
// written by one thread; a batch's four packs loaded before the first is stored back).
template <typename T, typename F>
__device__ inline void UpdateRow(T* row, int64_t v, F f) {
  constexpr int kValues = Pack<T>::kValues;
  const int64_t packed = PackedEnd(row, v);
  GridStrideBatched<4>(
      threadIdx.x, blockDim.x, packed / kValues,
      [&](int64_t p) {
        Pack<T> pack = Pack<T>::LoadFrom(row + p * kValues);
#pragma unroll
        for (int i = 0; i < kValues; ++i) pack.Set(i, f(p * kValues + i, pack.Get(i)));
        return pack;
      },
      [&](int64_t p, const Pack<T>& pack) { pack.StoreTo(row + p * kValues); });
  for (int64_t j = packed + threadIdx.x; j < v; j += blockDim.x) Store(f(j, Load(row + j)), row + j);
}

// A row's log-sum-exp and largest raw logit, in one pass over its v values (online softmax:
// the row is read once, not twice); every thread of the block gets them.
template <typename In>
__device__ inline void RowLogSumExp(const In* l, int64_t v, float cap, float* row_lse, float* row_max) {
  float lmax = -INFINITY;
  MaxSum acc = MaxSum::Empty();
  ForEachInRow(l, v, [&](const auto& x) {
    constexpr int kCount = sizeof(x) / sizeof(float);
    float z[kCount], zmax = -INFINITY;
#pragma unroll
    for (int i = 0; i < kCount; ++i) {
      lmax = fmaxf(lmax, x[i]);
      z[i] = Cap<In>(x[i], cap);
      zmax = fmaxf(zmax, z[i]);
    }
    acc.Add<In>(z, zmax);
  });
  *row_max = BlockMax(lmax);
  acc = BlockReduce(acc, MaxSum::Empty(), MergeOp{});
  *row_lse = acc.m + logf(acc.s);
}

// dz_j = (softmax_j·(1 + 2·z_loss·lse) − [j = target]) · dloss / N;  dl = dz·(1 − tanh²(l/cap))
// (inv_n = dloss / N, scale = 1 + 2·z_loss·lse), one expression for both kernels that write
// it: the same bits from either.
template <typename In>
__device__ inline float LogitGradient(float l, bool target, float row_lse, float scale, float cap, float inv_n) {
  const float th = cap > 0 ? LossMath<In>::Tanh(l * (1.0f / cap)) : 0.0f;
  const float z = cap > 0 ? cap * th : l;
  float dz = (LossMath<In>::Exp(z - row_lse) * scale - (target ? 1.0f : 0.0f)) * inv_n;
  if (cap > 0) dz *= 1.0f - th * th;
  return dz;
}

// One block a row; rows ld values apart. stats_out: [n] max raw logit, [n] capped target logit.
template <typename In>
__global__ void CrossEntropyForwardKernel(const In* logits, const int32_t* targets, int64_t v, int64_t ld, float cap,
                                          float* lse, float* row_max, float* target_z) {
  const int64_t row = blockIdx.x;
  const In* l = logits + row * ld;
  float row_lse, lmax;
  RowLogSumExp(l, v, cap, &row_lse, &lmax);
  if (threadIdx.x == 0) {
    lse[row] = row_lse;
    row_max[row] = lmax;
    target_z[row] = Cap<In>(Load(l + targets[row]), cap);
  }
}

// The forward and the backward for dloss = 1 in one block a row (the training step's loss
// head, Backend::CrossEntropyLinearForward's with_gradient): CrossEntropyForwardKernel's
// statistics, then CrossEntropyBackwardKernel's gradient written over the logits — the bits of
// the two kernels. The second pass reads what the first just read (a row is 100 KB in bf16 at
// GPT-2's vocabulary: the caches serve it), so the N×V values come from memory once and go
// back once, not read twice more by a second kernel.
template <typename T>
__global__ void CrossEntropyFusedKernel(T* logits, const int32_t* targets, int64_t v, int64_t ld, float cap,
                                        float z_loss, float inv_n, float* lse, float* row_max, float* target_z) {
  const int64_t row = blockIdx.x;
  T* l = logits + row * ld;
  const int64_t target = targets[row];
  const float target_logit = Load(l + target);  // read before the barriers after which it is overwritten
  float row_lse, lmax;
  RowLogSumExp(l, v, cap, &row_lse, &lmax);
  if (threadIdx.x == 0) {
    lse[row] = row_lse;
    row_max[row] = lmax;
    target_z[row] = Cap<T>(target_logit, cap);
  }
  const float scale = 1.0f + 2.0f * z_loss * row_lse;
  UpdateRow(l, v, [&](int64_t j, float x) { return LogitGradient<T>(x, j == target, row_lse, scale, cap, inv_n); });
}

// Out: float, or bf16 when the gradient only feeds bf16 products. Block (row, y) covers
// kBackwardColumns columns of the row, each thread every blockDim.x-th of them (coalesced): the
// row's lse and target read once for 8 columns, and a 124M batch is 205k blocks, not 1.6M.
constexpr int kBackwardThreads = 256;
constexpr int kBackwardColumns = 8 * kBackwardThreads;
template <typename In, typename Out>
__global__ void CrossEntropyBackwardKernel(const In* logits, const int32_t* targets, const float* lse, int64_t n,
                                           int64_t v, int64_t ld, float cap, float z_loss, float inv_n, Out* dlogits) {
  const int64_t row = blockIdx.x;  // rows on x (up to 2^31), column blocks on y (≤ 65,535)
  const float row_lse = lse[row];
  const float scale = 1.0f + 2.0f * z_loss * row_lse;
  const int64_t target = targets[row];
  const int64_t end = (blockIdx.y + 1) * static_cast<int64_t>(kBackwardColumns) < v
                          ? (blockIdx.y + 1) * static_cast<int64_t>(kBackwardColumns)
                          : v;
  // The thread's 8 logits loaded before the first gradient is stored (dlogits may be the
  // logits: a load after a store waits for it).
  const int64_t j0 = blockIdx.y * static_cast<int64_t>(kBackwardColumns) + threadIdx.x;
  constexpr int kPerThread = kBackwardColumns / kBackwardThreads;
  float l[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t j = j0 + k * kBackwardThreads;
    l[k] = j < end ? Load(logits + row * ld + j) : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t j = j0 + k * kBackwardThreads;
    if (j < end) Store(LogitGradient<In>(l[k], j == target, row_lse, scale, cap, inv_n), dlogits + row * ld + j);
  }
}
dim3 BackwardGrid(int64_t n, int64_t v) { return dim3(static_cast<unsigned>(n), Blocks(v, kBackwardColumns)); }

// The loss statistics from the forward's row statistics (lse [n]; row_stats: [n] max raw
// logit, [n] capped target logit), summed on the host; nothing where stats is null.
void StatsToHost(const float* lse, const float* row_stats, int64_t n, const CrossEntropyOptions& opt,
                 CrossEntropyStats* stats) {
  if (!stats) return;
  std::vector<float> host_lse(n), host_stats(2 * n);
  Issued(cudaMemcpy(host_lse.data(), lse, n * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy (lse)");
  Issued(cudaMemcpy(host_stats.data(), row_stats, 2 * n * sizeof(float), cudaMemcpyDeviceToHost),
         "cudaMemcpy (cross-entropy stats)");
  *stats = CrossEntropyStatsFromRows(host_lse.data(), host_stats.data() + n, host_stats.data(), n, opt.z_loss);
}

template <typename In>
void Forward(CudaBackend& be, const In* logits, const int32_t* targets, int64_t n, int64_t v, int64_t ld,
             const CrossEntropyOptions& opt, float* lse, CrossEntropyStats* stats) {
  float* row_stats = static_cast<float*>(be.Scratch(kRowStats, 2 * n * sizeof(float)));
  CrossEntropyForwardKernel<<<static_cast<unsigned>(n), kRowThreads>>>(logits, targets, v, ld, opt.soft_cap, lse,
                                                                       row_stats, row_stats + n);
  STABILITY_CUDA_LAUNCHED(sizeof(In) == 2 ? "CrossEntropyForwardKernel (bf16 logits)" : "CrossEntropyForwardKernel");
  StatsToHost(lse, row_stats, n, opt, stats);
}

// The vocabulary in the head's products: [0, whole) with `whole` the largest multiple of 64
// values — every dimension and leading dimension of its products a multiple of 64 —, then
// [whole, v), under 64 rows of w, a small product of its own.
constexpr int64_t kVocabAlignment = 64;  // values: 128 bytes of bf16
struct VocabPiece {
  int64_t lo, hi;
};
std::vector<VocabPiece> VocabPieces(int64_t v) {
  const int64_t whole = v / kVocabAlignment * kVocabAlignment;
  std::vector<VocabPiece> pieces;
  if (whole > 0) pieces.push_back({0, whole});
  if (whole < v) pieces.push_back({whole, v});
  return pieces;
}

}  // namespace

int64_t CudaBackend::LogitsRowStride(int64_t v) const {
  if (precision_ != MatmulPrecision::kBf16) return v;  // fp32: the parity mode, CPU layout
  return (v + kVocabAlignment - 1) / kVocabAlignment * kVocabAlignment;
}

void CudaBackend::HeadForwardBf16(const float* x, const float* w, int64_t n, int64_t c, int64_t v, int64_t ld,
                                  __nv_bfloat16* logits, Bf16Operands* kept) {
  const auto [x16, w16] = ForwardOperands(x, w, n, c, v, kept);
  for (const VocabPiece& p : VocabPieces(v)) {
    GemmBf16(Trans::kNo, Trans::kYes, n, p.hi - p.lo, c, 1.0f, x16, c, w16 + p.lo * c, c, 0.0f, logits + p.lo, ld, 1, 0,
             0, 0, CUDA_R_16BF);
  }
}

void CudaBackend::HeadBackwardBf16(const float* x, const float* w, const __nv_bfloat16* dl, int64_t n, int64_t c,
                                   int64_t v, int64_t ld, float dy_scale, float* dx, float* dw,
                                   const Bf16Operands* kept) {
  if (kept && kept->dx) throw std::logic_error("the loss head's dx is fp32: its pieces add into it");
  const std::vector<VocabPiece> pieces = VocabPieces(v);
  const auto* w16 = kept ? static_cast<const __nv_bfloat16*>(kept->w) : ToBf16(w, v * c, kBf16A);
  for (size_t i = 0; i < pieces.size(); ++i) {  // dx = Σ over the pieces, the second added in the epilogue
    const VocabPiece& p = pieces[i];
    GemmBf16(Trans::kNo, Trans::kNo, n, c, p.hi - p.lo, dy_scale, dl + p.lo, ld, w16 + p.lo * c, c,
             i == 0 ? 0.0f : 1.0f, dx, c);
  }
  const auto* x16 = kept ? static_cast<const __nv_bfloat16*>(kept->x) : ToBf16(x, n * c, kBf16B);
  for (const VocabPiece& p : pieces) {
    GemmBf16(Trans::kYes, Trans::kNo, p.hi - p.lo, c, n, dy_scale, dl + p.lo, ld, x16, c, 1.0f, dw + p.lo * c, c);
  }
}

void CudaBackend::CrossEntropyForward(const float* logits, const int32_t* targets, int64_t n, int64_t v,
                                      const CrossEntropyOptions& opt, float* lse, CrossEntropyStats* stats) {
  Forward(*this, logits, targets, n, v, v, opt, lse, stats);
}

// bf16: the head's product writes its logits straight in bf16 (cuBLAS rounds the fp32
// accumulator), which the forward and backward read; with_gradient, one kernel computes the
// loss and writes the gradient (for dloss = 1) over them.
bool CudaBackend::CrossEntropyLinearForward(const float* x, const float* w, const int32_t* targets, int64_t n,
                                            int64_t c, int64_t v, const CrossEntropyOptions& opt, void* logits,
                                            float* lse, CrossEntropyStats* stats, Bf16Operands* kept,
                                            bool with_gradient) {
  if (precision_ != MatmulPrecision::kBf16) {
    return Backend::CrossEntropyLinearForward(x, w, targets, n, c, v, opt, logits, lse, stats, kept, with_gradient);
  }
  const int64_t ld = LogitsRowStride(v);
  auto* l16 = static_cast<__nv_bfloat16*>(logits);
  HeadForwardBf16(x, w, n, c, v, ld, l16, kept);
  if (!with_gradient) {
    Forward(*this, static_cast<const __nv_bfloat16*>(l16), targets, n, v, ld, opt, lse, stats);
    return false;
  }
  float* row_stats = static_cast<float*>(Scratch(kRowStats, 2 * n * sizeof(float)));
  CrossEntropyFusedKernel<<<static_cast<unsigned>(n), kRowThreads>>>(
      l16, targets, v, ld, opt.soft_cap, opt.z_loss, 1.0f / static_cast<float>(n), lse, row_stats, row_stats + n);
  STABILITY_CUDA_LAUNCHED("CrossEntropyFusedKernel");
  StatsToHost(lse, row_stats, n, opt, stats);
  return true;
}

void CudaBackend::CrossEntropyBackward(const float* logits, const int32_t* targets, const float* lse, int64_t n,
                                       int64_t v, const CrossEntropyOptions& opt, float dloss, float* dlogits) {
  CrossEntropyBackwardKernel<<<BackwardGrid(n, v), kBackwardThreads>>>(
      logits, targets, lse, n, v, v, opt.soft_cap, opt.z_loss, dloss / static_cast<float>(n), dlogits);
  STABILITY_CUDA_LAUNCHED("CrossEntropyBackwardKernel");
}

void CudaBackend::CrossEntropyLinearBackward(const void* logits, const int32_t* targets, const float* lse, int64_t n,
                                             int64_t v, const CrossEntropyOptions& opt, float dloss, const float* x,
                                             const float* w, int64_t c, void* dlogits, float* dx, float* dw,
                                             const Bf16Operands* kept, bool gradient_ready) {
  if (precision_ != MatmulPrecision::kBf16) {
    Backend::CrossEntropyLinearBackward(logits, targets, lse, n, v, opt, dloss, x, w, c, dlogits, dx, dw, kept,
                                        gradient_ready);
    return;
  }
  // bf16 logits in, the bf16 gradient out for the two products: no fp32 N×V pass.
  const int64_t ld = LogitsRowStride(v);
  auto* dl16 = static_cast<__nv_bfloat16*>(dlogits);
  if (gradient_ready) {  // the forward's, for dloss = 1: the products scale by dloss
    HeadBackwardBf16(x, w, dl16, n, c, v, ld, dloss, dx, dw, kept);
    return;
  }
  CrossEntropyBackwardKernel<<<BackwardGrid(n, v), kBackwardThreads>>>(static_cast<const __nv_bfloat16*>(logits),
                                                                       targets, lse, n, v, ld, opt.soft_cap, opt.z_loss,
                                                                       dloss / static_cast<float>(n), dl16);
  STABILITY_CUDA_LAUNCHED("CrossEntropyBackwardKernel (bf16)");
  HeadBackwardBf16(x, w, dl16, n, c, v, ld, 1.0f, dx, dw, kept);
}

}  // namespace stability::ops::cuda::internal
