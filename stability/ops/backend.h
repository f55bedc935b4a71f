// The op interface: every computation the model needs, forward and hand-written backward,
// as one abstract class with one implementation per device (CPU in ops/cpu, CUDA in
// ops/cuda), as ggml does. Kernels take raw, contiguous, row-major fp32 buffers on the
// backend's device; shapes are checked once, above, in ops.h. One virtual call per op,
// never per element.
//
// Conventions: "N" rows of width "C"; backward outputs named d* are OVERWRITTEN when they
// are activations and ACCUMULATED (+=) when they are parameter gradients, so gradient
// accumulation over micro-batches needs no extra buffers. Pointers documented as nullable
// may be nullptr to skip that term.
#ifndef STABILITY_OPS_BACKEND_H_
#define STABILITY_OPS_BACKEND_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "stability/base/tensor.h"

namespace stability::ops {

enum class NormKind { kLayerNorm, kRMSNorm };

// Where a norm's rows of x (and of its gradient dx) are: row r at
// (r / group)·stride + (r % group)·d. A column block of the QKV product [N, 3·C] is
// normalised in place: {1, 3·C} for a full-width norm (rows of C), {H, 3·C} per head (a
// token's H rows of head_dim side by side).
struct RowLayout {
  int64_t group, stride;
  static constexpr RowLayout Contiguous(int64_t d) { return {1, d}; }
  constexpr int64_t Offset(int64_t r, int64_t d) const { return r / group * stride + r % group * d; }
  constexpr bool IsContiguous(int64_t d) const { return group == 1 && stride == d; }
};
enum class Activation { kGelu, kRelu };

// Attention logits and softmax, per head, for query t and key s ≤ t (causal):
//   a  = (q_t · k_s) · scale                    scale = 1/sqrt(head_dim); max_logit is of a
//   u  = a / temperature                        soft_temp (temperature = 1: off)
//   z  = soft_cap · tanh(u / soft_cap)          soft_cap  (0: off)
//   p  = softmax_s(z)                           (entropy is of p)
//   p' = clip((zeta − gamma)·p + gamma, 0, 1)   soft_clip (clip = false: p' = p)
//   o_t = Σ_s p'_ts v_s
struct AttentionOptions {
  float scale = 1.0f;
  float temperature = 1.0f;
  float soft_cap = 0.0f;
  bool clip = false;
  float clip_zeta = 1.03f;
  float clip_gamma = -0.03f;
};

// Row strides, in floats, of the attention's q, k, v and of their gradients dq, dk, dv.
// A row's H·hd values may sit inside a wider row: the column blocks of the QKV product
// [B·T, 3·C] are read in place (stride 3·C), and their gradients written into the QKV
// gradient, with no copies. out, dout, probs and lse are always contiguous.
struct AttentionStrides {
  int64_t q, k, v;     // inputs
  int64_t dq, dk, dv;  // gradients (AttentionBackward)
  static AttentionStrides Contiguous(int64_t c) { return {c, c, c, c, c, c}; }
};

// Telemetry of one attention call, over all batches, heads and queries.
struct AttentionStats {
  float max_logit = 0;     // max of a (before temperature and cap)
  double entropy_sum = 0;  // Σ over (b, h, t) of −Σ_s p log p; divide by B·H·T for the mean
};

// Cross-entropy over V classes per row with the optional final-logit soft cap and z-loss:
//   z = cap · tanh(l / cap) (cap 0: z = l),  lse = log Σ_j exp(z_j)
//   loss = mean_rows(lse − z_target) + z_loss · mean_rows(lse²)
struct CrossEntropyOptions {
  float soft_cap = 0.0f;
  float z_loss = 0.0f;
};

struct CrossEntropyStats {
  double loss = 0;          // the total loss above (cross-entropy + z-loss term)
  double ce_loss = 0;       // the cross-entropy part only
  double mean_lse = 0;      // mean log Z
  float max_logit = 0;      // max of l (before the cap)
};

// Precision of the matrix products (linear layers and the attention's two products).
//   kFp32: fp32 inputs, fp32 accumulation (every backend; the parity mode).
//   kBf16: inputs rounded to bf16, fp32 accumulation and fp32 outputs, as autocast does;
//          norms, softmax, cross-entropy, AdamW and the master weights stay fp32.
enum class MatmulPrecision { kFp32, kBf16 };

// How attention is computed.
//   kGemm:  the T×T scores and probabilities materialised around two matrix products
//           (every backend; the CPU's only kernel).
//   kFused: FlashAttention-style tiles with recomputation, nothing T×T stored (the CUDA
//           backend: fp32 on the CUDA cores, bf16 on the tensor cores). Head dims it has
//           no kernel for still take kGemm (AttentionStoresProbs says which).
enum class AttentionKernel { kGemm, kFused };

// A linear layer's operands in bf16, rounded by its forward and kept by the caller for its
// backward, which then reads them instead of rounding x and w again (a backend that
// multiplies in bf16 says so with KeepsBf16Operands). x: n·in values, w: out·in, bf16
// storage the caller owns. Valid from a layer's forward to its backward: x and w must not
// change in between (they do not: the optimizer steps after the backward).
// x_rounded: x already holds this forward's input, rounded by the op that produced it
// (LinearActivationForward's `next`); the forward reads it as it is and clears the flag.
// dy (nullable; n·out bf16, the caller's) and dy_rounded: the same for the backward — the
// layer's output gradient rounded into dy by the op that produced it (NormBackward's,
// ChannelScaleBackward's `next`), which the layer's LinearBackward reads instead of rounding dy (its
// bias gradient then summed from those rounded values); the caller clears the flag after it.
// w_rounded: w already holds the weight rounded — the copy the optimizer writes beside the
// weight (AdamWBuffer::p_bf16) — and the forward reads it as it is; the caller sets the flag
// only while no other write of the weight has happened since that copy was made.
// dx (nullable; n·in bf16, the caller's): where set, the backward writes the layer's input
// gradient there, rounded to bf16 — as autocast's bf16 product returns it — and not into its
// fp32 dx: for the op that reads it next in bf16 (AddNormBackward's `from`); never with a dx the
// product accumulates into.
struct Bf16Operands {
  void* x = nullptr;
  void* w = nullptr;
  bool x_rounded = false;
  void* dy = nullptr;
  bool dy_rounded = false;
  bool w_rounded = false;
  void* dx = nullptr;
};

// A device's memory in bytes; total 0 where the backend does not track it (the CPU's host
// memory): nothing is checked against it then.
struct DeviceMemory {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual const char* name() const = 0;
  // Returns false (and changes nothing) when this backend has no such mode.
  virtual bool SetMatmulPrecision(MatmulPrecision precision) { return precision == MatmulPrecision::kFp32; }
  // Between steps, never between a forward and its backward. False (nothing changed) when
  // this backend has no such kernel.
  virtual bool SetAttentionKernel(AttentionKernel kernel) { return kernel == AttentionKernel::kGemm; }
  // Whether the linear ops use Bf16Operands (passing them elsewhere is harmless: ignored).
  virtual bool KeepsBf16Operands() const { return false; }
  // The bytes of a value the forward ops save for their backward in the backend's own format
  // — the loss head's logits (and their gradient, in place) and FC1's pre-activation: 4
  // (fp32), or 2 where the matrix products are bf16 and these are kept in bf16 (their math
  // stays fp32; the traffic and memory halve). The caller allocates them at this size.
  virtual int64_t SavedValueBytes() const { return 4; }
  // The distance, in values, between two rows of the loss head's N×V logits (and of their
  // gradient in place): v, or more where the backend's products want aligned rows — CUDA in
  // bf16 pads to a multiple of 64 values (128 bytes), as llm.c pads GPT-2's 50,257 to 50,304
  // (on an H200 cuBLAS multiplied the unaligned vocabulary at a fifth of its aligned speed).
  // The caller allocates N·LogitsRowStride(v) values and reads only a row's first v: the
  // columns past them are the backend's, never written by it either.
  virtual int64_t LogitsRowStride(int64_t v) const { return v; }
  // Free and total memory of this backend's device now.
  virtual DeviceMemory Memory() const { return {}; }

