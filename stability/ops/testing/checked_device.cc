#include "stability/ops/testing/checked_device.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "stability/base/guarded_block.h"
#include "stability/ops/backend.h"

namespace stability::ops::testing {
namespace {

// Memory of the stand-in device: each block its own mapping, with no access for host code
// (PROT_NONE) except while a kernel of the device (an op of CheckedBackend, or the allocator's
// own copies) has it open, so that host code reading or writing device memory outside a
// kernel — on a GPU an illegal dereference — faults here too; each block ends at a guard page.
// It remembers its blocks (Open finds the one a pointer lies in) and counts them: the bytes
// alive, their peak, and a capacity past which it refuses, as cudaMalloc does.
class CheckedAllocator final : public Allocator {
 public:
  void* Allocate(size_t bytes) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (capacity_ > 0 && alive_ + static_cast<int64_t>(bytes) > capacity_) throw std::bad_alloc();
    // No host access until a kernel opens it; a kernel that runs past the end of its buffer
    // faults on the guard page.
    const GuardedBlock b = MapGuarded(bytes, 64, /*host_access=*/false);
    if (b.data == nullptr) throw std::bad_alloc();
    const auto p = reinterpret_cast<uintptr_t>(b.data);
    blocks_[p] = {bytes, b, 0};
    alive_ += static_cast<int64_t>(bytes);
    peak_ = std::max(peak_, alive_);
    return reinterpret_cast<void*>(p);
  }
  void Free(void* p) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = blocks_.find(reinterpret_cast<uintptr_t>(p)); it != blocks_.end()) {
      alive_ -= static_cast<int64_t>(it->second.bytes);
      UnmapGuarded(it->second.mapping);
      blocks_.erase(it);
    }
  }
  void Zero(void* p, size_t bytes) override {
    const uintptr_t block = Open(p);
    std::memset(p, 0, bytes);
    Close(block);
  }
  void CopyFromHost(void* dst, const void* src, size_t bytes) override {
    const uintptr_t block = Open(dst);
    std::memcpy(dst, src, bytes);
    Close(block);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    const uintptr_t block = Open(src);
    std::memcpy(dst, src, bytes);
    Close(block);
  }
  // Host access to the block holding p (for a kernel), until as many Closes: its key, or 0
  // where p is not device memory.
  uintptr_t Open(const void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = Find(p);
    if (it == blocks_.end()) return 0;
    if (it->second.open++ == 0) Protect(it, PROT_READ | PROT_WRITE);
    return it->first;
  }
  void Close(uintptr_t block) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = blocks_.find(block);
    if (it != blocks_.end() && --it->second.open == 0) Protect(it, PROT_NONE);
  }
  int64_t alive() {
    std::lock_guard<std::mutex> lock(mu_);
    return alive_;
  }
  int64_t peak() {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }
  void ResetPeak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_ = alive_;
  }
  int64_t capacity() {
    std::lock_guard<std::mutex> lock(mu_);
    return capacity_;
  }
  void SetCapacity(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    capacity_ = bytes;
  }

 private:
  struct Block {
    size_t bytes;
    GuardedBlock mapping;  // kernels open its open_bytes; never the guard page
    int open;              // kernels that have it open
  };
  std::map<uintptr_t, Block>::iterator Find(const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = blocks_.upper_bound(a);
    if (it == blocks_.begin()) return blocks_.end();
    --it;
    return a < it->first + std::max<size_t>(it->second.bytes, 1) ? it : blocks_.end();
  }
  static void Protect(std::map<uintptr_t, Block>::iterator it, int prot) {
    if (mprotect(it->second.mapping.base, it->second.mapping.open_bytes, prot) != 0) throw std::bad_alloc();
  }
  std::mutex mu_;
  std::map<uintptr_t, Block> blocks_;
  int64_t alive_ = 0, peak_ = 0, capacity_ = 0;
};

// Outlives every tensor made on the device (each keeps its allocator).
CheckedAllocator& TheAllocator() {
  static CheckedAllocator allocator;
  return allocator;
}

// The device blocks an op has open for the CPU's kernels, closed when it ends.
class Opened {
 public:
  Opened() = default;
  Opened(Opened&& o) noexcept : blocks_(std::move(o.blocks_)) {}
  Opened& operator=(Opened&&) = delete;
  ~Opened() {
    for (uintptr_t b : blocks_) TheAllocator().Close(b);
  }
  void Add(uintptr_t block) { blocks_.push_back(block); }

 private:
  std::vector<uintptr_t> blocks_;
};

// A fault on a device block is host code touching device memory outside a kernel, or a kernel
// past its buffer's end: said before the process dies (the default action runs when the
// handler returns).
void OnFault(int, siginfo_t*, void*) {
  static const char kMessage[] =
      "\nCheckedDevice: a memory fault — if its address is device memory, host code read or wrote the stand-in "
      "GPU's memory outside a kernel (on a GPU, an illegal host dereference of a device pointer: copy it with "
      "Tensor::To(kCpu) / CopyToHost, or queue the value, Backend::QueueValue), or a kernel ran past the end of its "
      "buffer (each ends at a guard page).\n";
  (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
  signal(SIGSEGV, SIG_DFL);
}

void InstallFaultMessage() {
  static const bool installed = [] {
    struct sigaction sa = {};
    sa.sa_sigaction = OnFault;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, nullptr);
    return true;
  }();
  (void)installed;
}

