// Fused causal attention on the tensor cores (MatmulPrecision::kBf16): the algorithm of
// fused_attention.cu — the same sweeps and outputs, nothing T×T stored — with its four
// products per tile on WMMA 16×16×16 bf16 tiles accumulated in fp32, as FlashAttention-2.
//
// A block owns 64 rows (queries in the forward and dQ kernels, keys in the dK/dV kernel),
// 4 warps of 16; the other side streams through shared memory in tiles of 64 rows, rounded
// to bf16 as they load. A warp's products land in its own fp32 buffer; two lanes own each of
// its rows (lane = 2·row + half), half of the tile's columns each, so a row reduction is one
// shuffle. Softmax, statistics and accumulators are fp32; P and dZ are rounded to bf16 for
// their products, as FlashAttention does.
//
// Forward, per key tile: S = Q Kᵀ, z = cap(scale·S/τ), keys s > t masked.
//   no clip, one sweep (online softmax): m' = max(m, max z), α = e^(m−m'), E = e^(z−m'),
//     l = α·l + Σ E, Σez = α·Σez + Σ E·z, O = α·O + E V; at the end O /= l,
//     lse = m + log l, entropy = lse − Σez / l
//   clip, two sweeps (p' needs the exact p): sweep 1 m and l only; sweep 2
//     p = e^(z−lse), O += clip(p) V, entropy = lse − Σ p·z
// Backward, two kernels and no atomics (runs repeat bit for bit):
//   queries: per key tile S and dP' = dO Vᵀ; D = dO·O from the forward's output (as
//            FlashAttention), or under the clip (O is of p') a first sweep D = Σ p·clip'(p)·dP';
//            then dZ = p·(clip'(p)·dP' − D)·cap'/τ, dQ += dZ K; dQ = scale·dQ
//   keys:    per query tile t ≥ s: Sᵀ = K Qᵀ, dP'ᵀ = V dOᵀ, dZᵀ as above with each query's
//            lse and D; dK += dZᵀ Q, dV += clip(p)ᵀ dO; dK = scale·dK
// Its bf16 tolerances against the fp32 CPU op: cuda_backend_test.
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "stability/ops/cuda/internal/common.cuh"
#include "stability/ops/cuda/internal/fused_attention.cuh"