  // out[n, :] = wte[ids[n], :] + wpe[n % T, :]   (wpe nullable: RoPE or no positions)
  virtual void EmbeddingForward(const int32_t* ids, int64_t n, int64_t t, const float* wte, const float* wpe,
                                int64_t c, float* out) = 0;
  // dwte[ids[n], :] += dout[n, :];  dwpe[n % T, :] += dout[n, :]
  virtual void EmbeddingBackward(const int32_t* ids, int64_t n, int64_t t, const float* dout, int64_t c,
                                 float* dwte, float* dwpe) = 0;

  // y[N, Out] = x[N, In] · w[Out, In]ᵀ + b[Out]   (b nullable; kept nullable: Bf16Operands)
  // next (nullable): the Bf16Operands of the op that reads y (QKV's: the attention's kept). A
  // backend that keeps bf16 operands then writes y rounded straight into next->x ([N, Out]),
  // the bias rounded to bf16 first as a bf16 product's epilogue takes it, sets
  // next->x_rounded, and writes y itself only where y is not null. Elsewhere next is ignored
  // and y required.
  virtual void LinearForward(const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out,
                             float* y, Bf16Operands* kept, Bf16Operands* next) = 0;
  // y_pre = x·wᵀ + b and y = act(y_pre): LinearForward then ActivationForward, which a
  // backend may fuse. y_pre [n, out] is saved for the backward in the backend's format
  // (SavedValueBytes() a value; CUDA in bf16 keeps it in bf16, from one cuBLASLt product with
  // a bias + GELU epilogue that writes it beside y). act is taken of the unrounded
  // pre-activation either way. next (nullable): the Bf16Operands of the product that reads y.
  // A backend that keeps bf16 operands then writes y rounded straight into next->x (the value
  // that product would round) and sets next->x_rounded, and y itself only where y is not
  // null (the caller's fp32 copy, for telemetry: the rounded value, what that product reads).
  // Elsewhere next is ignored and y required.
  virtual void LinearActivationForward(Activation act, const float* x, const float* w, const float* b, int64_t n,
                                       int64_t in, int64_t out, void* y_pre, float* y, Bf16Operands* kept,
                                       Bf16Operands* next) {
    auto* pre = static_cast<float*>(y_pre);
    LinearForward(x, w, b, n, in, out, pre, kept, nullptr);
    ActivationForward(act, pre, n * out, y);
  }
  // dx = dy · w (overwritten; nullable), dw += dyᵀ · x, db += Σ_n dy (nullable); kept: what
  // this layer's LinearForward was given (nullable)
  virtual void LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in, int64_t out,
                              float* dx, float* dw, float* db, const Bf16Operands* kept) = 0;

