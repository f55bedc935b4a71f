// LayerNorm and RMSNorm on the GPU: statistics in double through a fixed reduction tree;
// a row to a group of lanes both ways — a warp for rows over 128 wide, 8 lanes (four rows a
// warp) up to 128: a per-head norm's 64-wide rows, one a warp, spent more on two 32-lane
// reductions and on their warps' launch than on their 256 bytes (~1.5 TB/s of the H200's 4.8:
// the qk_norm profile, docs/gpu) —, the backward's blocks a chunk of rows each with dx and the
// parameter gradients' deterministic column sums in one pass over x and dy.
//
// A lane's columns of a row (l, l + L, …; L its group's lanes) are read into registers all at
// once, before the first is used and before the row's first store (LanePart, internal/
// norm_shape.h, with the rest of the kernels' shapes; rows up to 1,024 wide): a loop
// that stores as it goes cannot have its next loads moved above the store (as far as the
// compiler knows they may alias), so it waits out one memory latency a column — which is
// what the first GPU report's rates say the norms did (the residual add + norm at ~2.5 TB/s of
// the H200's 4.8, 70 µs a GPT-2 norm). Wider rows are streamed, each value read again from the
// caches at each use (LanePart 0). One code path either way: LaneRow holds or reads a lane's
// values, ForLane walks its columns.
#include <type_traits>
#include <utility>

#include "stability/ops/cuda/internal/common.cuh"
#include "stability/ops/cuda/internal/norm_shape.h"