namespace stability::ops::cuda::internal {
namespace {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;
using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr int kRows = 64;       // rows a block owns, and rows of the other side per tile
constexpr int kWarps = 4;       // 16 rows each
constexpr int kThreads = 32 * kWarps;
constexpr int kHalf = kRows / 2;  // tile columns per lane
constexpr int kPL = kRows + 8;    // leading dim of a warp's bf16 [16 × 64] tiles (P, dZ)
constexpr int kSL = kRows + 4;    // leading dim of a warp's fp32 [16 × 64] products (S, dP')
constexpr int kPBytes = 16 * kPL * 2;
constexpr int kSBytes = 16 * kSL * 4;

// Shared-memory sizes; every piece is a multiple of 32 bytes, as WMMA's pointers must be.
template <int HD>
struct Layout {
  static constexpr int kL = HD + 8;                      // bf16 row tiles [64 × HD]
  static constexpr int kTileBytes = kRows * kL * 2;
  static constexpr int kOL = (HD > kRows ? HD : kRows) + 4;  // the forward's fp32 warp buffer
  static constexpr int kOBytes = 16 * kOL * 4;
  static constexpr int kForwardBytes = 3 * kTileBytes + kWarps * (kOBytes + kPBytes);
  static constexpr int kQueryBytes = 4 * kTileBytes + kWarps * (2 * kSBytes + kPBytes);
  static constexpr int kKeyBytes = 4 * kTileBytes + 2 * kRows * 4 + kWarps * (2 * kSBytes + 2 * kPBytes);
  static_assert(2 * kSL >= HD, "the backward writes its [16 × HD] results through two S buffers");
};

// Rows [row0, row0 + 64) of x (row stride c; rows at or past t read as 0) into a bf16 tile.
template <int HD>
__device__ void LoadTile(const float* x, int64_t row0, int64_t t, int64_t c, bf16* tile) {
  constexpr int kQuads = HD / 4;
  for (int i = threadIdx.x; i < kRows * kQuads; i += kThreads) {
    const int r = i / kQuads, d = (i % kQuads) * 4;
    const float4 f = row0 + r < t ? *reinterpret_cast<const float4*>(x + (row0 + r) * c + d)
                                  : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    auto* dst = reinterpret_cast<__nv_bfloat162*>(tile + r * Layout<HD>::kL + d);
    dst[0] = __floats2bfloat162_rn(f.x, f.y);
    dst[1] = __floats2bfloat162_rn(f.z, f.w);
  }
}

// One warp: F[16 × 16·N] = A[16 × 16·K] · B, A row-major; B given as Bᵀ row-major
// (kBTransposed: B(k, n) = b[n·ldb + k], i.e. the rows of K, V, Q or dO) or row-major.
template <int K, int N, bool kBTransposed>
__device__ void WarpProduct(const bf16* a, int lda, const bf16* b, int ldb, float* f, int ldf) {
  using BLayout = std::conditional_t<kBTransposed, wmma::col_major, wmma::row_major>;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, BLayout> fb;
  Accumulator acc;
  for (int n = 0; n < N; ++n) {
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < K; ++k) {
      wmma::load_matrix_sync(fa, a + k * 16, lda);
      wmma::load_matrix_sync(fb, kBTransposed ? b + n * 16 * ldb + k * 16 : b + k * 16 * ldb + n * 16, ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(f + n * 16, acc, ldf, wmma::mem_row_major);
  }
}

// One warp: acc[16 × HD] += A[16 × 64] · B[64 × HD], both row-major (a tile of P or dZ times
// a tile of K, Q or dO).
template <int HD>
__device__ void WarpAccumulate(const bf16* a, const bf16* b, Accumulator (&acc)[HD / 16]) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
  for (int k = 0; k < kRows / 16; ++k) {
    wmma::load_matrix_sync(fa, a + k * 16, kPL);
    for (int n = 0; n < HD / 16; ++n) {
      wmma::load_matrix_sync(fb, b + k * 16 * Layout<HD>::kL + n * 16, Layout<HD>::kL);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

// The warp's accumulators through its two (adjacent) S buffers to out rows row0.. (scaled;
// out fp32 or bf16, rounded once from the scaled fp32 value): each lane writes its row's half
// of the HD columns.
template <int HD, typename G>
__device__ void WriteRows(Accumulator (&acc)[HD / 16], float* buf, int64_t row, int64_t t, int64_t c, float scale,
                          G* out) {
  __syncwarp();
  for (int n = 0; n < HD / 16; ++n) wmma::store_matrix_sync(buf + n * 16, acc[n], 2 * kSL, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
  if (row >= t) return;
  const float* src = buf + r * 2 * kSL + half * (HD / 2);
  for (int i = 0; i < HD / 2; ++i) Store(scale * src[i], out + row * c + half * (HD / 2) + i);
}

// Of this lane's 32 columns (tile rows first + j), how many are at or before `last`.
__device__ inline int ValidColumns(int64_t first, int64_t last) {
  return static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(kHalf, last - first + 1)));
}

template <int HD>
__global__ void __launch_bounds__(kThreads)
    ForwardKernel(const float* q, const float* k, const float* v, int64_t t, int64_t h, Softmax sm, AttentionStrides ld,
                  float* out, bf16* out16, float* lse, float* row_max, double* row_entropy) {
  using Lay = Layout<HD>;
  constexpr int kL = Lay::kL, kOL = Lay::kOL, kHalfD = HD / 2;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* ks = reinterpret_cast<bf16*>(smem + Lay::kTileBytes);
  bf16* vs = reinterpret_cast<bf16*>(smem + 2 * Lay::kTileBytes);
  float* f = reinterpret_cast<float*>(smem + 3 * Lay::kTileBytes + warp * Lay::kOBytes);
  bf16* pt = reinterpret_cast<bf16*>(smem + 3 * Lay::kTileBytes + kWarps * Lay::kOBytes + warp * kPBytes);
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD, off = HeadOffset(bi, hi, t, c, HD);
  q += HeadOffset(bi, hi, t, ld.q, HD), k += HeadOffset(bi, hi, t, ld.k, HD), v += HeadOffset(bi, hi, t, ld.v, HD);
  const int64_t q0 = blockIdx.x * static_cast<int64_t>(kRows), w0 = q0 + 16 * warp, tq = w0 + r;
  const int64_t last_key = std::min<int64_t>(t - 1, q0 + kRows - 1);
  const int64_t row_last = tq < t ? tq : -1;  // keys s ≤ row_last count (none past T)
  LoadTile<HD>(q, q0, t, ld.q, qs);

  float o[kHalfD];
  for (int i = 0; i < kHalfD; ++i) o[i] = 0.0f;
  // m: running max of z (shared by the row's two lanes); l, ez: this lane's share of Σ E and Σ E·z.
  float m = -INFINITY, l = 0.0f, ez = 0.0f, amax = -INFINITY, row_lse = 0.0f;
  const bool clip = sm.o.clip;
  for (int sweep = clip ? 0 : 1; sweep < 2; ++sweep) {
    const bool exact = clip && sweep == 1;  // p from the row's known lse
    if (exact) {
      row_lse = m + logf(l + __shfl_xor_sync(0xffffffffu, l, 1));
      ez = 0.0f;
    }
    for (int64_t s0 = 0; s0 <= last_key; s0 += kRows) {
      __syncthreads();  // the previous tile is read
      LoadTile<HD>(k, s0, t, ld.k, ks);
      if (sweep == 1) LoadTile<HD>(v, s0, t, ld.v, vs);
      __syncthreads();
      if (w0 >= t) continue;  // the warp has no query (T not a multiple of 64)
      WarpProduct<HD / 16, kRows / 16, true>(qs + 16 * warp * kL, kL, ks, kL, f, kOL);  // S = Q Kᵀ
      __syncwarp();
      const float* srow = f + r * kOL + half * kHalf;
      bf16* prow = pt + r * kPL + half * kHalf;
      const int valid = ValidColumns(s0 + half * kHalf, row_last);
      float alpha = 1.0f;
      if (!exact) {  // online max and sums
        float tmax = -INFINITY;
        for (int j = 0; j < valid; ++j) {
          const float a = srow[j] * sm.o.scale;
          amax = fmaxf(amax, a);
          tmax = fmaxf(tmax, sm.Z(a));
        }
        const float m_new = fmaxf(m, fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1)));
        alpha = m_new == -INFINITY ? 1.0f : expf(m - m_new);
        float sum = 0.0f, sz = 0.0f;
        for (int j = 0; j < kHalf; ++j) {
          float e = 0.0f;
          if (j < valid) {
            const float z = sm.Z(srow[j] * sm.o.scale);
            e = expf(z - m_new);
            sum += e;
            sz += e * z;
          }
          if (sweep == 1) prow[j] = __float2bfloat16_rn(e);
        }
        l = alpha * l + sum;
        ez = alpha * ez + sz;
        m = m_new;
      } else {  // the exact p, clipped
        for (int j = 0; j < kHalf; ++j) {
          float pc = 0.0f;
          if (j < valid) {
            const float z = sm.Z(srow[j] * sm.o.scale);
            const float p = expf(z - row_lse);
            ez += p * z;
            pc = sm.Clip(p);
          }
          prow[j] = __float2bfloat16_rn(pc);
        }
      }
      if (sweep == 1) {
        __syncwarp();  // P is written and S read: F takes P V
        WarpProduct<kRows / 16, HD / 16, false>(pt, kPL, vs, kL, f, kOL);
        __syncwarp();
        const float* pv = f + r * kOL + half * kHalfD;
        for (int i = 0; i < kHalfD; ++i) o[i] = alpha * o[i] + pv[i];
      }
    }
  }
  const float l_row = l + __shfl_xor_sync(0xffffffffu, l, 1);
  const float ez_row = ez + __shfl_xor_sync(0xffffffffu, ez, 1);
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
  if (tq >= t) return;
  if (!clip) row_lse = m + logf(l_row);
  const float inv = clip ? 1.0f : 1.0f / l_row;
  float* orow = out + off + tq * c + half * kHalfD;
  bf16* o16 = out16 ? out16 + off + tq * c + half * kHalfD : nullptr;  // the next product's operand
  for (int i = 0; i < kHalfD; ++i) {
    const float value = o[i] * inv;
    orow[i] = value;
    if (o16) o16[i] = __float2bfloat16_rn(value);
  }
  if (half == 0) {
    const int64_t row = bh * t + tq;
    lse[row] = row_lse;
    row_max[row] = amax;
    row_entropy[row] = static_cast<double>(row_lse) - (clip ? ez_row : ez_row / l_row);
  }
}

// Per query row: D (from dO·O, or a first sweep under the clip), then dQ (G: fp32 or bf16).
template <int HD, typename G>
__global__ void __launch_bounds__(kThreads)
    BackwardQueryKernel(const float* q, const float* k, const float* v, const float* out, const float* lse,
                        const float* dout, int64_t t, int64_t h, Softmax sm, AttentionStrides ld, G* dq, float* rowd) {
  using Lay = Layout<HD>;
  constexpr int kL = Lay::kL;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* dos = reinterpret_cast<bf16*>(smem + Lay::kTileBytes);
  bf16* ks = reinterpret_cast<bf16*>(smem + 2 * Lay::kTileBytes);
  bf16* vs = reinterpret_cast<bf16*>(smem + 3 * Lay::kTileBytes);
  float* fs = reinterpret_cast<float*>(smem + 4 * Lay::kTileBytes + warp * 2 * kSBytes);
  float* fdp = fs + 16 * kSL;
  bf16* dzt = reinterpret_cast<bf16*>(smem + 4 * Lay::kTileBytes + kWarps * 2 * kSBytes + warp * kPBytes);
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD, off = HeadOffset(bi, hi, t, c, HD);
  q += HeadOffset(bi, hi, t, ld.q, HD), k += HeadOffset(bi, hi, t, ld.k, HD), v += HeadOffset(bi, hi, t, ld.v, HD);
  const int64_t q0 = blockIdx.x * static_cast<int64_t>(kRows), w0 = q0 + 16 * warp, tq = w0 + r;
  const int64_t last_key = std::min<int64_t>(t - 1, q0 + kRows - 1);
  const int64_t row_last = tq < t ? tq : -1;
  LoadTile<HD>(q, q0, t, ld.q, qs);
  LoadTile<HD>(dout + off, q0, t, c, dos);
  const float row_lse = tq < t ? lse[bh * t + tq] : 0.0f;
  const float inv_temp = 1.0f / sm.o.temperature;
  Accumulator acc[HD / 16];
  for (auto& a : acc) wmma::fill_fragment(a, 0.0f);
  float d_part = 0.0f, d_row = 0.0f;
  const bool d_from_out = out != nullptr && !sm.o.clip;
  if (d_from_out && tq < t) {  // each lane half the row's dims, fp32
    const float* orow = out + off + tq * c + half * (HD / 2);
    const float* dorow = dout + off + tq * c + half * (HD / 2);
    for (int i = 0; i < HD / 2; ++i) d_part += dorow[i] * orow[i];
  }
  for (int sweep = d_from_out ? 1 : 0; sweep < 2; ++sweep) {
    if (sweep == 1) d_row = d_part + __shfl_xor_sync(0xffffffffu, d_part, 1);
    for (int64_t s0 = 0; s0 <= last_key; s0 += kRows) {
      __syncthreads();
      LoadTile<HD>(k, s0, t, ld.k, ks);
      LoadTile<HD>(v, s0, t, ld.v, vs);
      __syncthreads();
      if (w0 >= t) continue;
      WarpProduct<HD / 16, kRows / 16, true>(qs + 16 * warp * kL, kL, ks, kL, fs, kSL);    // S
      WarpProduct<HD / 16, kRows / 16, true>(dos + 16 * warp * kL, kL, vs, kL, fdp, kSL);  // dP' = dO Vᵀ
      __syncwarp();
      const int valid = ValidColumns(s0 + half * kHalf, row_last);
      const float* srow = fs + r * kSL + half * kHalf;
      const float* dprow = fdp + r * kSL + half * kHalf;
      bf16* dzrow = dzt + r * kPL + half * kHalf;
      for (int j = 0; j < kHalf; ++j) {
        float dz = 0.0f;
        if (j < valid) {
          const float z = sm.Z(srow[j] * sm.o.scale);
          const float p = expf(z - row_lse);
          const float dp = sm.ClipSlope(p) * dprow[j];
          if (sweep == 0) d_part += p * dp;
          else dz = p * (dp - d_row) * sm.CapSlope(z) * inv_temp;
        }
        if (sweep == 1) dzrow[j] = __float2bfloat16_rn(dz);
      }
      if (sweep == 1) {
        __syncwarp();
        WarpAccumulate<HD>(dzt, ks, acc);  // dQ += dZ K
      }
    }
  }
  WriteRows<HD>(acc, fs, tq, t, ld.dq, sm.o.scale, dq + HeadOffset(bi, hi, t, ld.dq, HD));
  if (tq < t && half == 0) rowd[bh * t + tq] = d_row;
}

// Per key row s: dK and dV over the queries t ≥ s (G: fp32 or bf16).
template <int HD, typename G>
__global__ void __launch_bounds__(kThreads)
    BackwardKeyKernel(const float* q, const float* k, const float* v, const float* lse, const float* rowd,
                      const float* dout, int64_t t, int64_t h, Softmax sm, AttentionStrides ld, G* dk, G* dv) {
  using Lay = Layout<HD>;
  constexpr int kL = Lay::kL;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 2, half = lane % 2;
  bf16* ks = reinterpret_cast<bf16*>(smem);
  bf16* vs = reinterpret_cast<bf16*>(smem + Lay::kTileBytes);
  bf16* qs = reinterpret_cast<bf16*>(smem + 2 * Lay::kTileBytes);
  bf16* dos = reinterpret_cast<bf16*>(smem + 3 * Lay::kTileBytes);
  float* lses = reinterpret_cast<float*>(smem + 4 * Lay::kTileBytes);
  float* ds = lses + kRows;
  unsigned char* mine = smem + 4 * Lay::kTileBytes + 2 * kRows * 4;
  float* fs = reinterpret_cast<float*>(mine + warp * 2 * kSBytes);
  float* fdp = fs + 16 * kSL;
  bf16* dzt = reinterpret_cast<bf16*>(mine + kWarps * 2 * kSBytes + warp * 2 * kPBytes);
  bf16* pct = dzt + 16 * kPL;
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD, off = HeadOffset(bi, hi, t, c, HD);
  q += HeadOffset(bi, hi, t, ld.q, HD), k += HeadOffset(bi, hi, t, ld.k, HD), v += HeadOffset(bi, hi, t, ld.v, HD);
  const int64_t k0 = blockIdx.x * static_cast<int64_t>(kRows), w0 = k0 + 16 * warp, sk = w0 + r;
  LoadTile<HD>(k, k0, t, ld.k, ks);
  LoadTile<HD>(v, k0, t, ld.v, vs);
  const float inv_temp = 1.0f / sm.o.temperature;
  Accumulator acc_dk[HD / 16], acc_dv[HD / 16];
  for (auto& a : acc_dk) wmma::fill_fragment(a, 0.0f);
  for (auto& a : acc_dv) wmma::fill_fragment(a, 0.0f);
  for (int64_t t0 = k0; t0 < t; t0 += kRows) {  // queries before k0 see no key of this block
    __syncthreads();
    LoadTile<HD>(q, t0, t, ld.q, qs);
    LoadTile<HD>(dout + off, t0, t, c, dos);
    for (int i = threadIdx.x; i < kRows; i += kThreads) {
      lses[i] = t0 + i < t ? lse[bh * t + t0 + i] : 0.0f;
      ds[i] = t0 + i < t ? rowd[bh * t + t0 + i] : 0.0f;
    }
    __syncthreads();
    if (w0 >= t) continue;
    WarpProduct<HD / 16, kRows / 16, true>(ks + 16 * warp * kL, kL, qs, kL, fs, kSL);   // Sᵀ = K Qᵀ
    WarpProduct<HD / 16, kRows / 16, true>(vs + 16 * warp * kL, kL, dos, kL, fdp, kSL);  // dP'ᵀ = V dOᵀ
    __syncwarp();
    const float* srow = fs + r * kSL;
    const float* dprow = fdp + r * kSL;
    for (int j = half * kHalf; j < (half + 1) * kHalf; ++j) {
      const int64_t tq = t0 + j;
      float dz = 0.0f, pc = 0.0f;
      if (sk < t && tq >= sk && tq < t) {
        const float z = sm.Z(srow[j] * sm.o.scale);
        const float p = expf(z - lses[j]);
        const float dp = sm.ClipSlope(p) * dprow[j];
        dz = p * (dp - ds[j]) * sm.CapSlope(z) * inv_temp;
        pc = sm.Clip(p);
      }
      dzt[r * kPL + j] = __float2bfloat16_rn(dz);
      pct[r * kPL + j] = __float2bfloat16_rn(pc);
    }
    __syncwarp();
    WarpAccumulate<HD>(dzt, qs, acc_dk);   // dK += dZᵀ Q
    WarpAccumulate<HD>(pct, dos, acc_dv);  // dV += P'ᵀ dO
  }
  WriteRows<HD>(acc_dk, fs, sk, t, ld.dk, sm.o.scale, dk + HeadOffset(bi, hi, t, ld.dk, HD));
  WriteRows<HD>(acc_dv, fs, sk, t, ld.dv, 1.0f, dv + HeadOffset(bi, hi, t, ld.dv, HD));
}

template <int HD>
struct LaunchForward {
  static void Run(dim3 grid, const float* q, const float* k, const float* v, int64_t t, int64_t h, Softmax sm,
                  const AttentionStrides& ld, float* out, bf16* out16, float* lse, float* row_max,
                  double* row_entropy) {
    AllowSharedBytes(ForwardKernel<HD>, Layout<HD>::kForwardBytes, "tensor-core attention");
    ForwardKernel<HD>
        <<<grid, kThreads, Layout<HD>::kForwardBytes>>>(q, k, v, t, h, sm, ld, out, out16, lse, row_max, row_entropy);
  }
};
template <int HD>
struct LaunchBackward {
  template <typename G>
  static void Run(dim3 grid, const float* q, const float* k, const float* v, const float* out, const float* lse,
                  const float* dout, int64_t t, int64_t h, Softmax sm, const AttentionStrides& ld, G* dq, G* dk, G* dv,
                  float* rowd) {
    AllowSharedBytes(BackwardQueryKernel<HD, G>, Layout<HD>::kQueryBytes, "tensor-core attention");
    AllowSharedBytes(BackwardKeyKernel<HD, G>, Layout<HD>::kKeyBytes, "tensor-core attention");
    BackwardQueryKernel<HD, G>
        <<<grid, kThreads, Layout<HD>::kQueryBytes>>>(q, k, v, out, lse, dout, t, h, sm, ld, dq, rowd);
    BackwardKeyKernel<HD, G><<<grid, kThreads, Layout<HD>::kKeyBytes>>>(q, k, v, lse, rowd, dout, t, h, sm, ld, dk, dv);
  }
};

// float4 loads need 16-byte aligned rows: every pointer read, and row strides of whole float4s
// (heads start HD % 16 == 0 floats apart). The gradients are written a value at a time.
bool Aligned(std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  for (const void* p : ptrs) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  for (int64_t s : strides) {
    if (s % 4 != 0) return false;
  }
  return true;
}

}  // namespace

bool CudaBackend::TensorCoreAttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t,
                                             int64_t h, int64_t hd, const AttentionOptions& opt,
                                             const AttentionStrides& ld, float* out, bf16* out16, float* lse,
                                             float* row_max, double* row_entropy) {
  if (!Aligned({q, k, v, out}, {ld.q, ld.k, ld.v})) return false;
  const dim3 grid(static_cast<unsigned>((t + kRows - 1) / kRows), static_cast<unsigned>(b * h));
  if (!ForHeadDim<LaunchForward>(hd, grid, q, k, v, t, h, Softmax{opt}, ld, out, out16, lse, row_max, row_entropy)) {
    return false;
  }
  STABILITY_CUDA_LAUNCHED("tensor-core attention forward");
  return true;
}