  // The backward of LinearActivationForward: d_pre = act'(y_pre) ⊙ dy, then LinearBackward
  // with it (dx = d_pre·w, dw += d_preᵀ·x, db += Σ_n d_pre). y_pre: as the forward saved it
  // (SavedValueBytes() a value). d_pre [n, out] floats is
  // scratch whose contents are the backend's (CUDA in bf16 writes d_pre straight in bf16 into
  // its first half, the bias gradient's sums taken on the way: no fp32 pass).
  virtual void LinearActivationBackward(Activation act, const float* x, const float* w, const void* y_pre,
                                        const float* dy, int64_t n, int64_t in, int64_t out, float* d_pre, float* dx,
                                        float* dw, float* db, const Bf16Operands* kept) {
    ActivationBackward(act, static_cast<const float*>(y_pre), dy, n * out, d_pre);
    LinearBackward(x, w, d_pre, n, in, out, dx, dw, db, kept);
  }

  // The MLP's backward, from dz (the gradient of z = h·w2ᵀ + b2, h = act(y_pre), y_pre =
  // x·w1ᵀ + b1, saved as LinearActivationForward saved it) to dx: LinearBackward of FC2 with
  // dh its dx, then LinearActivationBackward of FC1 from dh — what the default does. dh
  // [n, hidden] and d_pre [n, hidden] floats are
  // scratch whose contents are the backend's: CUDA in bf16 with GELU has FC2's product
  // multiply by GELU'(y_pre) in its epilogue (cuBLASLt's DGELU) and write d_pre in bf16 (no
  // dh); else it writes dh in bf16 (FC1's backward rounds act'(y_pre)·dh to bf16 anyway).
  struct LinearGradients {
    const float* x;            // the forward's input [n, in]
    const float* w;            // the weight [out, in] the forward multiplied by
    const Bf16Operands* kept;  // what the forward was given (nullable)
    float* dw;                 // += dyᵀ·x
    float* db;                 // += Σ_n dy (nullable)
  };
  virtual void MlpBackward(Activation act, const LinearGradients& fc1, const LinearGradients& fc2, const void* y_pre,
                           const float* dz, int64_t n, int64_t in, int64_t hidden, int64_t out, float* dh, float* d_pre,
                           float* dx) {
    LinearBackward(fc2.x, fc2.w, dz, n, hidden, out, dh, fc2.dw, fc2.db, fc2.kept);
    LinearActivationBackward(act, fc1.x, fc1.w, y_pre, dh, n, in, hidden, d_pre, dx, fc1.dw, fc1.db, fc1.kept);
  }

