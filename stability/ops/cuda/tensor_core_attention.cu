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
#include "stability/ops/cuda/internal/warp_mma.cuh"

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
  static constexpr int kForwardBytes = 3 * kTileBytes;  // Q, K, V tiles: the rest is in registers
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

// The forward on mma.sync (warp_mma.cuh), FlashAttention-2's way: a warp's 16 query rows
// keep Q's fragments, S = Q Kᵀ and O in registers; P goes from S's accumulators to the A
// fragments of P V without shared memory. Each lane holds rows g and g + 8 of its warp
// (g = lane / 4) and, of each 8-key column block of a tile, the keys 2q, 2q + 1 (q = lane % 4):
// a row's max and sums are the lane's 16 values a tile, then two shuffles across its quad.
// (The first tensor-core forward stored each WMMA product to shared memory and read it back a
// value at a time: 10.6 ms of a GPT-2 124M step on an H200, ~3% of the tensor cores.)
template <int HD>
__global__ void __launch_bounds__(kThreads)
    ForwardKernel(const float* q, const float* k, const float* v, int64_t t, int64_t h, Softmax sm, AttentionStrides ld,
                  float* out, bf16* out16, float* lse, float* row_max, double* row_entropy) {
  using Lay = Layout<HD>;
  constexpr int kL = Lay::kL, kKSteps = HD / 16, kKeyBlocks = kRows / 8, kDimBlocks = HD / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, quad = lane % 4;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* ks = reinterpret_cast<bf16*>(smem + Lay::kTileBytes);
  bf16* vs = reinterpret_cast<bf16*>(smem + 2 * Lay::kTileBytes);
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD, off = HeadOffset(bi, hi, t, c, HD);
  q += HeadOffset(bi, hi, t, ld.q, HD), k += HeadOffset(bi, hi, t, ld.k, HD), v += HeadOffset(bi, hi, t, ld.v, HD);
  const int64_t q0 = blockIdx.x * static_cast<int64_t>(kRows), w0 = q0 + 16 * warp;
  const int64_t last_key = std::min<int64_t>(t - 1, q0 + kRows - 1);
  const int64_t tq[2] = {w0 + g, w0 + g + 8};
  const int64_t row_last[2] = {tq[0] < t ? tq[0] : -1, tq[1] < t ? tq[1] : -1};  // keys s ≤ it count
  LoadTile<HD>(q, q0, t, ld.q, qs);
  __syncthreads();
  // Q's A fragments, k-step kk: matrix j = lane / 8 of ldmatrix is rows 8·(j % 2).., dims 8·(j / 2)..
  uint32_t qf[kKSteps][4];
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    LdMatrixX4(qf[kk], qs + (16 * warp + (lane / 8 % 2) * 8 + lane % 8) * kL + kk * 16 + (lane / 16) * 8);
  }

  float o[kDimBlocks][4];
#pragma unroll
  for (auto& block : o) {
#pragma unroll
    for (float& x : block) x = 0.0f;
  }
  // Per row (g, g + 8): m the running max of z (the quad's), l and ez this lane's share of Σ E
  // and Σ E·z, amax the largest scaled logit.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, ez[2] = {0.0f, 0.0f};
  float amax[2] = {-INFINITY, -INFINITY}, row_lse[2] = {0.0f, 0.0f};
  const auto quad_sum = [](float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
  };
  const auto quad_max = [](float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  };
  const bool clip = sm.o.clip;
  for (int sweep = clip ? 0 : 1; sweep < 2; ++sweep) {
    const bool exact = clip && sweep == 1;  // p from the row's known lse
    if (exact) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        row_lse[r] = m[r] + logf(quad_sum(l[r]));
        ez[r] = 0.0f;
      }
    }
    for (int64_t s0 = 0; s0 <= last_key; s0 += kRows) {
      __syncthreads();  // the previous tile is read
      LoadTile<HD>(k, s0, t, ld.k, ks);
      if (sweep == 1) LoadTile<HD>(v, s0, t, ld.v, vs);
      __syncthreads();
      if (w0 >= t) continue;  // the warp has no query (T not a multiple of 64)
      // S = Q Kᵀ: key block nb's B fragment is K's rows (keys) nb·8.. as stored; one ldmatrix
      // gives two key blocks' (matrix j: keys 8·(j / 2).., dims 8·(j % 2)..).
      float sacc[kKeyBlocks][4];
#pragma unroll
      for (auto& block : sacc) {
#pragma unroll
        for (float& x : block) x = 0.0f;
      }
#pragma unroll
      for (int nb = 0; nb < kKeyBlocks; nb += 2) {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
          uint32_t kf[4];
          LdMatrixX4(kf, ks + (nb * 8 + (lane / 16) * 8 + lane % 8) * kL + kk * 16 + (lane / 8 % 2) * 8);
          const uint32_t b0[2] = {kf[0], kf[1]}, b1[2] = {kf[2], kf[3]};
          MmaBf16(sacc[nb], qf[kk], b0);
          MmaBf16(sacc[nb + 1], qf[kk], b1);
        }
      }
      // The softmax on the accumulators: value i of key block nb is row g + 8·(i / 2), key
      // s0 + 8·nb + 2·quad + i % 2.
      float alpha[2] = {1.0f, 1.0f};
      const auto valid = [&](int nb, int i) { return s0 + 8 * nb + 2 * quad + i % 2 <= row_last[i / 2]; };
      if (!exact) {  // online max and sums
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nb = 0; nb < kKeyBlocks; ++nb) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (!valid(nb, i)) continue;
            const float a = sacc[nb][i] * sm.o.scale;
            amax[i / 2] = fmaxf(amax[i / 2], a);
            tmax[i / 2] = fmaxf(tmax[i / 2], sm.Z(a));
          }
        }
        float sum[2] = {0.0f, 0.0f}, sz[2] = {0.0f, 0.0f}, m_new[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          m_new[r] = fmaxf(m[r], quad_max(tmax[r]));
          alpha[r] = m_new[r] == -INFINITY ? 1.0f : expf(m[r] - m_new[r]);
        }
