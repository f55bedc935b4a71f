// Fused causal attention on the tensor cores (MatmulPrecision::kBf16): the algorithm of
// fused_attention.cu — the same sweeps and outputs, nothing T×T stored — with its products on
// mma.sync m16n8k16 (bf16 operands, fp32 accumulation) from ldmatrix fragments, as
// FlashAttention-2 (internal/warp_mma.cuh has the instructions and their register layouts).
//
// A block owns 64 rows (queries in the forward and dQ kernels, keys in the dK/dV kernel), 4 warps
// of 16; the other side streams through shared memory in tiles of 64 rows, two buffers each: while
// the warps compute on tile i, tile i + 1's cp.async copies are in flight (internal/cp_async.cuh),
// as FlashAttention-2. Q, K, V and dO are read in bf16 laid out as the fp32 ones (a head's rows
// ld apart): written so by their producers in a model's step (QKV's product, Proj's backward:
// the layer's kept operands), else rounded once by RowsToBf16Kernel — q, k, v by the forward
// into the kept operands, which the backward reads again. A warp's products stay in its
// registers: each lane holds rows g and g + 8 of the warp's 16 (g = lane / 4) and, of each
// 8-column block of a tile, the columns 2q and 2q + 1 (q = lane % 4) — so a row's reduction is
// the lane's 16 values a tile and two shuffles across its quad, and the accumulators of one
// product, rounded to bf16 in pairs, are the A fragments of the next (P V, dZ K, dZᵀ Q, P'ᵀ dO)
// without shared memory. Softmax, statistics and accumulators are fp32; P and dZ are rounded to
// bf16 for their products, as FlashAttention does, and the softmax runs in base 2 on ex2.approx
// (Softmax2, below: ~1e-7 relative, far under that rounding; the soft cap's tanh is made of it
// too; fused_attention.cu, the fp32 parity kernel, keeps expf and tanhf). Measured on an H200
// (docs/gpu): the first version, each WMMA product stored to shared memory and read back a value
// at a time, took 43 ms of a GPT-2 124M step (3–4% of the tensor cores); this one's forward and
// backward 2.7 and 7.3 ms (~12%).
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

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "stability/ops/cuda/internal/common.cuh"
#include "stability/ops/cuda/internal/cp_async.cuh"
#include "stability/ops/cuda/internal/fused_attention.cuh"
#include "stability/ops/cuda/internal/warp_mma.cuh"

namespace stability::ops::cuda::internal {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kRows = 64;  // rows a block owns, and rows of the other side per tile
constexpr int kWarps = 4;  // 16 rows each
constexpr int kThreads = 32 * kWarps;
constexpr int kBlocks = kRows / 8;  // 8-column blocks of a [16 × 64] product
constexpr float kLog2e = 1.44269504088896341f, kLn2 = 0.693147180559945309f;

// Shared memory: bf16 row tiles [64 × HD], rows HD + 8 values apart (16-byte aligned rows for
// ldmatrix and cp.async, and the 8 rows of one of ldmatrix's matrices in different banks);
// tile j at smem + j·kTile values. The streamed side's tiles (and the key kernel's lse and D
// rows, 64 floats each) two of each: tile i in buffer i % 2.
template <int HD>
struct Layout {
  static constexpr int kL = HD + 8;
  static constexpr int kTile = kRows * kL;
  static constexpr int kTileBytes = kTile * 2;
  static constexpr int kForwardBytes = 5 * kTileBytes;                  // Q; K, V ×2
  static constexpr int kQueryBytes = 6 * kTileBytes;                    // Q, dO; K, V ×2
  static constexpr int kKeyBytes = 6 * kTileBytes + 2 * 2 * kRows * 4;  // K, V; Q, dO ×2; lse, D ×2
};

// The kernels' inputs in bf16, laid out as the fp32 ones ([B·T, C] blocks, C = H·HD, heads
// contiguous in a row): head h of token row b·T + t at x[(b·T + t)·ld + h·HD], rows ld apart
// (a multiple of 8: 16-byte aligned rows).
struct Rows16 {
  const bf16* x;
  int64_t ld;
  // Row 0 of head hi of batch row bi.
  __device__ const bf16* Head(int64_t bi, int64_t hi, int64_t t, int hd) const {
    return x + HeadOffset(bi, hi, t, ld, hd);
  }
};
struct Operands16 {
  Rows16 q, k, v, dout;
};

// Rows [row0, row0 + 64) of a head (x: its row 0, rows ld apart; rows at or past t as zeros)
// into a shared tile by cp.async, 16 bytes a copy; the caller commits and waits.
template <int HD>
__device__ void CopyTile(const bf16* x, int64_t ld, int64_t row0, int64_t t, bf16* tile) {
  constexpr int kChunks = HD / 8;
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, d = (i % kChunks) * 8;
    const bool in = row0 + r < t;
    CpAsync<16>(tile + r * Layout<HD>::kL + d, x + (in ? (row0 + r) * ld + d : 0), in);
  }
}
// Values [i0, i0 + 64) of a row statistic (rows at or past t as zeros) into shared memory.
__device__ inline void CopyRowValues(const float* x, int64_t i0, int64_t t, float* dst) {
  for (int i = threadIdx.x; i < kRows; i += kThreads) {
    const bool in = i0 + i < t;
    CpAsync<4>(dst + i, x + (in ? i0 + i : 0), in);
  }
}