namespace stability::ops::cuda::internal {
namespace {

constexpr int kForwardWarps = 4;  // warps a block of the forward

// f(integral_constant<LanePart(d)>, integral_constant<LanesPerRow(d)>): the kernel
// instantiation for the width.
template <typename F>
void WithRowShape(int64_t d, F f) {
  using std::integral_constant;
  if (LanesPerRow(d) == 8) {
    switch (LanePart(d)) {
      case 2:
        return f(integral_constant<int, 2>{}, integral_constant<int, 8>{});
      case 4:
        return f(integral_constant<int, 4>{}, integral_constant<int, 8>{});
      case 8:
        return f(integral_constant<int, 8>{}, integral_constant<int, 8>{});
      default:
        return f(integral_constant<int, 16>{}, integral_constant<int, 8>{});
    }
  }
  switch (LanePart(d)) {  // d > 128: at least 5 columns a lane
    case 8:
      return f(integral_constant<int, 8>{}, integral_constant<int, 32>{});
    case 16:
      return f(integral_constant<int, 16>{}, integral_constant<int, 32>{});
    case 24:
      return f(integral_constant<int, 24>{}, integral_constant<int, 32>{});
    case 32:
      return f(integral_constant<int, 32>{}, integral_constant<int, 32>{});
    default:
      return f(integral_constant<int, 0>{}, integral_constant<int, 32>{});
  }
}

// The values of a row that a lane owns — columns j = sub + L·i < d, in order of i, sub its
// place in the row's group —: for
// P > 0 (LanePart) read into registers at once when constructed (every load issued before any
// is used, and before the row's first store); for P = 0 read from row at each use. read false:
// an absent operand (a null row), never used.
template <int P, int L, typename T>
struct LaneRow {
  const T* row;
  float v[P > 0 ? P : 1];
  __device__ LaneRow(const T* row, int64_t d, int sub, bool read = true) : row(row) {
    if constexpr (P > 0) {
      if (!read) return;
#pragma unroll
      for (int i = 0; i < P; ++i) v[i] = sub + L * i < d ? Load(row + sub + L * i) : 0.0f;
    }
  }
  __device__ float operator()(int i, int64_t j) const {
    if constexpr (P > 0) {
      return v[i];
    } else {
      return Load(row + j);
    }
  }
};

// f(i, j) for a lane's columns j = sub + L·i < d, in order.
template <int P, int L, typename F>
__device__ inline void ForLane(int64_t d, int sub, F f) {
  if constexpr (P > 0) {
#pragma unroll
    for (int i = 0; i < P; ++i) {
      if (sub + L * i < d) f(i, sub + L * i);
    }
  } else {
    for (int64_t j = sub; j < d; j += L) f(0, j);
  }
}

// Blocks an SM the kernels are compiled for: at 16 and 24 columns a lane (4 warps a block:
// GPT-2's 768) three need at most 170 registers a thread — unbounded, the forward took 173 and
// the backward's bf16-dy instantiation 173: 2 blocks an SM, 8 rows in flight.
template <int P>
constexpr int kMinBlocks = P == 16 || P == 24 ? 3 : 1;

// A row to each group of L lanes (lane sub of the group: columns sub, sub + L, …; a warp 32 / L
// rows), the statistics by shuffles alone: no block barrier. A group past the last row
// computes on its warp's first row and stores nothing (its lanes take part in the shuffles).
// With a (AddNormForward; x contiguous): the row of x + a ⊙ s (s nullable) is written to sum
// and normalised from there; each lane reads back only what it wrote. __fmul_rn: a·s rounded
// on its own, as ChannelScaleKernel does. y16 (nullable): y rounded to bf16 (the next op's
// operand), its rows laid out as x's; y (contiguous) then nullable. P, L: LanePart(d),
// LanesPerRow(d).
template <int P, int L>
__global__ void __launch_bounds__(32 * kForwardWarps, kMinBlocks<P>)
    NormForwardKernel(bool layer, const float* x, RowLayout x_rows, const float* a, const float* s, const float* g,
                      const float* b, int64_t rows, int64_t d, float eps, float* sum, float* y, __nv_bfloat16* y16,
                      float* mean, float* rstd) {
  const int lane = threadIdx.x & 31, sub = lane % L;
  const int64_t first = (blockIdx.x * static_cast<int64_t>(kForwardWarps) + threadIdx.x / 32) * (32 / L);
  if (first >= rows) return;  // the whole warp
  const bool active = first + lane / L < rows;
  const int64_t r = active ? first + lane / L : first;
  LaneRow<P, L, float> xv(x + x_rows.Offset(r, d), d, sub);
  if (a) {
    const LaneRow<P, L, float> av(a + r * d, d, sub), sv(s, d, sub, s != nullptr);
    float* sr = sum + r * d;
    ForLane<P, L>(d, sub, [&](int i, int64_t j) {
      const float v = xv(i, j) + (s ? __fmul_rn(av(i, j), sv(i, j)) : av(i, j));
      if (active) sr[j] = v;
      if constexpr (P > 0) xv.v[i] = v;
    });
    xv.row = sr;  // streamed: normalised from the stored sum
  }
  // g and b read after the sum is stored: 3·P values live at most.
  const LaneRow<P, L, float> gv(g, d, sub), bv(b, d, sub, b != nullptr);
  double mu = 0;
  if (layer) {
    double t = 0;
    ForLane<P, L>(d, sub, [&](int i, int64_t j) { t += xv(i, j); });
    mu = GroupAllSum<L>(t) / d;
  }
  double s2 = 0;
  ForLane<P, L>(d, sub, [&](int i, int64_t j) { s2 += (xv(i, j) - mu) * (xv(i, j) - mu); });
  const double var = GroupAllSum<L>(s2) / d;
  const float rs = static_cast<float>(1.0 / sqrt(var + eps));
  const float m = static_cast<float>(mu);
  if (!active) return;
  ForLane<P, L>(d, sub, [&](int i, int64_t j) {
    const float v = (xv(i, j) - m) * rs * gv(i, j) + (b ? bv(i, j) : 0.0f);
    if (y) y[r * d + j] = v;
    if (y16) y16[x_rows.Offset(r, d) + j] = __float2bfloat16_rn(v);
  });
  if (sub == 0) {
    if (mean) mean[r] = m;
    rstd[r] = rs;
  }
}

// dx and the parameter gradients' partials in one pass over x and dy: block `chunk` (of
// gridDim.x = NormChunks) takes its rows, a row to each group of L lanes (lane sub: columns sub,
// sub + L, …; the block's groups take rows in turn, group q of warp w rows w·R + q, then
// + warps·R, … of the chunk, R = 32 / L), the row's two sums by shuffles alone — no block
// barrier a row, which the one-block-a-row kernel before paid twice (145 µs a GPT-2 norm on the
// H200, ~1.4 TB/s) —
//   dx = r·(ĝ − [LayerNorm] mean(ĝ) − x̂·mean(ĝ·x̂)),  ĝ = dy·g,  x̂ = (x − μ)·r
// (accumulate: dx += , the residual stream's gradient; dx laid out as x; dy and dx fp32 or
// bf16, the math fp32 either way, the row sums in double; dx16 nullable: the stored dx rounded
// to bf16, contiguous rows — the next product's operand). Each lane adds its columns' dy·x̂ and
// dy into its group's own shared slots (float, the group's rows in order: a few — 8 of a GPT-2
// 124M norm's 16,384 rows, 3 of its per-head norms' 196,608), and the block writes
// partials_g/partials_b[chunk, j] (double: the groups' slots in order; partials_b nullable)
// for AddColumnTotals. A group past the chunk's last row computes on its warp's first and
// stores and adds nothing. x and dy come from memory once (streamed rows: the second pass reads
// what the first just loaded, from L1). P, L: LanePart(d), LanesPerRow(d).
template <int P, int L, typename DY, typename DX>
__global__ void __launch_bounds__(32 * BackwardMostWarps(P), kMinBlocks<P>)
    NormBackwardKernel(bool layer, const float* x, RowLayout x_rows, const float* g, const float* mean,
                       const float* rstd, const DY* dy, int64_t rows, int64_t d, bool accumulate, DX* dx,
                       __nv_bfloat16* dx16, double* partials_g, double* partials_b) {
  constexpr int kGroups = 32 / L;  // rows a warp at a time
  // Group q of warp w: [2d(w·R + q), … + d) its Σ dy·x̂, [… + d, … + 2d) its Σ dy.
  extern __shared__ float acc[];
  const int64_t chunk = blockIdx.x, chunks = gridDim.x;
  const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x & 31, sub = lane % L;
  const int slot = warp * kGroups + lane / L;
  float* const sum_g = acc + 2 * d * slot;
  float* const sum_b = sum_g + d;
  for (int64_t j = sub; j < d; j += L) sum_g[j] = sum_b[j] = 0;  // each slot its owner's: no barrier
  const int64_t end = rows * (chunk + 1) / chunks;
  for (int64_t first = rows * chunk / chunks + warp * kGroups; first < end; first += warps * kGroups) {
    const bool active = first + lane / L < end;
    const int64_t r = active ? first + lane / L : first;
    const float* xr = x + x_rows.Offset(r, d);
    DX* dxr = dx + x_rows.Offset(r, d);
    const DY* dyr = dy + r * d;
    const float m = layer ? mean[r] : 0.0f, rs = rstd[r];
    const LaneRow<P, L, DY> dyv(dyr, d, sub);
    const LaneRow<P, L, float> xv(xr, d, sub), gv(g, d, sub);
    const LaneRow<P, L, DX> prior(dxr, d, sub, accumulate);
    double sg = 0, sgx = 0;
    ForLane<P, L>(d, sub, [&](int i, int64_t j) {
      const double gh = dyv(i, j) * gv(i, j);
      sg += gh;
      sgx += gh * (xv(i, j) - m) * rs;
    });
    const float mg = layer ? static_cast<float>(GroupAllSum<L>(sg) / d) : 0.0f;
    const float mgx = static_cast<float>(GroupAllSum<L>(sgx) / d);
    if (!active) continue;
    ForLane<P, L>(d, sub, [&](int i, int64_t j) {
      const float xh = (xv(i, j) - m) * rs, dyj = dyv(i, j);
      const float v = rs * (dyj * gv(i, j) - mg - xh * mgx);
      const float stored = accumulate ? __fadd_rn(prior(i, j), v) : v;  // never an FMA: the bits of Add's
      Store(stored, dxr + j);
      if (dx16) dx16[r * d + j] = __float2bfloat16_rn(stored);
      sum_g[j] += dyj * xh;
      sum_b[j] += dyj;
    });
  }
  __syncthreads();
  const int slots = warps * kGroups;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    double tg = 0, tb = 0;
    for (int q = 0; q < slots; ++q) {
      tg += acc[2 * d * q + j];
      tb += acc[2 * d * q + d + j];
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
  __nv_bfloat16* y16 = NextOperand(next);
  WithRowShape(d, [&](auto part, auto lanes) {
    NormForwardKernel<decltype(part)::value, decltype(lanes)::value>
        <<<Blocks(ForwardWarpsFor(rows, d), kForwardWarps), 32 * kForwardWarps>>>(
            kind == NormKind::kLayerNorm, x, x_rows, nullptr, nullptr, g, b, rows, d, eps, nullptr, y, y16, mean, rstd);
  });
  STABILITY_CUDA_LAUNCHED("NormForwardKernel");
}

void CudaBackend::AddNormForward(NormKind kind, const float* x, const float* a, const float* s, const float* g,
                                 const float* b, int64_t rows, int64_t d, float eps, float* sum, float* y, float* mean,
                                 float* rstd, Bf16Operands* next) {
  __nv_bfloat16* y16 = NextOperand(next);
  WithRowShape(d, [&](auto part, auto lanes) {
    NormForwardKernel<decltype(part)::value, decltype(lanes)::value>
        <<<Blocks(ForwardWarpsFor(rows, d), kForwardWarps), 32 * kForwardWarps>>>(
            kind == NormKind::kLayerNorm, x, RowLayout::Contiguous(d), a, s, g, b, rows, d, eps, sum, y, y16, mean,
            rstd);
  });
  STABILITY_CUDA_LAUNCHED("NormForwardKernel (add)");
}

template <typename DY, typename DX>
void CudaBackend::NormBackwardRows(NormKind kind, const float* x, const RowLayout& x_rows, const float* g,
                                   const float* mean, const float* rstd, const DY* dy, int64_t rows, int64_t d,
                                   bool accumulate, DX* dx, float* dg, float* db, __nv_bfloat16* dx16) {
  const int warps = NormBackwardWarps(d);
  // Past the default 48 KB from d = 6,145.
  const size_t shared = 2 * d * warps * (32 / LanesPerRow(d)) * sizeof(float);
  int chunks = 0;
  double *partials_g = nullptr, *partials_b = nullptr;
  WithRowShape(d, [&](auto part, auto lanes) {
    const auto kernel = NormBackwardKernel<decltype(part)::value, decltype(lanes)::value, DY, DX>;
    if (shared > 48 * 1024) AllowSharedBytes(kernel, shared, "NormBackwardKernel (the norm's width)");
    chunks = NormChunks(rows, ResidentBlocks(reinterpret_cast<const void*>(kernel), 32 * warps, shared));
    partials_g = static_cast<double*>(Scratch(kColumnPartials, 2 * chunks * d * sizeof(double)));
    partials_b = db ? partials_g + chunks * d : nullptr;
    kernel<<<chunks, 32 * warps, shared>>>(kind == NormKind::kLayerNorm, x, x_rows, g, mean, rstd, dy, rows, d,
                                           accumulate, dx, dx16, partials_g, partials_b);
  });
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
