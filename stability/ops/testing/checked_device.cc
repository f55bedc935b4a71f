#include "stability/ops/testing/checked_device.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "stability/ops/backend.h"

namespace stability::ops::testing {
namespace {

// Host memory that remembers its blocks, so that a pointer can be told to be one of them.
class CheckedAllocator final : public Allocator {
 public:
  void* Allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (p == nullptr) throw std::bad_alloc();
    std::lock_guard<std::mutex> lock(mu_);
    blocks_[reinterpret_cast<uintptr_t>(p)] = bytes;
    return p;
  }
  void Free(void* p) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks_.erase(reinterpret_cast<uintptr_t>(p));
    }
    std::free(p);
  }
  void Zero(void* p, size_t bytes) override { std::memset(p, 0, bytes); }
  void CopyFromHost(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void CopyToHost(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  // p inside a live block (a view into one counts).
  bool Owns(const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = blocks_.upper_bound(a);
    if (it == blocks_.begin()) return false;
    --it;
    return a < it->first + std::max<size_t>(it->second, 1);
  }

 private:
  std::mutex mu_;
  std::map<uintptr_t, size_t> blocks_;
};

// Outlives every tensor made on the device (each keeps its allocator).
CheckedAllocator& TheAllocator() {
  static CheckedAllocator allocator;
  return allocator;
}

// The CPU's ops behind a check of every pointer argument.
class CheckedBackend final : public Backend {
 public:
  explicit CheckedBackend(Backend& cpu) : cpu_(cpu) {}
  Device device() const override { return {DeviceType::kCuda, 0}; }
  const char* name() const override { return "checked-device"; }
  int64_t checked() const { return checked_; }

  void EmbeddingForward(const int32_t* ids, int64_t n, int64_t t, const float* wte, const float* wpe, int64_t c,
                        float* out) override {
    Need("EmbeddingForward", {{"ids", ids}, {"wte", wte}, {"wpe", wpe}, {"out", out}});
    cpu_.EmbeddingForward(ids, n, t, wte, wpe, c, out);
  }
  void EmbeddingBackward(const int32_t* ids, int64_t n, int64_t t, const float* dout, int64_t c, float* dwte,
                         float* dwpe) override {
    Need("EmbeddingBackward", {{"ids", ids}, {"dout", dout}, {"dwte", dwte}, {"dwpe", dwpe}});
    cpu_.EmbeddingBackward(ids, n, t, dout, c, dwte, dwpe);
  }
  void LinearForward(const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out, float* y,
                     Bf16Operands* kept) override {
    Need("LinearForward", {{"x", x}, {"w", w}, {"b", b}, {"y", y}});
    cpu_.LinearForward(x, w, b, n, in, out, y, kept);
  }
  void LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in, int64_t out, float* dx,
                      float* dw, float* db, const Bf16Operands* kept) override {
    Need("LinearBackward", {{"x", x}, {"w", w}, {"dy", dy}, {"dx", dx}, {"dw", dw}, {"db", db}});
    cpu_.LinearBackward(x, w, dy, n, in, out, dx, dw, db, kept);
  }
  void NormForward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* b, int64_t rows,
                   int64_t d, float eps, float* y, float* mean, float* rstd, Bf16Operands* next) override {
    Need("NormForward", {{"x", x}, {"g", g}, {"b", b}, {"y", y}, {"mean", mean}, {"rstd", rstd}});
    cpu_.NormForward(kind, x, x_rows, g, b, rows, d, eps, y, mean, rstd, next);
  }
  void NormBackward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* mean,
                    const float* rstd, const float* dy, int64_t rows, int64_t d, float* dx, float* dg,
                    float* db) override {
    Need("NormBackward",
         {{"x", x}, {"g", g}, {"mean", mean}, {"rstd", rstd}, {"dy", dy}, {"dx", dx}, {"dg", dg}, {"db", db}});
    cpu_.NormBackward(kind, x, x_rows, g, mean, rstd, dy, rows, d, dx, dg, db);
  }
  void AddNormForward(NormKind kind, const float* x, const float* a, const float* s, const float* g, const float* b,
                      int64_t rows, int64_t d, float eps, float* sum, float* y, float* mean, float* rstd,
                      Bf16Operands* next) override {
    Need("AddNormForward",
         {{"x", x}, {"a", a}, {"s", s}, {"g", g}, {"b", b}, {"sum", sum}, {"y", y}, {"mean", mean}, {"rstd", rstd}});
    cpu_.AddNormForward(kind, x, a, s, g, b, rows, d, eps, sum, y, mean, rstd, next);
  }
  void AddNormBackward(NormKind kind, const float* sum, const float* g, const float* mean, const float* rstd,
                       const float* dy, int64_t rows, int64_t d, float* dsum, float* dg, float* db) override {
    Need("AddNormBackward",
         {{"sum", sum}, {"g", g}, {"mean", mean}, {"rstd", rstd}, {"dy", dy}, {"dsum", dsum}, {"dg", dg}, {"db", db}});
    cpu_.AddNormBackward(kind, sum, g, mean, rstd, dy, rows, d, dsum, dg, db);
  }
  void AttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h, int64_t hd,
                        const AttentionOptions& opt, const AttentionStrides& ld, float* out, float* probs, float* lse,
                        AttentionStats* stats) override {
    Need("AttentionForward", {{"q", q}, {"k", k}, {"v", v}, {"out", out}, {"probs", probs}, {"lse", lse}});
    cpu_.AttentionForward(q, k, v, b, t, h, hd, opt, ld, out, probs, lse, stats);
  }
  bool AttentionStoresProbs(int64_t head_dim) const override { return cpu_.AttentionStoresProbs(head_dim); }
  void AttentionBackward(const float* q, const float* k, const float* v, const float* out, const float* probs,
                         const float* lse, const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                         const AttentionOptions& opt, const AttentionStrides& ld, float* dq, float* dk,
                         float* dv) override {
    Need("AttentionBackward", {{"q", q},
                               {"k", k},
                               {"v", v},
                               {"out", out},
                               {"probs", probs},
                               {"lse", lse},
                               {"dout", dout},
                               {"dq", dq},
                               {"dk", dk},
                               {"dv", dv}});
    cpu_.AttentionBackward(q, k, v, out, probs, lse, dout, b, t, h, hd, opt, ld, dq, dk, dv);
  }
  void Rope(const float* x, int64_t x_ld, float* y, int64_t y_ld, int64_t b, int64_t t, int64_t h, int64_t hd,
            float base, bool inverse) override {
    Need("Rope", {{"x", x}, {"y", y}});
    cpu_.Rope(x, x_ld, y, y_ld, b, t, h, hd, base, inverse);
  }
  void ActivationForward(Activation act, const float* x, int64_t n, float* y) override {
    Need("ActivationForward", {{"x", x}, {"y", y}});
    cpu_.ActivationForward(act, x, n, y);
  }
  void ActivationBackward(Activation act, const float* x, const float* dy, int64_t n, float* dx) override {
    Need("ActivationBackward", {{"x", x}, {"dy", dy}, {"dx", dx}});
    cpu_.ActivationBackward(act, x, dy, n, dx);
  }
  void Add(const float* x, const float* a, int64_t n, float* y) override {
    Need("Add", {{"x", x}, {"a", a}, {"y", y}});
    cpu_.Add(x, a, n, y);
  }
  void AddInPlace(float* y, const float* x, int64_t n) override {
    Need("AddInPlace", {{"y", y}, {"x", x}});
    cpu_.AddInPlace(y, x, n);
  }
  void Copy(const float* x, int64_t n, float* y) override {
    Need("Copy", {{"x", x}, {"y", y}});
    cpu_.Copy(x, n, y);
  }
  void ChannelScaleForward(const float* x, const float* s, int64_t n, int64_t c, float* y) override {
    Need("ChannelScaleForward", {{"x", x}, {"s", s}, {"y", y}});
    cpu_.ChannelScaleForward(x, s, n, c, y);
  }
  void ChannelScaleBackward(const float* x, const float* s, const float* dy, int64_t n, int64_t c, float* dx,
                            float* ds) override {
    Need("ChannelScaleBackward", {{"x", x}, {"s", s}, {"dy", dy}, {"dx", dx}, {"ds", ds}});
    cpu_.ChannelScaleBackward(x, s, dy, n, c, dx, ds);
  }
  void SigmaReparamForward(const float* w, const float* g, int64_t out, int64_t in, bool update, float* u, float* v,
                           float* sigma, float* w_eff) override {
    Need("SigmaReparamForward", {{"w", w}, {"g", g}, {"u", u}, {"v", v}, {"sigma", sigma}, {"w_eff", w_eff}});
    cpu_.SigmaReparamForward(w, g, out, in, update, u, v, sigma, w_eff);
  }
  void SigmaReparamBackward(const float* w, const float* g, const float* sigma, const float* u, const float* v,
                            const float* dw_eff, int64_t out, int64_t in, float* dw, float* dg) override {
    Need("SigmaReparamBackward",
         {{"w", w}, {"g", g}, {"sigma", sigma}, {"u", u}, {"v", v}, {"dw_eff", dw_eff}, {"dw", dw}, {"dg", dg}});
    cpu_.SigmaReparamBackward(w, g, sigma, u, v, dw_eff, out, in, dw, dg);
  }
  void CrossEntropyForward(const float* logits, const int32_t* targets, int64_t n, int64_t v,
                           const CrossEntropyOptions& opt, float* lse, CrossEntropyStats* stats) override {
    Need("CrossEntropyForward", {{"logits", logits}, {"targets", targets}, {"lse", lse}});
    cpu_.CrossEntropyForward(logits, targets, n, v, opt, lse, stats);
  }
  void CrossEntropyBackward(const float* logits, const int32_t* targets, const float* lse, int64_t n, int64_t v,
                            const CrossEntropyOptions& opt, float dloss, float* dlogits) override {
    Need("CrossEntropyBackward", {{"logits", logits}, {"targets", targets}, {"lse", lse}, {"dlogits", dlogits}});
    cpu_.CrossEntropyBackward(logits, targets, lse, n, v, opt, dloss, dlogits);
  }
  void AdamW(float* p, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, float bias_correction1, float bias_correction2, float grad_scale) override {
    Need("AdamW", {{"p", p}, {"grad", grad}, {"m", m}, {"v", v}});
    cpu_.AdamW(p, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
  }
  double SumSquares(const float* x, int64_t n) override {
    Need("SumSquares", {{"x", x}});
    return cpu_.SumSquares(x, n);
  }
  double MeanRowNorm(const float* x, int64_t rows, int64_t d) override {
    Need("MeanRowNorm", {{"x", x}});
    return cpu_.MeanRowNorm(x, rows, d);
  }
  void Scale(float* x, int64_t n, float s) override {
    Need("Scale", {{"x", x}});
    cpu_.Scale(x, n, s);
  }
  void QueueValue(const float* x) override {
    Need("QueueValue", {{"x", x}});
    Backend::QueueValue(x);
  }

 private:
  void Need(const char* op, std::initializer_list<std::pair<const char*, const void*>> args) {
    ++checked_;
    for (const auto& [arg, p] : args) {
      if (p != nullptr && !TheAllocator().Owns(p)) {
        throw std::logic_error(std::string(op) + ": `" + arg +
                               "` is not memory of the device (a host pointer handed to a kernel?)");
      }
    }
  }
  Backend& cpu_;
  int64_t checked_ = 0;
};

}  // namespace

struct CheckedDevice::Impl {
  CheckedBackend backend{*GetBackend(kCpu)};
  Allocator* previous_allocator = nullptr;
};

CheckedDevice::CheckedDevice() : impl_(new Impl) {
  impl_->previous_allocator = RegisterAllocator(DeviceType::kCuda, &TheAllocator());
  RegisterBackend(DeviceType::kCuda, &impl_->backend);
}

CheckedDevice::~CheckedDevice() {
  RegisterBackend(DeviceType::kCuda, nullptr);
  RegisterAllocator(DeviceType::kCuda, impl_->previous_allocator);
}

int64_t CheckedDevice::checked_ops() const { return impl_->backend.checked(); }

}  // namespace stability::ops::testing