// A warp's 16 rows of a tile (a: its first) as A fragments, per 16 dims one ldmatrix (matrix
// j = lane / 8: rows 8·(j % 2).., dims 8·(j / 2)..).
template <int HD>
__device__ void LoadRowFragments(const bf16* a, uint32_t (&af)[HD / 16][4]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    LdMatrixX4(af[kk], a + ((lane / 8 % 2) * 8 + lane % 8) * Layout<HD>::kL + kk * 16 + (lane / 16) * 8);
  }
}

// A warp's product of two row tiles, F [16 × 64] = A Bᵀ: A the warp's 16 rows of one tile (as
// LoadRowFragments', af), B the 64 rows of another (S = Q Kᵀ, dP' = dO Vᵀ, Sᵀ = K Qᵀ,
// dP'ᵀ = V dOᵀ). B's fragments two column blocks a load (matrix j: rows 8·(j / 2).., dims
// 8·(j % 2)..).
template <int HD>
__device__ void RowsTimesRowsT(const uint32_t (&af)[HD / 16][4], const bf16* b, float (&f)[kBlocks][4]) {
  constexpr int kL = Layout<HD>::kL;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
    for (int i = 0; i < 4; ++i) f[nb][i] = 0.0f;
  }
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
    for (int nb = 0; nb < kBlocks; nb += 2) {
      uint32_t bf[4];
      LdMatrixX4(bf, b + (nb * 8 + (lane / 16) * 8 + lane % 8) * kL + kk * 16 + (lane / 8 % 2) * 8);
      const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
      MmaBf16(f[nb], af[kk], b0);
      MmaBf16(f[nb + 1], af[kk], b1);
    }
  }
}
// The same with A from shared memory (a: the warp's first row).
template <int HD>
__device__ void RowsTimesRowsT(const bf16* a, const bf16* b, float (&f)[kBlocks][4]) {
  uint32_t af[HD / 16][4];
  LoadRowFragments<HD>(a, af);
  RowsTimesRowsT<HD>(af, b, f);
}

// acc [16 × HD] += P [16 × 64] · B, B the 64 rows of a tile (P V, dZ K, dZᵀ Q, P'ᵀ dO). P is
// the warp's accumulators of a RowsTimesRowsT (its values replaced), rounded to bf16 in pairs:
// 16 columns a step, its A fragment is column blocks 2·ks and 2·ks + 1. B's fragments by a
// transposed ldmatrix of the tile's rows, two dim blocks a load (matrix j: rows 8·(j % 2)..,
// dims 8·(j / 2)..).
template <int HD>
__device__ void AccumulateTimesRows(const float (&p)[kBlocks][4], const bf16* b, float (&acc)[HD / 8][4]) {
  constexpr int kL = Layout<HD>::kL;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int ks = 0; ks < kRows / 16; ++ks) {
    const uint32_t pf[4] = {PackBf16x2(p[2 * ks][0], p[2 * ks][1]), PackBf16x2(p[2 * ks][2], p[2 * ks][3]),
                            PackBf16x2(p[2 * ks + 1][0], p[2 * ks + 1][1]),
                            PackBf16x2(p[2 * ks + 1][2], p[2 * ks + 1][3])};
#pragma unroll
    for (int db = 0; db < HD / 8; db += 2) {
      uint32_t bf[4];
      LdMatrixX4Trans(bf, b + (ks * 16 + (lane / 8 % 2) * 8 + lane % 8) * kL + (db + lane / 16) * 8);
      const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
      MmaBf16(acc[db], pf, b0);
      MmaBf16(acc[db + 1], pf, b1);
    }
  }
}

template <int HD>
__device__ void Zero(float (&acc)[HD / 8][4]) {
#pragma unroll
  for (int db = 0; db < HD / 8; ++db) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[db][i] = 0.0f;
  }
}

// The warp's rows row0 + g and row0 + g + 8 of acc [16 × HD], scaled, into out (rows ld apart;
// fp32 or bf16, rounded once from the scaled value); rows at or past t are not written.
template <int HD, typename G>
__device__ void WriteRows(const float (&acc)[HD / 8][4], int64_t row0, int64_t t, int64_t ld, float scale, G* out) {
  const int lane = threadIdx.x % 32, g = lane / 4, quad = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + g + 8 * r;
    if (row >= t) continue;
#pragma unroll
    for (int db = 0; db < HD / 8; ++db) {
      Store(scale * acc[db][2 * r], out + row * ld + db * 8 + 2 * quad);
      Store(scale * acc[db][2 * r + 1], out + row * ld + db * 8 + 2 * quad + 1);
    }
  }
}

