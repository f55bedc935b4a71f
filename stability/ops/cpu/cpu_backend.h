// The CPU backend: fp32 kernels, OpenMP across rows / heads / channels, oneDNN for GEMM.
// Deterministic for a given thread count: parallel loops never race on one output, and
// reductions sum fixed-size chunks in a fixed order.
#ifndef STABILITY_OPS_CPU_CPU_BACKEND_H_
#define STABILITY_OPS_CPU_CPU_BACKEND_H_

#include "stability/ops/backend.h"

namespace stability::ops::cpu {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return kCpu; }
  const char* name() const override { return "cpu"; }

  void EmbeddingForward(const int32_t* ids, int64_t n, int64_t t, const float* wte, const float* wpe, int64_t c,
                        float* out) override;
  void EmbeddingBackward(const int32_t* ids, int64_t n, int64_t t, const float* dout, int64_t c, float* dwte,
                         float* dwpe) override;
  void LinearForward(const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out, float* y,
                     Bf16Operands* kept, Bf16Operands* next) override;
  void LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in, int64_t out, float* dx,
                      float* dw, float* db, const Bf16Operands* kept) override;
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
  void CrossEntropyForward(const float* logits, const int32_t* targets, int64_t n, int64_t v,
                           const CrossEntropyOptions& opt, float* lse, CrossEntropyStats* stats) override;
  void CrossEntropyBackward(const float* logits, const int32_t* targets, const float* lse, int64_t n, int64_t v,
                            const CrossEntropyOptions& opt, float dloss, float* dlogits) override;
  void AdamW(float* p, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, float bias_correction1, float bias_correction2, float grad_scale) override;
  double SumSquares(const float* x, int64_t n) override;
  double MeanRowNorm(const float* x, int64_t rows, int64_t d) override;
  void Scale(float* x, int64_t n, float s) override;
  // Each op's wall time, less the ops and products it calls, and the time between the ops
  // (internal/op_profile.h).
  bool StartKernelProfile() override;
  std::vector<KernelTime> StopKernelProfile() override;
};

// The registered instance (also what tests use directly).
CpuBackend& GetCpuBackend();

}  // namespace stability::ops::cpu

#endif  // STABILITY_OPS_CPU_CPU_BACKEND_H_