#pragma unroll
        for (int nb = 0; nb < kKeyBlocks; ++nb) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float e = 0.0f;
            if (valid(nb, i)) {
              const float z = sm.Z(sacc[nb][i] * sm.o.scale);
              e = expf(z - m_new[i / 2]);
              sum[i / 2] += e;
              sz[i / 2] += e * z;
            }
            sacc[nb][i] = e;  // P (unnormalised), for P V
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          l[r] = alpha[r] * l[r] + sum[r];
          ez[r] = alpha[r] * ez[r] + sz[r];
          m[r] = m_new[r];
        }
      } else {  // the exact p, clipped
#pragma unroll
        for (int nb = 0; nb < kKeyBlocks; ++nb) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float pc = 0.0f;
            if (valid(nb, i)) {
              const float z = sm.Z(sacc[nb][i] * sm.o.scale);
              const float p = expf(z - row_lse[i / 2]);
              ez[i / 2] += p * z;
              pc = sm.Clip(p);
            }
            sacc[nb][i] = pc;
          }
        }
      }
      if (sweep == 1) {
#pragma unroll
        for (int db = 0; db < kDimBlocks; ++db) {
#pragma unroll
          for (int i = 0; i < 4; ++i) o[db][i] *= alpha[i / 2];
        }
// O += P V over the tile's 64 keys, 16 a step: P's A fragment is the accumulators of key
// blocks 2·ks and 2·ks + 1 rounded in pairs; V's B fragments by a transposed ldmatrix of
// V's rows (keys), two dim blocks a load (matrix j: keys 8·(j % 2).., dims 8·(j / 2)..).
#pragma unroll
        for (int kstep = 0; kstep < kRows / 16; ++kstep) {
          const uint32_t pf[4] = {
              // indexed, not through a pointer: the array stays in registers
              PackBf16x2(sacc[2 * kstep][0], sacc[2 * kstep][1]), PackBf16x2(sacc[2 * kstep][2], sacc[2 * kstep][3]),
              PackBf16x2(sacc[2 * kstep + 1][0], sacc[2 * kstep + 1][1]),
              PackBf16x2(sacc[2 * kstep + 1][2], sacc[2 * kstep + 1][3])};
#pragma unroll
          for (int db = 0; db < kDimBlocks; db += 2) {
            uint32_t vf[4];
            LdMatrixX4Trans(vf, vs + (kstep * 16 + (lane / 8 % 2) * 8 + lane % 8) * kL + (db + lane / 16) * 8);
            const uint32_t b0[2] = {vf[0], vf[1]}, b1[2] = {vf[2], vf[3]};
            MmaBf16(o[db], pf, b0);
            MmaBf16(o[db + 1], pf, b1);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l_row = quad_sum(l[r]), ez_row = quad_sum(ez[r]);
    const float row_amax = quad_max(amax[r]);
    if (tq[r] >= t) continue;
    if (!clip) row_lse[r] = m[r] + logf(l_row);
    const float inv = clip ? 1.0f : 1.0f / l_row;
#pragma unroll
    for (int db = 0; db < kDimBlocks; ++db) {
      const int64_t at = off + tq[r] * c + db * 8 + 2 * quad;
      const float v0 = o[db][2 * r] * inv, v1 = o[db][2 * r + 1] * inv;
      out[at] = v0;
      out[at + 1] = v1;
      if (out16) {  // the next product's operand
        out16[at] = __float2bfloat16_rn(v0);
        out16[at + 1] = __float2bfloat16_rn(v1);
      }
    }
    if (quad == 0) {
      const int64_t row = bh * t + tq[r];
      lse[row] = row_lse[r];
      row_max[row] = row_amax;
      row_entropy[row] = static_cast<double>(row_lse[r]) - (clip ? ez_row : ez_row / l_row);
    }
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