// Sum and max of a row's values over its quad (the lanes 4g..4g + 3 that share it).
__device__ inline float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ inline float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// The softmax's elementwise math (fused_attention.cuh's Softmax) as the bf16 kernels run it: in
// base 2 and specialised at compile time. Logits are kept in units of log2 e (z2 = z·log2 e, so
// e^(z − m) = 2^(z2 − m2): one FFMA and one ex2.approx), and the cap and the clip are compiled
// in or out (a run-time option tested per value cost the kernels more than their products).
//   no cap: z2 = s·zs2,                       zs2 = scale/τ·log2 e
//   cap:    th = tanh(s·scale/(τ·c)) = 1 − 2/(2^(s·us2) + 1),  us2 = 2·log2 e·scale/(τ·c)
//           z2 = c2·th (c2 = c·log2 e), dz/du = 1 − th²  (common.cuh's FastTanh, in base 2)
// Both are increasing in s (scale, τ > 0: TensorCoreAttention* check), so a row's largest z is
// that of its largest s: the forward's running max costs one fmax a value.
template <bool kCap, bool kClip>
struct Softmax2 {
  static constexpr bool kClipped = kClip;
  float scale, inv_temp, zs2, us2, c2, clip_a, clip_g;
  explicit Softmax2(const AttentionOptions& o)
      : scale(o.scale),
        inv_temp(1.0f / o.temperature),
        zs2(o.scale / o.temperature * kLog2e),
        us2(kCap ? 2.0f * kLog2e * o.scale / (o.temperature * o.soft_cap) : 0.0f),
        c2(o.soft_cap * kLog2e),
        clip_a(o.clip_zeta - o.clip_gamma),
        clip_g(o.clip_gamma) {}
  struct Logit {
    float z2, th;  // th = z/c (cap only)
  };
  __device__ Logit Z2(float s) const {
    if constexpr (kCap) {
      const float th = 1.0f - 2.0f * RcpApprox(Exp2Approx(s * us2) + 1.0f);
      return {c2 * th, th};
    } else {
      return {s * zs2, 0.0f};
    }
  }
  __device__ float CapSlope(const Logit& z) const { return kCap ? 1.0f - z.th * z.th : 1.0f; }
  __device__ float Clip(float p) const { return kClip ? fminf(fmaxf(clip_a * p + clip_g, 0.0f), 1.0f) : p; }
  __device__ float ClipSlope(float p) const {
    if constexpr (!kClip) return 1.0f;
    const float pre = clip_a * p + clip_g;
    return (pre > 0.0f && pre < 1.0f) ? clip_a : 0.0f;
  }
};

// Calls f(Softmax2<cap, clip>) for the options' variant.
template <typename F>
void ForSoftmaxVariant(const AttentionOptions& o, F&& f) {
  if (o.soft_cap > 0) {
    if (o.clip) return f(Softmax2<true, true>(o));
    return f(Softmax2<true, false>(o));
  }
  if (o.clip) return f(Softmax2<false, true>(o));
  f(Softmax2<false, false>(o));
}