uint16_t ToBf16(float x) {  // round to nearest even, as __float2bfloat16_rn (finite x)
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float FromBf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
// x rounded to bf16 into `into` (n values), and the rounded values as floats.
std::vector<float> Round(const float* x, int64_t n, void* into) {
  std::vector<float> r(n);
  auto* h = static_cast<uint16_t*>(into);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t b = ToBf16(x[i]);
    if (h) h[i] = b;
    r[i] = FromBf16(b);
  }
  return r;
}
std::vector<float> Widen(const void* x16, int64_t n) {
  std::vector<float> r(n);
  for (int64_t i = 0; i < n; ++i) r[i] = FromBf16(static_cast<const uint16_t*>(x16)[i]);
  return r;
}
// The bf16 logits' layout: rows LogitsRowStride(v) apart. x [n, v] rounded, its bits into
// the first v values of each row of into (the padding left as it was: NaN, as new device
// memory here, so that a reader of the padding shows); and back.
std::vector<float> RoundRows(const float* x, int64_t n, int64_t v, int64_t stride, void* into) {
  std::vector<float> r(n * v);
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<float> row = Round(x + i * v, v, into ? static_cast<uint16_t*>(into) + i * stride : nullptr);
    std::copy(row.begin(), row.end(), r.begin() + i * v);
  }
  return r;
}
std::vector<float> WidenRows(const void* x16, int64_t n, int64_t v, int64_t stride) {
  std::vector<float> r(n * v);
  for (int64_t i = 0; i < n; ++i) {
    const std::vector<float> row = Widen(static_cast<const uint16_t*>(x16) + i * stride, v);
    std::copy(row.begin(), row.end(), r.begin() + i * v);
  }
  return r;
}

// The CPU's ops behind a check of every pointer argument; in bf16 mode, with the CUDA
// backend's bf16 storage contracts emulated around them.
class CheckedBackend final : public Backend {
 public:
  CheckedBackend(Backend& cpu, bool bf16_mode) : cpu_(cpu), bf16_mode_(bf16_mode), bf16_(bf16_mode) {}
  // As the CUDA backend: bf16 products where the mode allows them; either attention kernel.
  bool SetMatmulPrecision(MatmulPrecision precision) override {
    if (precision == MatmulPrecision::kBf16 && !bf16_mode_) return false;
    bf16_ = precision == MatmulPrecision::kBf16;
    return true;
  }
  bool SetAttentionKernel(AttentionKernel kernel) override {
    fused_ = kernel == AttentionKernel::kFused;
    return true;
  }
  bool KeepsBf16Operands() const override { return bf16_; }
  int64_t SavedValueBytes() const override { return bf16_ ? 2 : 4; }
  // As the CUDA backend: bf16 logits' rows padded to 64 values.
  int64_t LogitsRowStride(int64_t v) const override { return bf16_ ? (v + 63) / 64 * 64 : v; }
  // A device with a capacity reports it, less what is alive (as cudaMemGetInfo); else nothing.
  DeviceMemory Memory() const override {
    const int64_t total = TheAllocator().capacity();
    return total > 0 ? DeviceMemory{std::max<int64_t>(total - TheAllocator().alive(), 0), total} : DeviceMemory{};
  }
  Device device() const override { return {DeviceType::kCuda, 0}; }
  const char* name() const override { return "checked-device"; }
  int64_t checked() const { return checked_; }