template <typename G>
bool CudaBackend::TensorCoreAttentionBackward(const float* q, const float* k, const float* v, const float* out,
                                              const float* lse, const float* dout, int64_t b, int64_t t, int64_t h,
                                              int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld,
                                              G* dq, G* dk, G* dv, float* rowd) {
  if (!Aligned({q, k, v, dout}, {ld.q, ld.k, ld.v})) return false;
  const dim3 grid(static_cast<unsigned>((t + kRows - 1) / kRows), static_cast<unsigned>(b * h));
  if (!ForHeadDim<LaunchBackward>(hd, grid, q, k, v, out, lse, dout, t, h, Softmax{opt}, ld, dq, dk, dv, rowd)) {
    return false;
  }
  STABILITY_CUDA_LAUNCHED("tensor-core attention backward");
  return true;
}
template bool CudaBackend::TensorCoreAttentionBackward(const float*, const float*, const float*, const float*,
                                                       const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                                       const AttentionOptions&, const AttentionStrides&, float*, float*,
                                                       float*, float*);
template bool CudaBackend::TensorCoreAttentionBackward(const float*, const float*, const float*, const float*,
                                                       const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                                       const AttentionOptions&, const AttentionStrides&, __nv_bfloat16*,
                                                       __nv_bfloat16*, __nv_bfloat16*, float*);

}  // namespace stability::ops::cuda::internal