// A tile's values need a mask only on the diagonal (and past T): the others, most of them,
// take the element loops compiled without one (f(false_type) vs f(true_type)).
template <typename F>
__device__ void MaskedIf(bool masked, F&& f) {
  if (masked) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

template <int HD, typename SM>
__global__ void __launch_bounds__(kThreads)
    ForwardKernel(Operands16 x, int64_t t, int64_t h, SM sm, float* out, bf16* out16, float* lse, float* row_max,
                  double* row_entropy) {
  using Lay = Layout<HD>;
  constexpr int kL = Lay::kL, kTile = Lay::kTile;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, quad = lane % 4;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* ks = qs + kTile;      // key tile i at ks + (i % 2)·kTile
  bf16* vs = qs + 3 * kTile;  // value tile i at vs + (i % 2)·kTile
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD, off = HeadOffset(bi, hi, t, c, HD);
  const bf16 *qh = x.q.Head(bi, hi, t, HD), *kh = x.k.Head(bi, hi, t, HD), *vh = x.v.Head(bi, hi, t, HD);
  // The last query blocks (the most key tiles: causal) first, so the light ones fill the tail.
  const int64_t q0 = (gridDim.x - 1 - blockIdx.x) * static_cast<int64_t>(kRows), w0 = q0 + 16 * warp;
  const int64_t last_key = std::min<int64_t>(t - 1, q0 + kRows - 1);
  const int64_t tq[2] = {w0 + g, w0 + g + 8};
  const int64_t row_last[2] = {tq[0] < t ? tq[0] : -1, tq[1] < t ? tq[1] : -1};  // keys s ≤ it count

  float o[HD / 8][4];
  Zero<HD>(o);
  // Per row (g, g + 8): m2 the running max of z2 (the quad's), l and ez this lane's share of
  // Σ E and Σ E·z2, smax its largest S.
  float m2[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, ez[2] = {0.0f, 0.0f};
  float smax[2] = {-INFINITY, -INFINITY}, lse2[2] = {0.0f, 0.0f};
  constexpr bool clip = SM::kClipped;
  // The key tiles of each sweep in turn (the clip's first sweep reads no V): item i is key
  // tile i % tiles of sweep i / tiles.
  const int64_t tiles = last_key / kRows + 1, items = (clip ? 2 : 1) * tiles;
  const auto issue = [&](int64_t i) {
    CopyTile<HD>(kh, x.k.ld, i % tiles * kRows, t, ks + i % 2 * kTile);
    if (!clip || i >= tiles) CopyTile<HD>(vh, x.v.ld, i % tiles * kRows, t, vs + i % 2 * kTile);
    CpAsyncCommit();
  };
  CopyTile<HD>(qh, x.q.ld, q0, t, qs);  // with item 0's group
  issue(0);
  for (int64_t it = 0; it < items; ++it) {
    const bool exact = clip && it >= tiles;  // p from the row's known lse
    const int64_t s0 = it % tiles * kRows;
    if (clip && it == tiles) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        lse2[r] = m2[r] + log2f(QuadSum(l[r]));
        ez[r] = 0.0f;
      }
    }
    DoubleBufferedNext(it, items, issue);  // item it (and Q) landed, item it + 1 in flight
    if (w0 >= t) continue;  // the warp has no query (T not a multiple of 64)
    const bf16 *kt = ks + it % 2 * kTile, *vt = vs + it % 2 * kTile;
    float s[kBlocks][4];
    RowsTimesRowsT<HD>(qs + 16 * warp * kL, kt, s);  // S = Q Kᵀ
    // Value i of column block nb: row g + 8·(i / 2), key s0 + 8·nb + 2·quad + i % 2 — counted
    // if that column is at most lim of its row.
    const int lim[2] = {static_cast<int>(std::max<int64_t>(row_last[0] - s0, -1)),
                        static_cast<int>(std::max<int64_t>(row_last[1] - s0, -1))};
    float alpha[2] = {1.0f, 1.0f};
    MaskedIf(!(s0 + kRows - 1 <= w0 && w0 + 15 < t), [&](auto masked) {
      const auto valid = [&](int nb, int i) {
        return !decltype(masked)::value || 8 * nb + 2 * quad + i % 2 <= lim[i / 2];
      };
      if (!exact) {  // online max and sums
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (valid(nb, i)) tmax[i / 2] = fmaxf(tmax[i / 2], s[nb][i]);
          }
        }
        float sum[2] = {0.0f, 0.0f}, sz[2] = {0.0f, 0.0f}, m_new[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          tmax[r] = QuadMax(tmax[r]);
          smax[r] = fmaxf(smax[r], tmax[r]);
          m_new[r] = fmaxf(m2[r], tmax[r] == -INFINITY ? -INFINITY : sm.Z2(tmax[r]).z2);
          alpha[r] = m_new[r] == -INFINITY ? 1.0f : Exp2Approx(m2[r] - m_new[r]);
        }
#pragma unroll
        for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float e = 0.0f;
            if (valid(nb, i)) {
              const float z2 = sm.Z2(s[nb][i]).z2;
              e = Exp2Approx(z2 - m_new[i / 2]);
              sum[i / 2] += e;
              sz[i / 2] += e * z2;
            }
            s[nb][i] = e;  // P, unnormalised
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          l[r] = alpha[r] * l[r] + sum[r];
          ez[r] = alpha[r] * ez[r] + sz[r];
          m2[r] = m_new[r];
        }
      } else {  // the exact p, clipped
#pragma unroll
        for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float pc = 0.0f;
            if (valid(nb, i)) {
              const float z2 = sm.Z2(s[nb][i]).z2;
              const float p = Exp2Approx(z2 - lse2[i / 2]);
              ez[i / 2] += p * z2;
              pc = sm.Clip(p);
            }
            s[nb][i] = pc;
          }
        }
      }
    });
    if (!clip || exact) {
#pragma unroll
      for (int db = 0; db < HD / 8; ++db) {
#pragma unroll
        for (int i = 0; i < 4; ++i) o[db][i] *= alpha[i / 2];
      }
      AccumulateTimesRows<HD>(s, vt, o);  // O += P V
    }
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l_row = QuadSum(l[r]), ez_row = QuadSum(ez[r]) * kLn2;  // Σ E·z
    if (!clip) lse2[r] = m2[r] + log2f(l_row);
    inv[r] = clip ? 1.0f : 1.0f / l_row;
    if (tq[r] < t && quad == 0) {
      const int64_t row = bh * t + tq[r];
      const float row_lse = lse2[r] * kLn2;
      lse[row] = row_lse;
      row_max[row] = smax[r] * sm.scale;
      row_entropy[row] = static_cast<double>(row_lse) - (clip ? ez_row : ez_row / l_row);
    }
  }
#pragma unroll
  for (int db = 0; db < HD / 8; ++db) {
#pragma unroll
    for (int i = 0; i < 4; ++i) o[db][i] *= inv[i / 2];
  }
  WriteRows<HD>(o, w0, t, c, 1.0f, out + off);
  if (out16) WriteRows<HD>(o, w0, t, c, 1.0f, out16 + off);  // the next product's operand
}