  void EmbeddingForward(const int32_t* ids, int64_t n, int64_t t, const float* wte, const float* wpe, int64_t c,
                        float* out) override {
    const Opened open = Need("EmbeddingForward", {{"ids", ids}, {"wte", wte}, {"wpe", wpe}, {"out", out}});
    cpu_.EmbeddingForward(ids, n, t, wte, wpe, c, out);
  }
  void EmbeddingBackward(const int32_t* ids, int64_t n, int64_t t, const float* dout, int64_t c, float* dwte,
                         float* dwpe) override {
    const Opened open = Need("EmbeddingBackward", {{"ids", ids}, {"dout", dout}, {"dwte", dwte}, {"dwpe", dwpe}});
    cpu_.EmbeddingBackward(ids, n, t, dout, c, dwte, dwpe);
  }
  void LinearForward(const float* x, const float* w, const float* b, int64_t n, int64_t in, int64_t out, float* y,
                     Bf16Operands* kept, Bf16Operands* next) override {
    const Opened open = Need("LinearForward", {{"x", x}, {"w", w}, {"b", b}, {"y", y}});
    if (!bf16_) return cpu_.LinearForward(x, w, b, n, in, out, y, kept, nullptr);
    // As the CUDA backend: x as its producer left it rounded (x_rounded; x itself may be
    // stale then), else rounded here; both into the kept copies for the backward.
    std::vector<float> x16;
    if (kept && kept->x_rounded) {
      const Opened open_kept = Need("LinearForward", {{"kept x", kept->x}});
      kept->x_rounded = false;
      x16 = Widen(kept->x, n * in);
    } else {
      const Opened open_kept = Need("LinearForward", {{"x", x}, {"kept x", kept ? kept->x : nullptr}});
      x16 = Round(x, n * in, kept ? kept->x : nullptr);
    }
    const Opened open_w = Need("LinearForward", {{"kept w", kept ? kept->w : nullptr}});
    std::vector<float> w16 = Round(w, out * in, nullptr);
    if (kept && kept->w_rounded) {  // the optimizer's copy, read as it is: it must be w's bits
      if (std::memcmp(Widen(kept->w, out * in).data(), w16.data(), out * in * sizeof(float)) != 0) {
        throw std::logic_error(
            "LinearForward: kept->w_rounded, but kept->w is not w rounded (a write of the weight left its bf16 "
            "copy marked current)");
      }
    } else if (kept) {
      Round(w, out * in, kept->w);
    }
    if (next) {  // as the CUDA backend: y rounded into next's operand, from the bias rounded to bf16
      const std::vector<float> b16 = b ? Round(b, out, nullptr) : std::vector<float>();
      std::vector<float> y32(n * out);
      cpu_.LinearForward(x16.data(), w16.data(), b ? b16.data() : nullptr, n, in, out, y32.data(), nullptr, nullptr);
      Into(next, y32.data(), n * out);
      if (y) {
        const std::vector<float> rounded = Round(y32.data(), n * out, nullptr);
        std::copy(rounded.begin(), rounded.end(), y);
      }
      return;
    }
    cpu_.LinearForward(x16.data(), w16.data(), b, n, in, out, y, nullptr, nullptr);
  }
  void LinearBackward(const float* x, const float* w, const float* dy, int64_t n, int64_t in, int64_t out, float* dx,
                      float* dw, float* db, const Bf16Operands* kept) override {
    const Opened open = Need("LinearBackward", {{"x", x}, {"w", w}, {"dy", dy}, {"dx", dx}, {"dw", dw}, {"db", db}});
    if (!bf16_) return cpu_.LinearBackward(x, w, dy, n, in, out, dx, dw, db, kept);
    // The kept operands (never x: a forward fed by `next` may have left it unwritten), dy
    // rounded; the bias gradient from the fp32 dy, as the CUDA backend takes it — or, where the
    // norm backward before rounded dy into kept->dy, from those values, which must be dy's.
    if (kept == nullptr) throw std::logic_error("LinearBackward: a bf16 backward without its forward's kept operands");
    const Opened open_kept = Need("LinearBackward", {{"kept x", kept->x}, {"kept w", kept->w}, {"kept dy", kept->dy}});
    const std::vector<float> x16 = Widen(kept->x, n * in), w16 = Widen(kept->w, out * in);
    const std::vector<float> dy16 = Round(dy, n * out, nullptr);
    if (kept->dy_rounded && std::memcmp(Widen(kept->dy, n * out).data(), dy16.data(), n * out * sizeof(float)) != 0) {
      throw std::logic_error("LinearBackward: kept->dy (rounded by the op before) is not this backward's dy");
    }
    if (kept->dx && dx) {  // dx rounded into kept->dx for the norm backward after, dx unwritten
      std::vector<float> dx32(n * in);
      cpu_.LinearBackward(x16.data(), w16.data(), dy16.data(), n, in, out, dx32.data(), dw, nullptr, nullptr);
      const Opened open_dx = Need("LinearBackward", {{"kept dx", kept->dx}});
      Round(dx32.data(), n * in, kept->dx);
    } else {
      cpu_.LinearBackward(x16.data(), w16.data(), dy16.data(), n, in, out, dx, dw, nullptr, nullptr);
    }
    if (db) {
      const float* sums_of = kept->dy_rounded ? dy16.data() : dy;
      for (int64_t j = 0; j < out; ++j) {
        double s = 0;
        for (int64_t r = 0; r < n; ++r) s += sums_of[r * out + j];
        db[j] += static_cast<float>(s);
      }
    }
  }
  // bf16, as the CUDA backend: the bias rounded to bf16 (its bf16 epilogue's), the
  // pre-activation saved in bf16, the activation of the unrounded one; into `next` rounded,
  // y (where asked) that rounded value.
  void LinearActivationForward(Activation act, const float* x, const float* w, const float* b, int64_t n, int64_t in,
                               int64_t out, void* y_pre, float* y, Bf16Operands* kept, Bf16Operands* next) override {
    if (!bf16_) {
      LinearForward(x, w, b, n, in, out, static_cast<float*>(y_pre), kept, nullptr);
      ActivationForward(act, static_cast<float*>(y_pre), n * out, y);
      return;
    }
    std::vector<float> pre(n * out), act_out(n * out);
    LinearForward(x, w, nullptr, n, in, out, Scratch(pre), kept, nullptr);
    const Opened open = Need("LinearActivationForward", {{"b", b}, {"y_pre", y_pre}, {"y", y}});
    if (b) {
      const std::vector<float> b16 = Round(b, out, nullptr);
      for (int64_t i = 0; i < n * out; ++i) pre[i] += b16[i % out];
    }
    Round(pre.data(), n * out, y_pre);
    cpu_.ActivationForward(act, pre.data(), n * out, act_out.data());
    if (!next) {
      if (y == nullptr) throw std::logic_error("LinearActivationForward: no y and no next operand to write");
      std::copy(act_out.begin(), act_out.end(), y);
      return;
    }
    Into(next, act_out.data(), n * out);
    if (y) {
      const std::vector<float> rounded = Round(act_out.data(), n * out, nullptr);
      std::copy(rounded.begin(), rounded.end(), y);
    }
  }
  // bf16: the saved pre-activation widened, then the default's ops.
  void LinearActivationBackward(Activation act, const float* x, const float* w, const void* y_pre, const float* dy,
                                int64_t n, int64_t in, int64_t out, float* d_pre, float* dx, float* dw, float* db,
                                const Bf16Operands* kept) override {
    if (!bf16_) return Backend::LinearActivationBackward(act, x, w, y_pre, dy, n, in, out, d_pre, dx, dw, db, kept);
    std::vector<float> pre;
    {
      const Opened open = Need("LinearActivationBackward", {{"y_pre", y_pre}});
      pre = Widen(y_pre, n * out);
    }
    Backend::LinearActivationBackward(act, x, w, Scratch(pre), dy, n, in, out, d_pre, dx, dw, db, kept);
  }
  void QueueMeanRowNormOfSaved(const void* x, int64_t rows, int64_t d) override {
    if (!bf16_) return QueueMeanRowNorm(static_cast<const float*>(x), rows, d);
    std::vector<float> widened;
    {
      const Opened open = Need("QueueMeanRowNormOfSaved", {{"x", x}});
      widened = Widen(x, rows * d);
    }
    QueueMeanRowNorm(Scratch(widened), rows, d);
  }
  void NormForward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* b, int64_t rows,
                   int64_t d, float eps, float* y, float* mean, float* rstd, Bf16Operands* next) override {
    const Opened open = Need("NormForward", {{"x", x}, {"g", g}, {"b", b}, {"y", y}, {"mean", mean}, {"rstd", rstd}});
    std::vector<float> tmp(y ? 0 : rows * d);
    cpu_.NormForward(kind, x, x_rows, g, b, rows, d, eps, y ? y : tmp.data(), mean, rstd, nullptr);
    if (bf16_ && next) {  // rows laid out as x's
      if (x_rows.IsContiguous(d)) return Into(next, y ? y : tmp.data(), rows * d);
      const float* out = y ? y : tmp.data();
      Opened open_next = Need("next operand", {{"next x", next->x}});
      if (const uintptr_t block = TheAllocator().Open(out)) open_next.Add(block);
      for (int64_t r = 0; r < rows; ++r) Round(out + r * d, d, static_cast<uint16_t*>(next->x) + x_rows.Offset(r, d));
      next->x_rounded = true;
    }
  }
  void NormBackward(NormKind kind, const float* x, const RowLayout& x_rows, const float* g, const float* mean,
                    const float* rstd, const float* dy, int64_t rows, int64_t d, float* dx, float* dg, float* db,
                    Bf16Operands* next) override {
    {
      const Opened open =
          Need("NormBackward",
               {{"x", x}, {"g", g}, {"mean", mean}, {"rstd", rstd}, {"dy", dy}, {"dx", dx}, {"dg", dg}, {"db", db}});
      cpu_.NormBackward(kind, x, x_rows, g, mean, rstd, dy, rows, d, dx, dg, db, nullptr);
    }
    if (bf16_ && next && x_rows.IsContiguous(d)) GradientInto(next, dx, rows * d);
  }
  void AddNormForward(NormKind kind, const float* x, const float* a, const float* s, const float* g, const float* b,
                      int64_t rows, int64_t d, float eps, float* sum, float* y, float* mean, float* rstd,
                      Bf16Operands* next) override {
    const Opened open = Need(
        "AddNormForward",
        {{"x", x}, {"a", a}, {"s", s}, {"g", g}, {"b", b}, {"sum", sum}, {"y", y}, {"mean", mean}, {"rstd", rstd}});
    std::vector<float> tmp(y ? 0 : rows * d);
    cpu_.AddNormForward(kind, x, a, s, g, b, rows, d, eps, sum, y ? y : tmp.data(), mean, rstd, nullptr);
    if (bf16_ && next) Into(next, y ? y : tmp.data(), rows * d);
  }
  void AddNormBackward(NormKind kind, const float* sum, const float* g, const float* mean, const float* rstd,
                       const float* dy, int64_t rows, int64_t d, float* dsum, float* dg, float* db,
                       const Bf16Operands* from, Bf16Operands* next) override {
    {
      std::vector<float> dy16;  // as the CUDA backend: dy from the product's bf16 dx
      if (from && from->dx) {
        if (!bf16_) throw std::logic_error("AddNormBackward: a bf16 dy while the products are fp32");
        const Opened open_from = Need("AddNormBackward", {{"from dx", from->dx}});
        dy16 = Widen(from->dx, rows * d);
      }
      const Opened open = Need("AddNormBackward", {{"sum", sum},
                                                   {"g", g},
                                                   {"mean", mean},
                                                   {"rstd", rstd},
                                                   {"dy", dy16.empty() ? dy : nullptr},
                                                   {"dsum", dsum},
                                                   {"dg", dg},
                                                   {"db", db}});
      cpu_.AddNormBackward(kind, sum, g, mean, rstd, dy16.empty() ? dy : dy16.data(), rows, d, dsum, dg, db, nullptr,
                           nullptr);
    }
    if (bf16_ && next) GradientInto(next, dsum, rows * d);
  }
  // The fused kernel, as the CUDA backend runs it for the head dims it has kernels for
  // (CudaBackend::FusedAttentionSupports): nothing T×T on the device — the model passes no
  // probabilities, the forward keeps them off the device, the backward recomputes them.
  bool AttentionStoresProbs(int64_t head_dim) const override {
    const bool fused_kernel = head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 96 || head_dim == 128;
    return !(fused_ && fused_kernel);
  }
  // As the CUDA backend: the tensor-core kernels (bf16, fused) read q, k, v in bf16 from the
  // kept operands QKV's product filled, for the options they take.
  bool AttentionReadsRoundedInputs(int64_t head_dim, const AttentionOptions& opt) const override {
    return bf16_ && !AttentionStoresProbs(head_dim) && opt.scale > 0 && opt.temperature > 0;
  }
  void AttentionForward(const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h, int64_t hd,
                        const AttentionOptions& opt, const AttentionStrides& ld, float* out, float* probs, float* lse,
                        AttentionStats* stats, Bf16Operands* kept, Bf16Operands* next) override {
    const bool from_kept = kept && kept->x_rounded;  // q, k, v written there alone by their producer
    if (from_kept && !AttentionReadsRoundedInputs(hd, opt)) {
      throw std::logic_error("AttentionForward: q, k, v given in bf16 alone to a kernel that reads them in fp32");
    }
    if (!AttentionStoresProbs(hd)) {
      {
        const Opened open =
            Need("AttentionForward (fused)", {{"q", q}, {"k", k}, {"v", v}, {"out", out}, {"lse", lse}});
        std::vector<float> host_probs(b * h * t * t), qkv;
        const Inputs in = from_kept ? KeptInputs(*kept, ld, b * t, h * hd, &qkv) : Inputs{q, k, v, ld};
        cpu_.AttentionForward(in.q, in.k, in.v, b, t, h, hd, opt, in.ld, out, host_probs.data(), lse, stats, nullptr,
                              nullptr);
      }
      if (bf16_ && kept && !from_kept) KeptInto(kept, {q, k, v}, {ld.q, ld.k, ld.v}, b * t, h * hd);
      if (bf16_ && next) Into(next, out, b * t * h * hd);
      return;
    }
    const Opened open =
        Need("AttentionForward", {{"q", q}, {"k", k}, {"v", v}, {"out", out}, {"probs", probs}, {"lse", lse}});
    cpu_.AttentionForward(q, k, v, b, t, h, hd, opt, ld, out, probs, lse, stats, nullptr, nullptr);
  }
  void AttentionBackward(const float* q, const float* k, const float* v, const float* out, const float* probs,
                         const float* lse, const float* dout, int64_t b, int64_t t, int64_t h, int64_t hd,
                         const AttentionOptions& opt, const AttentionStrides& ld, const Bf16Operands* kept, float* dq,
                         float* dk, float* dv) override {
    if (!AttentionStoresProbs(hd)) {
      // The tensor-core kernels read q, k, v in bf16 from the kept operands (q, k, v themselves
      // may be unwritten: QKV's product wrote the kept ones alone).
      std::vector<float> qkv, dout16;
      const Inputs in =
          bf16_ && kept && kept->x_rounded ? KeptInputs(*kept, ld, b * t, h * hd, &qkv) : Inputs{q, k, v, ld};
      if (bf16_ && kept && kept->dy_rounded) {  // dout in bf16 alone, from Proj's backward
        const Opened open_dy = Need("AttentionBackward (kept dout)", {{"kept dy", kept->dy}});
        dout16 = Widen(kept->dy, b * t * h * hd);
      }
      const Opened open = Need("AttentionBackward (fused)", {{"q", q},
                                                             {"k", k},
                                                             {"v", v},
                                                             {"out", out},
                                                             {"lse", lse},
                                                             {"dout", dout},
                                                             {"dq", dq},
                                                             {"dk", dk},
                                                             {"dv", dv}});
      std::vector<float> host_probs(b * h * t * t), host_out(b * t * h * hd), host_lse(b * h * t);
      cpu_.AttentionForward(in.q, in.k, in.v, b, t, h, hd, opt, in.ld, host_out.data(), host_probs.data(),
                            host_lse.data(), nullptr, nullptr, nullptr);
      cpu_.AttentionBackward(in.q, in.k, in.v, out, host_probs.data(), lse, dout16.empty() ? dout : dout16.data(), b, t,
                             h, hd, opt, in.ld, nullptr, dq, dk, dv);
      return;
    }
    const Opened open = Need("AttentionBackward", {{"q", q},
                                                   {"k", k},
                                                   {"v", v},
                                                   {"out", out},
                                                   {"probs", probs},
                                                   {"lse", lse},
                                                   {"dout", dout},
                                                   {"dq", dq},
                                                   {"dk", dk},
                                                   {"dv", dv}});
    cpu_.AttentionBackward(q, k, v, out, probs, lse, dout, b, t, h, hd, opt, ld, nullptr, dq, dk, dv);
  }
  void Rope(const float* x, int64_t x_ld, float* y, int64_t y_ld, int64_t b, int64_t t, int64_t h, int64_t hd,
            float base, bool inverse) override {
    const Opened open = Need("Rope", {{"x", x}, {"y", y}});
    cpu_.Rope(x, x_ld, y, y_ld, b, t, h, hd, base, inverse);
  }
  void ActivationForward(Activation act, const float* x, int64_t n, float* y) override {
    const Opened open = Need("ActivationForward", {{"x", x}, {"y", y}});
    cpu_.ActivationForward(act, x, n, y);
  }
  void ActivationBackward(Activation act, const float* x, const float* dy, int64_t n, float* dx) override {
    const Opened open = Need("ActivationBackward", {{"x", x}, {"dy", dy}, {"dx", dx}});
    cpu_.ActivationBackward(act, x, dy, n, dx);
  }
  void Add(const float* x, const float* a, int64_t n, float* y) override {
    const Opened open = Need("Add", {{"x", x}, {"a", a}, {"y", y}});
    cpu_.Add(x, a, n, y);
  }
  void AddInPlace(float* y, const float* x, int64_t n) override {
    const Opened open = Need("AddInPlace", {{"y", y}, {"x", x}});
    cpu_.AddInPlace(y, x, n);
  }
  void Copy(const float* x, int64_t n, float* y) override {
    const Opened open = Need("Copy", {{"x", x}, {"y", y}});
    cpu_.Copy(x, n, y);
  }
  void ChannelScaleForward(const float* x, const float* s, int64_t n, int64_t c, float* y) override {
    const Opened open = Need("ChannelScaleForward", {{"x", x}, {"s", s}, {"y", y}});
    cpu_.ChannelScaleForward(x, s, n, c, y);
  }
  void ChannelScaleBackward(const float* x, const float* s, const float* dy, int64_t n, int64_t c, float* dx, float* ds,
                            Bf16Operands* next) override {
    {
      const Opened open = Need("ChannelScaleBackward", {{"x", x}, {"s", s}, {"dy", dy}, {"dx", dx}, {"ds", ds}});
      cpu_.ChannelScaleBackward(x, s, dy, n, c, dx, ds, nullptr);
    }
    if (bf16_ && next) GradientInto(next, dx, n * c);
  }
  void SigmaReparamForward(const float* w, const float* g, int64_t out, int64_t in, bool update, float* u, float* v,
                           float* sigma, float* w_eff) override {
    const Opened open =
        Need("SigmaReparamForward", {{"w", w}, {"g", g}, {"u", u}, {"v", v}, {"sigma", sigma}, {"w_eff", w_eff}});
    cpu_.SigmaReparamForward(w, g, out, in, update, u, v, sigma, w_eff);
  }
  void SigmaReparamBackward(const float* w, const float* g, const float* sigma, const float* u, const float* v,
                            const float* dw_eff, int64_t out, int64_t in, float* dw, float* dg) override {
    const Opened open =
        Need("SigmaReparamBackward",
             {{"w", w}, {"g", g}, {"sigma", sigma}, {"u", u}, {"v", v}, {"dw_eff", dw_eff}, {"dw", dw}, {"dg", dg}});
    cpu_.SigmaReparamBackward(w, g, sigma, u, v, dw_eff, out, in, dw, dg);
  }
  void CrossEntropyForward(const float* logits, const int32_t* targets, int64_t n, int64_t v,
                           const CrossEntropyOptions& opt, float* lse, CrossEntropyStats* stats) override {
    const Opened open = Need("CrossEntropyForward", {{"logits", logits}, {"targets", targets}, {"lse", lse}});
    cpu_.CrossEntropyForward(logits, targets, n, v, opt, lse, stats);
  }
  void CrossEntropyBackward(const float* logits, const int32_t* targets, const float* lse, int64_t n, int64_t v,
                            const CrossEntropyOptions& opt, float dloss, float* dlogits) override {
    const Opened open =
        Need("CrossEntropyBackward", {{"logits", logits}, {"targets", targets}, {"lse", lse}, {"dlogits", dlogits}});
    cpu_.CrossEntropyBackward(logits, targets, lse, n, v, opt, dloss, dlogits);
  }
  // bf16: the logits stored in bf16 from the (bf16) product, the loss from them.
  bool CrossEntropyLinearForward(const float* x, const float* w, const int32_t* targets, int64_t n, int64_t c,
                                 int64_t v, const CrossEntropyOptions& opt, void* logits, float* lse,
                                 CrossEntropyStats* stats, Bf16Operands* kept, bool with_gradient) override {
    if (!bf16_) {
      return Backend::CrossEntropyLinearForward(x, w, targets, n, c, v, opt, logits, lse, stats, kept, with_gradient);
    }
    const Opened open = Need("CrossEntropyLinearForward", {{"logits", logits}, {"targets", targets}, {"lse", lse}});
    const int64_t stride = LogitsRowStride(v);
    std::vector<float> l(n * v);
    LinearForward(x, w, nullptr, n, c, v, Scratch(l), kept, nullptr);
    const std::vector<float> l16 = RoundRows(l.data(), n, v, stride, logits);
    cpu_.CrossEntropyForward(l16.data(), targets, n, v, opt, lse, stats);
    if (!with_gradient) return false;
    // As the GPU's fused kernel: the gradient for dloss = 1 over the logits, in bf16.
    std::vector<float> dl(n * v);
    cpu_.CrossEntropyBackward(l16.data(), targets, lse, n, v, opt, 1.0f, dl.data());
    RoundRows(dl.data(), n, v, stride, logits);
    return true;
  }
  void CrossEntropyLinearBackward(const void* logits, const int32_t* targets, const float* lse, int64_t n, int64_t v,
                                  const CrossEntropyOptions& opt, float dloss, const float* x, const float* w,
                                  int64_t c, void* dlogits, float* dx, float* dw, const Bf16Operands* kept,
                                  bool gradient_ready) override {
    if (!bf16_) {
      return Backend::CrossEntropyLinearBackward(logits, targets, lse, n, v, opt, dloss, x, w, c, dlogits, dx, dw, kept,
                                                 gradient_ready);
    }
    const Opened open = Need("CrossEntropyLinearBackward",
                             {{"logits", logits}, {"targets", targets}, {"lse", lse}, {"dlogits", dlogits}});
    const int64_t stride = LogitsRowStride(v);
    const std::vector<float> l = WidenRows(logits, n, v, stride);
    std::vector<float> dl(n * v);
    if (gradient_ready) {  // the GPU scales its products by dloss; here the gradient (exact for a power of 2)
      for (int64_t i = 0; i < n * v; ++i) dl[i] = l[i] * dloss;
    } else {
      cpu_.CrossEntropyBackward(l.data(), targets, lse, n, v, opt, dloss, dl.data());
    }
    std::vector<float> dl16 = RoundRows(dl.data(), n, v, stride, gradient_ready ? nullptr : dlogits);
    LinearBackward(x, w, Scratch(dl16), n, c, v, dx, dw, nullptr, kept);
  }
  void AdamW(float* p, const float* grad, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, float bias_correction1, float bias_correction2, float grad_scale) override {
    const Opened open = Need("AdamW", {{"p", p}, {"grad", grad}, {"m", m}, {"v", v}});
    cpu_.AdamW(p, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2, grad_scale);
  }
  // As the CUDA backend's one pass: each buffer's update, then its new p rounded into p_bf16.
  void AdamWEach(const std::vector<AdamWBuffer>& buffers, float lr, float beta1, float beta2, float eps,
                 float bias_correction1, float bias_correction2, float grad_scale) override {
    for (const AdamWBuffer& b : buffers) {
      AdamW(b.p, b.grad, b.m, b.v, b.n, lr, beta1, beta2, eps, b.weight_decay, bias_correction1, bias_correction2,
            grad_scale);
      if (b.p_bf16 == nullptr) continue;
      const Opened open = Need("AdamWEach", {{"p", b.p}, {"p_bf16", b.p_bf16}});
      Round(b.p, b.n, b.p_bf16);
    }
  }
  double SumSquares(const float* x, int64_t n) override {
    const Opened open = Need("SumSquares", {{"x", x}});
    return cpu_.SumSquares(x, n);
  }
  double MeanRowNorm(const float* x, int64_t rows, int64_t d) override {
    const Opened open = Need("MeanRowNorm", {{"x", x}});
    return cpu_.MeanRowNorm(x, rows, d);
  }
  void Scale(float* x, int64_t n, float s) override {
    const Opened open = Need("Scale", {{"x", x}});
    cpu_.Scale(x, n, s);
  }
  // The CPU's op profile of the ops it runs (the trainer's --profile_step end to end).
  bool StartKernelProfile() override { return cpu_.StartKernelProfile(); }
  std::vector<KernelTime> StopKernelProfile() override { return cpu_.StopKernelProfile(); }
  void QueueValue(const float* x) override {
    const Opened open = Need("QueueValue", {{"x", x}});
    Backend::QueueValue(x);
  }

 private:
  // A host buffer stands in for a device one the op writes and nobody reads (y when only
  // its bf16 copy is wanted): Scratch exempts it from the next op's check, only that one.
  float* Scratch(std::vector<float>& buffer) {
    scratch_ = buffer.data();
    return buffer.data();
  }
  // y rounded into the next product's operand, marked as rounded (NextOperand on CUDA).
  // y: device memory, or a host buffer of the op's own.
  // The tensor-core attention's q, k, v (rows ld apart) rounded into its kept operands, as the
  // CUDA kernels lay them out: [rows, 3·c], q, k, v the column blocks.
  void KeptInto(Bf16Operands* kept, std::initializer_list<const float*> x, std::initializer_list<int64_t> ld,
                int64_t rows, int64_t c) {
    Opened open = Need("kept attention operands", {{"kept x", kept->x}});
    auto* into = static_cast<uint16_t*>(kept->x);
    const int64_t* stride = ld.begin();
    for (const float* block : x) {
      if (const uintptr_t opened = TheAllocator().Open(block)) open.Add(opened);
      for (int64_t r = 0; r < rows; ++r) Round(block + r * *stride, c, into + r * 3 * c);
      ++stride, into += c;
    }
    kept->x_rounded = true;
  }
  // The attention's inputs as the CPU's kernel takes them: q, k, v themselves, or the kept
  // bf16 ones widened into *host ([rows, 3·c]).
  struct Inputs {
    const float *q, *k, *v;
    AttentionStrides ld;
  };
  Inputs KeptInputs(const Bf16Operands& kept, AttentionStrides ld, int64_t rows, int64_t c, std::vector<float>* host) {
    const Opened open = Need("kept attention operands", {{"kept x", kept.x}});
    *host = Widen(kept.x, rows * 3 * c);
    const float* x = host->data();
    ld.q = ld.k = ld.v = 3 * c;
    return {x, x + c, x + 2 * c, ld};
  }
  void Into(Bf16Operands* next, const float* y, int64_t n) {
    Opened open = Need("next operand", {{"next x", next->x}});
    if (const uintptr_t block = TheAllocator().Open(y)) open.Add(block);
    Round(y, n, next->x);
    next->x_rounded = true;
  }
  // A norm backward's dx rounded into the next product's gradient operand (NextGradient on
  // CUDA), after the CPU's kernel wrote it (dx: device memory).
  void GradientInto(Bf16Operands* next, const float* dx, int64_t n) {
    const Opened open = Need("next gradient", {{"next dy", next->dy}, {"dx", dx}});
    Round(dx, n, next->dy);
    next->dy_rounded = true;
  }
  // Every pointer argument must be device memory (or the op's scratch): its block is opened
  // for the CPU's kernel until the returned guard goes.
  [[nodiscard]] Opened Need(const char* op, std::initializer_list<std::pair<const char*, const void*>> args) {
    ++checked_;
    Opened opened;
    for (const auto& [arg, p] : args) {
      if (p == nullptr || p == scratch_) continue;
      const uintptr_t block = TheAllocator().Open(p);
      if (block == 0) {
        throw std::logic_error(std::string(op) + ": `" + arg +
                               "` is not memory of the device (a host pointer handed to a kernel?)");
      }
      opened.Add(block);
    }
    scratch_ = nullptr;
    return opened;
  }
  Backend& cpu_;
  const bool bf16_mode_;
  bool bf16_;
  bool fused_ = false;
  const float* scratch_ = nullptr;
  int64_t checked_ = 0;
};

}  // namespace