  // Per row of width D: LayerNorm  y = (x − μ)·r·g + b,  r = 1/sqrt(var + eps)
  //                     RMSNorm    y = x·r·g,            r = 1/sqrt(mean(x²) + eps)
  // mean (LayerNorm only) and rstd [rows] are saved for backward. b nullable. x's rows (and
  // dx's, laid out as x) where x_rows says; y and dy contiguous [rows, D]. next (nullable):
  // the Bf16Operands of the op that reads y, as LinearActivationForward's `next` (y rounded
  // into next->x where the backend keeps bf16 operands, its rows laid out as x's — a product's
  // operand from a contiguous x; a q/k/v norm's into its block of the attention's kept
  // operands, QKV's layout, from its block of QKV's output; y then nullable).
  virtual void NormForward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* b,
                           int64_t rows, int64_t d, float eps, float* y, float* mean, float* rstd,
                           Bf16Operands* next) = 0;
  // next (nullable): the Bf16Operands of the product whose output gradient dx is (Proj's,
  // FC2's). A backend that keeps bf16 operands writes dx rounded into next->dy as well (x_rows
  // contiguous) and sets next->dy_rounded; elsewhere next is ignored.
  virtual void NormBackward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* mean,
                            const float* rstd, const float* dy, int64_t rows, int64_t d, float* dx, float* dg,
                            float* db, Bf16Operands* next) = 0;
  // A residual add and the norm after it, in one pass over the rows:
  //   sum = x + a ⊙ s,  y = Norm(sum)   (ChannelScaleForward, Add, NormForward: the same
  //                                      bits; s [D] nullable: no layer scale, a alone)
  // Backward accumulates into the residual stream's gradient, which already holds what
  // reached sum by the residual path:  dsum += ∂y/∂sum · dy  (dsum ACCUMULATED; next as
  // NormBackward's, of the accumulated value: the product the stream's gradient reaches next).
  // from (nullable): the Bf16Operands of the product whose input gradient dy is (QKV's, FC1's);
  // where from->dx is set, that product wrote dy there in bf16 and the backward reads it from
  // there (dy itself unwritten) — only a backend that keeps bf16 operands is given one.
  virtual void AddNormForward(NormKind kind, const float* x, const float* a, const float* s, const float* g,
                              const float* b, int64_t rows, int64_t d, float eps, float* sum, float* y, float* mean,
                              float* rstd, Bf16Operands* next) = 0;
  virtual void AddNormBackward(NormKind kind, const float* sum, const float* g, const float* mean, const float* rstd,
                               const float* dy, int64_t rows, int64_t d, float* dsum, float* dg, float* db,
                               const Bf16Operands* from, Bf16Operands* next) = 0;

  // q, k, v, out: [B, T, H, hd] (= [B·T, C], heads contiguous; q, k, v rows `ld` apart).
  // probs: [B, H, T, T], the softmax p (not p'), and lse: [B, H, T], log Σ exp z per query
  // row, both saved for backward (z_s = log p_s + lse recovers the capped logits); stats
  // nullable. next (nullable): the Bf16Operands of the product that reads out (Proj's); a
  // kernel that can writes out rounded into next->x as well and sets next->x_rounded (out is
  // still written: the backward reads it), others leave next alone.
  // kept (nullable; only where KeepsBf16Operands): the attention's own bf16 operands, as a
  // linear layer's — kept->x [B·T, 3·C] bf16 (C = H·hd; q, k, v the column blocks, as QKV's
  // output) the caller owns for the layer; x_rounded says kept->x holds this step's q, k, v
  // rounded (the caller clears it before each step's producers). Where it is set on entry,
  // the producer (QKV's LinearForward, its `next`) wrote q, k, v there alone — only done where
  // AttentionReadsRoundedInputs says so — and the forward reads them there, not q, k, v. Else a
  // kernel that rounds q, k, v to bf16 rounds them into kept->x and sets the flag. The layer's
  // backward, given the same kept, reads them there where it is set instead of rounding q, k
  // and v again (q, k, v must not change in between).
  virtual void AttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                                int64_t hd, const AttentionOptions& opt, const AttentionStrides& ld, float* out,
                                float* probs, float* lse, AttentionStats* stats, Bf16Operands* kept,
                                Bf16Operands* next) = 0;
  // Whether AttentionForward writes `probs` and AttentionBackward reads them (false for a
  // fused kernel that recomputes them from lse; the caller then passes nullptr).
  virtual bool AttentionStoresProbs(int64_t head_dim) const { return true; }
  // Whether AttentionForward with these options reads q, k, v from a kept->x its producer
  // filled (x_rounded on entry), so that the producer may write them in bf16 alone.
  virtual bool AttentionReadsRoundedInputs(int64_t head_dim, const AttentionOptions& opt) const { return false; }
  // dq, dk, dv overwritten. out: the forward's output (nullable), from which a fused kernel
  // takes each row's D = Σ_s p·dp = dO·O instead of a sweep over the keys (not under the
  // clipped softmax, whose output is of p', not p). kept: as the forward's (nullable); where
  // kept->dy_rounded, kept->dy holds dout rounded to bf16 ([B·T, C]) by the op that produced it
  // (Proj's LinearBackward, its kept->dx) and dout itself is unwritten — only done where
  // AttentionReadsRoundedInputs says so.
  virtual void AttentionBackward(const float* q, const float* k, const float* v, const float* out, const float* probs,
                                 const float* lse, const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                                 const AttentionOptions& opt, const AttentionStrides& ld, const Bf16Operands* kept,
                                 float* dq, float* dk, float* dv) = 0;
  // The norms between QKV's output and the attention (q_norm, k_norm, v_norm; the methods'
  // QK and QKV norms): each a block's, nullable where that block is read in place. A norm's
  // rows in its block of qkv (and its gradient's in dqkv) as `layout` says: N rows of C (full
  // width) or N·H rows of head_dim (per head).
  struct QkvNorm {
    const float* g;
    const float* mean;  // as its NormForward saved them (mean: LayerNorm only)
    const float* rstd;
    float* dg;  // += (NormBackward's)
    float* db;  // nullable
  };
  struct QkvNorms {
    NormKind kind = NormKind::kLayerNorm;
    int64_t rows = 0, d = 0;
    RowLayout layout{1, 1};
    const QkvNorm* q = nullptr;
    const QkvNorm* k = nullptr;
    const QkvNorm* v = nullptr;
  };
  // The attention's backward into the QKV layer's, through the norms between them: q, k, v
  // (what the attention read: the blocks of QKV's output qkv [B·T, 3·C] in place, C = H·hd,
  // or a norm's output) as AttentionBackward takes them, ld.dq/dk/dv 3·C for a block read in
  // place and C for one behind a norm; then each norm's NormBackward from the attention's
  // gradient of its output (dq, dk, dv [B·T, C] floats: scratch, used where that block has a
  // norm) into its block of dqkv; then the layer's LinearBackward from dqkv — what the default
  // does. dx [B·T, C] overwritten, or with accumulate_dx added to (+=: the residual stream's
  // gradient where no norm stands between the stream and QKV; the default adds through dq).
  // dqkv [B·T, 3·C] floats is scratch whose contents are the backend's: CUDA in bf16 has the
  // tensor-core kernels write the attention's gradients in bf16 (what QKV's products read,
  // rounded as LinearBackward would; behind a norm, the norm's backward reads them so, as under
  // autocast) and the norms write theirs in bf16, QKV's bias gradient summed from those: no
  // fp32 pass over dqkv. kept: the attention's, as AttentionBackward's (nullable).
  virtual void AttentionQkvBackward(const float* qkv, const float* q, const float* k, const float* v,
                                    const AttentionStrides& ld, const float* out, const float* probs, const float* lse,
                                    const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                                    const AttentionOptions& opt, const Bf16Operands* kept, const QkvNorms& norms,
                                    const LinearGradients& qkv_layer, float* dq, float* dk, float* dv, float* dqkv,
                                    float* dx, bool accumulate_dx) {
    const int64_t c = h * hd;
    const QkvNorm* norm[3] = {norms.q, norms.k, norms.v};
    float* grad[3] = {norms.q ? dq : dqkv, norms.k ? dk : dqkv + c, norms.v ? dv : dqkv + 2 * c};
    AttentionBackward(q, k, v, out, probs, lse, dout, b, t, h, hd, opt, ld, kept, grad[0], grad[1], grad[2]);
    for (int i = 0; i < 3; ++i) {
      if (norm[i] == nullptr) continue;
      NormBackward(norms.kind, qkv + i * c, norms.layout, norm[i]->g, norm[i]->mean, norm[i]->rstd, grad[i], norms.rows,
                   norms.d, dqkv + i * c, norm[i]->dg, norm[i]->db, nullptr);
    }
    LinearBackward(qkv_layer.x, qkv_layer.w, dqkv, b * t, c, 3 * c, accumulate_dx ? dq : dx, qkv_layer.dw, qkv_layer.db,
                   qkv_layer.kept);
    if (accumulate_dx) AddInPlace(dx, dq, b * t * c);
  }

  // Rotary embedding (GPT-NeoX half rotation) of x [B, T, H, hd] into y, positions 0..T−1:
  //   (x1, x2) → (x1·cos θ − x2·sin θ, x1·sin θ + x2·cos θ),  θ_i = t · base^(−2i/hd)
  // inverse = true rotates by −θ, which is the backward (the map is orthogonal). Token rows
  // x_ld and y_ld floats apart (a QKV block read in place: 3·C); y may be x (in place).
  virtual void Rope(const float* x, int64_t x_ld, float* y, int64_t y_ld, int64_t b, int64_t t, int64_t h, int64_t hd,
                    float base, bool inverse) = 0;

  // y = act(x); GELU is the tanh approximation. dx = act'(x)·dy (overwritten).
  virtual void ActivationForward(Activation act, const float* x, int64_t n, float* y) = 0;
  virtual void ActivationBackward(Activation act, const float* x, const float* dy, int64_t n, float* dx) = 0;

  // y = x + a (y may alias x or a); y += x.
  virtual void Add(const float* x, const float* a, int64_t n, float* y) = 0;
  virtual void AddInPlace(float* y, const float* x, int64_t n) = 0;
  virtual void Copy(const float* x, int64_t n, float* y) = 0;

  // Layer scale: y[n, c] = x[n, c]·s[c];  dx = dy·s (overwritten), ds += Σ_n dy·x. next
  // (nullable): as NormBackward's, the product whose output gradient dx is (dx rounded into
  // next->dy where the backend keeps bf16 operands).
  virtual void ChannelScaleForward(const float* x, const float* s, int64_t n, int64_t c, float* y) = 0;
  virtual void ChannelScaleBackward(const float* x, const float* s, const float* dy, int64_t n, int64_t c, float* dx,
                                    float* ds, Bf16Operands* next) = 0;

  // σ-reparam of w [out, in] with persistent unit vectors u [out], v [in]:
  //   v ← normalize(wᵀu), u ← normalize(w v)   (power iteration, if update)
  //   σ = uᵀ w v,  w_eff = (g / σ)·w          σ written to *sigma
  // The gain g [1] and σ [1] are on the backend's device like the rest, so a GPU never waits.
  virtual void SigmaReparamForward(const float* w, const float* g, int64_t out, int64_t in, bool update, float* u,
                                   float* v, float* sigma, float* w_eff) = 0;
  // u, v held constant (stop-gradient, as Zhai et al.): with G = dw_eff,
  //   dw += (g/σ)·G − (g/σ²)·⟨G, w⟩·u vᵀ,   dg += ⟨G, w⟩ / σ
  virtual void SigmaReparamBackward(const float* w, const float* g, const float* sigma, const float* u,
                                    const float* v, const float* dw_eff, int64_t out, int64_t in, float* dw,
                                    float* dg) = 0;
  // Both for many layers at once (a model's every σ-reparam'd linear layer): each layer's
  // SigmaReparamForward / SigmaReparamBackward, in a few launches on a GPU instead of ~10 a
  // layer (their vectors are a layer wide: launches, not bytes, are their cost).
  struct SigmaReparamLayer {
    const float* w;  // [out, in]
    const float* g;  // [1]
    int64_t out, in;
    float *u, *v;         // [out], [in]; updated by the forward (update), read by the backward
    float* sigma;         // [1]: written by the forward, read by the backward
    float* w_eff;         // forward: [out, in]
    const float* dw_eff;  // backward: [out, in]
    float *dw, *dg;       // backward: accumulated
  };
  virtual void SigmaReparamForwardEach(const std::vector<SigmaReparamLayer>& layers, bool update) {
    for (const SigmaReparamLayer& l : layers)
      SigmaReparamForward(l.w, l.g, l.out, l.in, update, l.u, l.v, l.sigma, l.w_eff);
  }
  virtual void SigmaReparamBackwardEach(const std::vector<SigmaReparamLayer>& layers) {
    for (const SigmaReparamLayer& l : layers) {
      SigmaReparamBackward(l.w, l.g, l.sigma, l.u, l.v, l.dw_eff, l.out, l.in, l.dw, l.dg);
    }
  }

  // Forward: per-row lse [N] saved; stats filled. Backward: dlogits [N, V] overwritten with
  // d(loss)/d(logits)·dloss; dlogits may be logits (the gradient then replaces them).
  virtual void CrossEntropyForward(const float* logits, const int32_t* targets, int64_t n, int64_t v,
                                   const CrossEntropyOptions& opt, float* lse, CrossEntropyStats* stats) = 0;
  virtual void CrossEntropyBackward(const float* logits, const int32_t* targets, const float* lse, int64_t n,
                                    int64_t v, const CrossEntropyOptions& opt, float dloss, float* dlogits) = 0;

  // The loss head as two ops, whose N×V logits and logit gradient are stored as the backend
  // chooses: SavedValueBytes() a value, as Megatron/NeMo do in bf16 (the loss's math
  // stays fp32; the N×V traffic and memory halve).
  // logits = x·wᵀ (x [N, C], w [V, C], no bias; kept as LinearForward's), then
  // CrossEntropyForward. logits: N rows LogitsRowStride(V) values apart, SavedValueBytes()
  // a value, read back by the backward.
  // with_gradient: the backward follows with the logits as its dlogits (a training step whose
  // caller does not read the logits). A backend may then write the loss's gradient for
  // dloss = 1 over the logits in the pass that computes the loss (the N×V values read once,
  // not twice: llm.c's fused classifier) and return true: the logits then hold that gradient,
  // and the backward is called with gradient_ready. The default does not (returns false).
  virtual bool CrossEntropyLinearForward(const float* x, const float* w, const int32_t* targets, int64_t n, int64_t c,
                                         int64_t v, const CrossEntropyOptions& opt, void* logits, float* lse,
                                         CrossEntropyStats* stats, Bf16Operands* kept, bool with_gradient) {
    auto* l = static_cast<float*>(logits);
    LinearForward(x, w, nullptr, n, c, v, l, kept, nullptr);
    CrossEntropyForward(l, targets, n, v, opt, lse, stats);
    return false;
  }
  // CrossEntropyBackward into dlogits [N, V] (rows as the logits'; may be logits, which
  // the model passes: no second N×V buffer), then the head's LinearBackward:
  // dx = dlogits·w (overwritten), dw += dlogitsᵀ·x. gradient_ready: the forward returned true,
  // logits (= dlogits) hold the gradient for dloss = 1, and only the products remain, scaled
  // by dloss.
  virtual void CrossEntropyLinearBackward(const void* logits, const int32_t* targets, const float* lse, int64_t n,
                                          int64_t v, const CrossEntropyOptions& opt, float dloss, const float* x,
                                          const float* w, int64_t c, void* dlogits, float* dx, float* dw,
                                          const Bf16Operands* kept, bool gradient_ready) {
    auto* dl = static_cast<float*>(dlogits);
    if (!gradient_ready) {
      CrossEntropyBackward(static_cast<const float*>(logits), targets, lse, n, v, opt, dloss, dl);
    } else if (dloss != 1.0f) {
      Scale(dl, n * v, dloss);
    }
    LinearBackward(x, w, dl, n, c, v, dx, dw, nullptr, kept);
  }

  // AdamW (Loshchilov & Hutter; torch.optim.AdamW's order of operations), with g = grad·grad_scale:
  //   p ← p − lr·wd·p;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
  //   p ← p − (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps),   bc_i = 1 − β_i^step
  virtual void AdamW(float* p, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                     float eps, float weight_decay, float bias_correction1, float bias_correction2,
                     float grad_scale) = 0;

  // AdamW on several buffers with the same step (weight decay per buffer): AdamW on each, in
  // order — in a few launches on a GPU, not one per buffer (~150 a step at GPT-2 124M).
  // p_bf16 (nullable; n bf16 values, only where KeepsBf16Operands): the updated p rounded to
  // bf16 is written there too, in the same pass — the next forward's weight operand
  // (Bf16Operands::w_rounded), which then needs no rounding pass of its own.
  struct AdamWBuffer {
    float* p;
    const float* grad;
    float* m;
    float* v;
    int64_t n;
    float weight_decay;
    void* p_bf16 = nullptr;
  };
  virtual void AdamWEach(const std::vector<AdamWBuffer>& buffers, float lr, float beta1, float beta2, float eps,
                         float bias_correction1, float bias_correction2, float grad_scale) {
    for (const AdamWBuffer& b : buffers) {
      if (b.p_bf16) throw std::logic_error("AdamWEach: p_bf16 given to a backend that keeps no bf16 operands");
      AdamW(b.p, b.grad, b.m, b.v, b.n, lr, beta1, beta2, eps, b.weight_decay, bias_correction1, bias_correction2,
            grad_scale);
    }
  }

  // Reductions for telemetry and clipping, accumulated in double.
  virtual double SumSquares(const float* x, int64_t n) = 0;
  // mean over rows of the L2 norm of each row: (1/N) Σ_n ‖x[n, :]‖
  virtual double MeanRowNorm(const float* x, int64_t rows, int64_t d) = 0;
  virtual void Scale(float* x, int64_t n, float s) = 0;

  // The same reductions queued for one read: each Queue* computes what SumSquares /
  // MeanRowNorm would return (the same bits) into the next slot of a batch, and ReadQueued
  // returns the batch's values in queue order and empties it. A GPU keeps the values on the
  // device until then, so a step's telemetry and gradient norms cost one synchronisation,
  // not one per value. The CPU computes each at once.
  virtual void QueueSumSquares(const float* x, int64_t n) { queued_.push_back(SumSquares(x, n)); }
  // QueueSumSquares of each (x, n) in order, which a GPU does in a few launches, not two
  // per buffer (a model's gradients: ~150 buffers at GPT-2 124M, every step).
  virtual void QueueSumSquaresOfEach(const std::vector<std::pair<const float*, int64_t>>& xs) {
    for (const auto& [x, n] : xs) QueueSumSquares(x, n);
  }
  virtual void QueueMeanRowNorm(const float* x, int64_t rows, int64_t d) {
    queued_.push_back(MeanRowNorm(x, rows, d));
  }
  // QueueMeanRowNorm of values a forward op saved (SavedValueBytes() each).
  virtual void QueueMeanRowNormOfSaved(const void* x, int64_t rows, int64_t d) {
    QueueMeanRowNorm(static_cast<const float*>(x), rows, d);
  }
  virtual std::vector<double> ReadQueued() { return std::exchange(queued_, {}); }
  // *x (one float on the device) into the batch.
  virtual void QueueValue(const float* x) { queued_.push_back(*x); }

  // Where a step's time goes: between StartKernelProfile and StopKernelProfile each kernel,
  // matrix product and copy the backend issues is timed. A GPU times them on the device (an
  // event after each; a launch's time is the device time since the one before, so a gap in
  // which the device waited for the host counts towards the launch after it); the CPU times
  // each op on the host, less the ops and products inside it, with a row for the time
  // between ops. One row per name, in order of first call. False (and no rows) where the
  // backend cannot.
  struct KernelTime {
    std::string name;
    int64_t calls = 0;
    double ms = 0;
  };
  virtual bool StartKernelProfile() { return false; }
  virtual std::vector<KernelTime> StopKernelProfile() { return {}; }

 private:
  std::vector<double> queued_;
};

// The backend for a device: CPU is always registered; CUDA when its backend is linked in
// and a GPU is present. nullptr when none.
Backend* GetBackend(Device device);
void RegisterBackend(DeviceType type, Backend* backend);

}  // namespace stability::ops

#endif  // STABILITY_OPS_BACKEND_H_