// Per query row: D (from dO·O, or a first sweep under the clip), then dQ (G: fp32 or bf16).
// D = dO·O from the bf16 dO the products read (as FlashAttention-2) and the fp32 out.
template <int HD, typename SM, typename G>
__global__ void __launch_bounds__(kThreads)
    BackwardQueryKernel(Operands16 x, const float* out, const float* lse, int64_t t, int64_t h, SM sm, int64_t ld_dq,
                        G* dq, float* rowd) {
  using Lay = Layout<HD>;
  constexpr int kL = Lay::kL, kTile = Lay::kTile;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, quad = lane % 4;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* dos = qs + kTile;
  bf16* ks = qs + 2 * kTile;  // key tile i at ks + (i % 2)·kTile
  bf16* vs = qs + 4 * kTile;  // value tile i at vs + (i % 2)·kTile
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h, c = h * HD, off = HeadOffset(bi, hi, t, c, HD);
  const bf16 *kh = x.k.Head(bi, hi, t, HD), *vh = x.v.Head(bi, hi, t, HD);
  // The last query blocks (the most key tiles: causal) first, so the light ones fill the tail.
  const int64_t q0 = (gridDim.x - 1 - blockIdx.x) * static_cast<int64_t>(kRows), w0 = q0 + 16 * warp;
  const int64_t last_key = std::min<int64_t>(t - 1, q0 + kRows - 1);
  const int64_t tq[2] = {w0 + g, w0 + g + 8};
  const int64_t row_last[2] = {tq[0] < t ? tq[0] : -1, tq[1] < t ? tq[1] : -1};
  const bool d_from_out = out != nullptr && !SM::kClipped;
  // The key tiles of each sweep in turn: item i is key tile i % tiles of sweep
  // i / tiles + (d_from_out ? 1 : 0); every item reads K and V.
  const int64_t tiles = last_key / kRows + 1, items = (d_from_out ? 1 : 2) * tiles, dq_from = d_from_out ? 0 : tiles;
  const auto issue = [&](int64_t i) {
    CopyTile<HD>(kh, x.k.ld, i % tiles * kRows, t, ks + i % 2 * kTile);
    CopyTile<HD>(vh, x.v.ld, i % tiles * kRows, t, vs + i % 2 * kTile);
    CpAsyncCommit();
  };
  CopyTile<HD>(x.q.Head(bi, hi, t, HD), x.q.ld, q0, t, qs);  // with item 0's group
  CopyTile<HD>(x.dout.Head(bi, hi, t, HD), x.dout.ld, q0, t, dos);
  issue(0);
  float lse2[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) lse2[r] = tq[r] < t ? lse[bh * t + tq[r]] * kLog2e : 0.0f;
  float acc[HD / 8][4];
  Zero<HD>(acc);
  float d_part[2] = {0.0f, 0.0f}, d_row[2] = {0.0f, 0.0f};
  if (d_from_out) {  // each lane of the quad a quarter of the row's dims, fp32
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (tq[r] >= t) continue;
      const float* orow = out + off + tq[r] * c + quad * (HD / 4);
      const bf16* dorow = x.dout.Head(bi, hi, t, HD) + tq[r] * x.dout.ld + quad * (HD / 4);
      for (int i = 0; i < HD / 4; ++i) d_part[r] += __bfloat162float(dorow[i]) * orow[i];
    }
  }
  for (int64_t it = 0; it < items; ++it) {
    const bool dq_sweep = it >= dq_from;  // else D's sweep
    const int64_t s0 = it % tiles * kRows;
    if (it == dq_from) {
#pragma unroll
      for (int r = 0; r < 2; ++r) d_row[r] = QuadSum(d_part[r]);
    }
    DoubleBufferedNext(it, items, issue);  // item it (and Q, dO) landed, item it + 1 in flight
    if (w0 >= t) continue;
    const bf16 *kt = ks + it % 2 * kTile, *vt = vs + it % 2 * kTile;
    float s[kBlocks][4], dp[kBlocks][4];
    RowsTimesRowsT<HD>(qs + 16 * warp * kL, kt, s);    // S
    RowsTimesRowsT<HD>(dos + 16 * warp * kL, vt, dp);  // dP' = dO Vᵀ
    const int lim[2] = {static_cast<int>(std::max<int64_t>(row_last[0] - s0, -1)),
                        static_cast<int>(std::max<int64_t>(row_last[1] - s0, -1))};
    // dZ without its 1/τ (in dQ's final scale).
    MaskedIf(!(s0 + kRows - 1 <= w0 && w0 + 15 < t), [&](auto masked) {
#pragma unroll
      for (int nb = 0; nb < kBlocks; ++nb) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float dz = 0.0f;
          if (!decltype(masked)::value || 8 * nb + 2 * quad + i % 2 <= lim[i / 2]) {
            const auto z = sm.Z2(s[nb][i]);
            const float p = Exp2Approx(z.z2 - lse2[i / 2]);
            const float dpc = sm.ClipSlope(p) * dp[nb][i];
            if (!dq_sweep)
              d_part[i / 2] += p * dpc;
            else
              dz = p * (dpc - d_row[i / 2]) * sm.CapSlope(z);
          }
          s[nb][i] = dz;
        }
      }
    });
    if (dq_sweep) AccumulateTimesRows<HD>(s, kt, acc);  // dQ += dZ K
  }
  WriteRows<HD>(acc, w0, t, ld_dq, sm.scale * sm.inv_temp, dq + HeadOffset(bi, hi, t, ld_dq, HD));
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (tq[r] < t && quad == 0) rowd[bh * t + tq[r]] = d_row[r];
  }
}