struct CheckedDevice::Impl {
  explicit Impl(bool bf16) : backend(*GetBackend(kCpu), bf16) {}
  CheckedBackend backend;
  Allocator* previous_allocator = nullptr;
};

CheckedDevice::CheckedDevice(Mode mode) : impl_(new Impl(mode == Mode::kBf16)) {
  InstallFaultMessage();
  impl_->previous_allocator = RegisterAllocator(DeviceType::kCuda, &TheAllocator());
  RegisterBackend(DeviceType::kCuda, &impl_->backend);
}

CheckedDevice::~CheckedDevice() {
  TheAllocator().SetCapacity(0);
  RegisterBackend(DeviceType::kCuda, nullptr);
  RegisterAllocator(DeviceType::kCuda, impl_->previous_allocator);
}

int64_t CheckedDevice::checked_ops() const { return impl_->backend.checked(); }
int64_t CheckedDevice::bytes_alive() const { return TheAllocator().alive(); }
int64_t CheckedDevice::peak_bytes() const { return TheAllocator().peak(); }
void CheckedDevice::ResetPeak() { TheAllocator().ResetPeak(); }
void CheckedDevice::SetCapacity(int64_t total_bytes) { TheAllocator().SetCapacity(total_bytes); }

}  // namespace stability::ops::testing