// Per key row s: dK and dV over the queries t ≥ s (G: fp32 or bf16).
template <int HD, typename SM, typename G>
__global__ void __launch_bounds__(kThreads)
    BackwardKeyKernel(Operands16 x, const float* lse, const float* rowd, int64_t t, int64_t h, SM sm, int64_t ld_dk,
                      int64_t ld_dv, G* dk, G* dv) {
  using Lay = Layout<HD>;
  constexpr int kL = Lay::kL, kTile = Lay::kTile;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, quad = lane % 4;
  bf16* ks = reinterpret_cast<bf16*>(smem);
  bf16* vs = ks + kTile;
  bf16* qs = ks + 2 * kTile;                                           // query tile i at qs + (i % 2)·kTile
  bf16* dos = ks + 4 * kTile;                                          // its dO at dos + (i % 2)·kTile
  float* lses = reinterpret_cast<float*>(smem + 6 * Lay::kTileBytes);  // its lse at lses + (i % 2)·64
  float* ds = lses + 2 * kRows;                                        // its D at ds + (i % 2)·64
  const int64_t bh = blockIdx.y, bi = bh / h, hi = bh % h;
  const bf16 *qh = x.q.Head(bi, hi, t, HD), *doh = x.dout.Head(bi, hi, t, HD);
  // Key block 0 (every query tile) first: the blocks run heaviest first, as the query kernels'.
  const int64_t k0 = blockIdx.x * static_cast<int64_t>(kRows), w0 = k0 + 16 * warp;
  const int64_t sk[2] = {w0 + g, w0 + g + 8};
  // The query tiles from k0 (queries before it see no key of this block): item i at k0 + 64·i.
  const int64_t items = (t - k0 + kRows - 1) / kRows;
  const auto issue = [&](int64_t i) {
    const int64_t t0 = k0 + i * kRows;
    CopyTile<HD>(qh, x.q.ld, t0, t, qs + i % 2 * kTile);
    CopyTile<HD>(doh, x.dout.ld, t0, t, dos + i % 2 * kTile);
    CopyRowValues(lse + bh * t, t0, t, lses + i % 2 * kRows);
    CopyRowValues(rowd + bh * t, t0, t, ds + i % 2 * kRows);
    CpAsyncCommit();
  };
  CopyTile<HD>(x.k.Head(bi, hi, t, HD), x.k.ld, k0, t, ks);  // with item 0's group
  CopyTile<HD>(x.v.Head(bi, hi, t, HD), x.v.ld, k0, t, vs);
  issue(0);
  float acc_dk[HD / 8][4], acc_dv[HD / 8][4];
  Zero<HD>(acc_dk);
  Zero<HD>(acc_dv);
  // The warp's K and V rows, the A operands of every tile's two products, kept in registers
  // at head dim 64 (the presets'): 240 registers, no spill, 2 blocks an SM as at 192. At 96 and
  // 128 they spill, at 16 and 32 they cost a block an SM: those read them from shared memory
  // each tile.
  constexpr bool kFragmentsKept = HD == 64;
  uint32_t kf[kFragmentsKept ? HD / 16 : 1][4], vf[kFragmentsKept ? HD / 16 : 1][4];
  for (int64_t it = 0; it < items; ++it) {
    const int64_t t0 = k0 + it * kRows;
    DoubleBufferedNext(it, items, issue);  // item it (and K, V) landed, item it + 1 in flight
    if (w0 >= t) continue;
    if constexpr (kFragmentsKept) {
      if (it == 0) {
        LoadRowFragments<HD>(ks + 16 * warp * kL, kf);
        LoadRowFragments<HD>(vs + 16 * warp * kL, vf);
      }
    }
    const bf16 *qt = qs + it % 2 * kTile, *dot = dos + it % 2 * kTile;
    const float *lset = lses + it % 2 * kRows, *dt = ds + it % 2 * kRows;
    float s[kBlocks][4], dp[kBlocks][4];
    if constexpr (kFragmentsKept) {
      RowsTimesRowsT<HD>(kf, qt, s);    // Sᵀ = K Qᵀ
      RowsTimesRowsT<HD>(vf, dot, dp);  // dP'ᵀ = V dOᵀ
    } else {
      RowsTimesRowsT<HD>(ks + 16 * warp * kL, qt, s);
      RowsTimesRowsT<HD>(vs + 16 * warp * kL, dot, dp);
    }
    // Value i of column block nb: key row sk[i / 2], query t0 + j with j = 8·nb + 2·quad + i % 2,
    // counted if lo[i / 2] ≤ j < hi (the key is at or before the query, the query before T).
    // dZᵀ (without its 1/τ: in dK's final scale) replaces Sᵀ, and P'ᵀ dP'ᵀ (each value read
    // before it is replaced).
    const int lo[2] = {sk[0] < t ? static_cast<int>(std::max<int64_t>(sk[0] - t0, -1)) : kRows,
                       sk[1] < t ? static_cast<int>(std::max<int64_t>(sk[1] - t0, -1)) : kRows};
    const int hi_j = static_cast<int>(std::min<int64_t>(t - t0, kRows));
    MaskedIf(!(t0 >= w0 + 15 && t0 + kRows - 1 < t && w0 + 15 < t), [&](auto masked) {
#pragma unroll
      for (int nb = 0; nb < kBlocks; ++nb) {
        const int j0 = 8 * nb + 2 * quad;
        const float2 lse_j = *reinterpret_cast<const float2*>(lset + j0),
                     d_j = *reinterpret_cast<const float2*>(dt + j0);
        const float lse2_j[2] = {lse_j.x * kLog2e, lse_j.y * kLog2e}, dd_j[2] = {d_j.x, d_j.y};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int j = j0 + i % 2;
          float dz = 0.0f, clipped = 0.0f;
          if (!decltype(masked)::value || (j >= lo[i / 2] && j < hi_j)) {
            const auto z = sm.Z2(s[nb][i]);
            const float p = Exp2Approx(z.z2 - lse2_j[i % 2]);
            const float dpc = sm.ClipSlope(p) * dp[nb][i];
            dz = p * (dpc - dd_j[i % 2]) * sm.CapSlope(z);
            clipped = sm.Clip(p);
          }
          s[nb][i] = dz;
          dp[nb][i] = clipped;
        }
      }
    });
    AccumulateTimesRows<HD>(s, qt, acc_dk);    // dK += dZᵀ Q
    AccumulateTimesRows<HD>(dp, dot, acc_dv);  // dV += P'ᵀ dO
  }
  WriteRows<HD>(acc_dk, w0, t, ld_dk, sm.scale * sm.inv_temp, dk + HeadOffset(bi, hi, t, ld_dk, HD));
  WriteRows<HD>(acc_dv, w0, t, ld_dv, 1.0f, dv + HeadOffset(bi, hi, t, ld_dv, HD));
}

// Up to four [B·T, C] fp32 tensors (rows ld[i] apart) rounded to bf16 into y[i] (rows ld_y[i]
// apart; grid.y: one row of blocks a tensor): 8 values at a time, two 16-byte loads and one
// 16-byte store, two such in flight a thread.
struct RowSources {
  const float* x[4];
  int64_t ld[4];
  bf16* y[4];
  int64_t ld_y[4];
};
__global__ void RowsToBf16Kernel(RowSources src, int64_t rows, int64_t c) {
  // Selected, not indexed: a kernel parameter's array indexed at run time is copied to the stack.
  const unsigned w = blockIdx.y;
  const float* x = w == 0 ? src.x[0] : w == 1 ? src.x[1] : w == 2 ? src.x[2] : src.x[3];
  const int64_t ld = w == 0 ? src.ld[0] : w == 1 ? src.ld[1] : w == 2 ? src.ld[2] : src.ld[3];
  bf16* y = w == 0 ? src.y[0] : w == 1 ? src.y[1] : w == 2 ? src.y[2] : src.y[3];
  const int64_t ld_y = w == 0 ? src.ld_y[0] : w == 1 ? src.ld_y[1] : w == 2 ? src.ld_y[2] : src.ld_y[3];
  const int64_t chunks = c / 8;
  GridStrideBatched<2>(
      blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, static_cast<int64_t>(gridDim.x) * blockDim.x,
      rows * chunks,
      [&](int64_t i) {
        const float* p = x + i / chunks * ld + i % chunks * 8;
        const float4 lo = *reinterpret_cast<const float4*>(p), hi = *reinterpret_cast<const float4*>(p + 4);
        return uint4{PackBf16x2(lo.x, lo.y), PackBf16x2(lo.z, lo.w), PackBf16x2(hi.x, hi.y), PackBf16x2(hi.z, hi.w)};
      },
      [&](int64_t i, uint4 packed) { *reinterpret_cast<uint4*>(y + i / chunks * ld_y + i % chunks * 8) = packed; });
}

// The first `count` of src's tensors [rows, c], one launch.
void RoundRows(const RowSources& src, int count, int64_t rows, int64_t c) {
  constexpr int kThreadsPerBlock = 256;
  const int64_t blocks = std::min<int64_t>((rows * c / 8 + 2 * kThreadsPerBlock - 1) / (2 * kThreadsPerBlock), 8192);
  const dim3 grid(static_cast<unsigned>(std::max<int64_t>(blocks, 1)), static_cast<unsigned>(count));
  RowsToBf16Kernel<<<grid, kThreadsPerBlock>>>(src, rows, c);
  STABILITY_CUDA_LAUNCHED("RowsToBf16Kernel");
}

// The kernels' bf16 operands: q, k, v in qkv16 [B·T, 3·C] (the column blocks, as QKV's output)
// and dO in dout16 [B·T, C] (backward only), each rounded here from its fp32 tensor unless
// already there (*_kept: the layer's kept operands, written by their producer or an earlier
// forward) — one launch for those rounded.
Operands16 PrepareOperands(const float* q, const float* k, const float* v, const float* dout,
                           const AttentionStrides& ld, int64_t rows, int64_t c, bf16* qkv16, bool qkv_kept,
                           bf16* dout16, bool dout_kept) {
  const int64_t w = 3 * c;
  RowSources src{};
  int count = 0;
  const auto round = [&](const float* x, int64_t ld_x, bf16* y, int64_t ld_y) {
    src.x[count] = x, src.ld[count] = ld_x, src.y[count] = y, src.ld_y[count] = ld_y;
    ++count;
  };
  if (!qkv_kept) round(q, ld.q, qkv16, w), round(k, ld.k, qkv16 + c, w), round(v, ld.v, qkv16 + 2 * c, w);
  if (dout && !dout_kept) round(dout, c, dout16, c);
  if (count > 0) RoundRows(src, count, rows, c);
  return {{qkv16, w}, {qkv16 + c, w}, {qkv16 + 2 * c, w}, {dout16, c}};
}

template <int HD>
struct LaunchForward {
  static void Run(dim3 grid, Operands16 x, int64_t t, int64_t h, const AttentionOptions& opt, float* out, bf16* out16,
                  float* lse, float* row_max, double* row_entropy) {
    ForSoftmaxVariant(opt, [&](auto sm) {
      const auto kernel = ForwardKernel<HD, decltype(sm)>;
      AllowSharedBytes(kernel, Layout<HD>::kForwardBytes, "tensor-core attention");
      kernel<<<grid, kThreads, Layout<HD>::kForwardBytes>>>(x, t, h, sm, out, out16, lse, row_max, row_entropy);
    });
  }
};
template <int HD>
struct LaunchBackward {
  template <typename G>
  static void Run(dim3 grid, Operands16 x, const float* out, const float* lse, int64_t t, int64_t h,
                  const AttentionOptions& opt, const AttentionStrides& ld, G* dq, G* dk, G* dv, float* rowd) {
    ForSoftmaxVariant(opt, [&](auto sm) {
      const auto query = BackwardQueryKernel<HD, decltype(sm), G>;
      const auto key = BackwardKeyKernel<HD, decltype(sm), G>;
      AllowSharedBytes(query, Layout<HD>::kQueryBytes, "tensor-core attention");
      AllowSharedBytes(key, Layout<HD>::kKeyBytes, "tensor-core attention");
      query<<<grid, kThreads, Layout<HD>::kQueryBytes>>>(x, out, lse, t, h, sm, ld.dq, dq, rowd);
      key<<<grid, kThreads, Layout<HD>::kKeyBytes>>>(x, lse, rowd, t, h, sm, ld.dk, ld.dv, dk, dv);
    });
  }
};

// RowsToBf16Kernel's float4 loads need 16-byte aligned rows: every pointer read, and row
// strides of whole float4s (heads start HD % 16 == 0 floats apart). The gradients are
// written a value at a time.
// Softmax2 takes the largest logit of a row from its largest S: scale and τ positive.
bool Supports(int64_t hd, const AttentionOptions& opt) {
  return CudaBackend::FusedAttentionSupports(hd) && opt.scale > 0 && opt.temperature > 0;
}

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

bool CudaBackend::AttentionReadsRoundedInputs(int64_t head_dim, const AttentionOptions& opt) const {
  return precision_ == MatmulPrecision::kBf16 && attention_kernel_ == AttentionKernel::kFused &&
         Supports(head_dim, opt);
}

// q, k, v in bf16 in the layer's kept operands (kept->x: [B·T, 3·C], as QKV's output): written
// there by QKV's product (x_rounded on entry), or rounded there by the forward; the backward
// reads them there, and dO from kept->dy where Proj's backward wrote it in bf16 (dy_rounded),
// else rounds it. (A GPT-2 124M step on an H200 rounded all seven — the forward's three, the
// backward's four — in 1.65 ms.) Without kept (the op tests), q, k, v and dO live in one
// scratch slot sized for four, so that the forward's three and the backward's four share it
// without regrowing.
bool CudaBackend::TensorCoreAttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t,
                                             int64_t h, int64_t hd, const AttentionOptions& opt,
                                             const AttentionStrides& ld, float* out, bf16* out16, float* lse,
                                             float* row_max, double* row_entropy, Bf16Operands* kept) {
  if (!Supports(hd, opt) || !Aligned({q, k, v, out}, {ld.q, ld.k, ld.v})) return false;
  const int64_t rows = b * t, c = h * hd;
  auto* qkv16 = static_cast<bf16*>(kept ? kept->x : Scratch(kAttentionOperands, 4 * rows * c * sizeof(bf16)));
  const Operands16 x = PrepareOperands(q, k, v, nullptr, ld, rows, c, qkv16, kept && kept->x_rounded, nullptr, false);
  const dim3 grid(static_cast<unsigned>((t + kRows - 1) / kRows), static_cast<unsigned>(b * h));
  ForHeadDim<LaunchForward>(hd, grid, x, t, h, opt, out, out16, lse, row_max, row_entropy);
  STABILITY_CUDA_LAUNCHED("tensor-core attention forward");
  if (kept) kept->x_rounded = true;
  return true;
}

template <typename G>
bool CudaBackend::TensorCoreAttentionBackward(const float* q, const float* k, const float* v, const float* out,
                                              const float* lse, const float* dout, int64_t b, int64_t t, int64_t h,
                                              int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld,
                                              const Bf16Operands* kept, G* dq, G* dk, G* dv, float* rowd) {
  if (!Supports(hd, opt) || !Aligned({q, k, v, dout}, {ld.q, ld.k, ld.v})) return false;
  const int64_t rows = b * t, c = h * hd;
  const bool qkv_kept = kept && kept->x_rounded, dout_kept = kept && kept->dy_rounded;
  bf16* scratch = qkv_kept && dout_kept
                      ? nullptr
                      : static_cast<bf16*>(Scratch(kAttentionOperands, (qkv_kept ? 1 : 4) * rows * c * sizeof(bf16)));
  bf16* qkv16 = qkv_kept ? static_cast<bf16*>(kept->x) : scratch;
  bf16* dout16 = dout_kept ? static_cast<bf16*>(kept->dy) : qkv_kept ? scratch : scratch + 3 * rows * c;
  const Operands16 x = PrepareOperands(q, k, v, dout, ld, rows, c, qkv16, qkv_kept, dout16, dout_kept);
  const dim3 grid(static_cast<unsigned>((t + kRows - 1) / kRows), static_cast<unsigned>(b * h));
  ForHeadDim<LaunchBackward>(hd, grid, x, out, lse, t, h, opt, ld, dq, dk, dv, rowd);
  STABILITY_CUDA_LAUNCHED("tensor-core attention backward");
  return true;
}
template bool CudaBackend::TensorCoreAttentionBackward(const float*, const float*, const float*, const float*,
                                                       const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                                       const AttentionOptions&, const AttentionStrides&,
                                                       const Bf16Operands*, float*, float*, float*, float*);
template bool CudaBackend::TensorCoreAttentionBackward(const float*, const float*, const float*, const float*,
                                                       const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                                                       const AttentionOptions&, const AttentionStrides&,
                                                       const Bf16Operands*, __nv_bfloat16*, __nv_bfloat16*,
                                                       __nv_bfloat16*, float*);

}  // namespace stability::ops::cuda::internal
