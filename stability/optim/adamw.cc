#include "stability/optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace stability::optim {
namespace {

// Calls f(i, lo, hi, flat_offset) for each parameter i overlapping `range`, with [lo, hi)
// the overlap in that parameter's elements and flat_offset its position in the range.
template <typename F>
void ForEachOverlap(const std::vector<Parameter>& params, FlatRange range, F f) {
  int64_t base = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].value.numel();
    const int64_t lo = std::max(range.begin, base), hi = std::min(range.end, base + n);
    if (lo < hi) f(i, lo - base, hi - base, lo - range.begin);
    base += n;
  }
}

}  // namespace

int64_t FlatSize(const std::vector<Parameter>& params) {
  int64_t n = 0;
  for (const Parameter& p : params) n += p.value.numel();
  return n;
}

FlatRange ShardOf(int64_t total, int rank, int world) {
  const int64_t piece = (total + world - 1) / world;
  return {std::min(total, piece * rank), std::min(total, piece * (rank + 1))};
}

void PackValues(const std::vector<Parameter>& params, FlatRange range, float* dst) {
  ForEachOverlap(params, range, [&](size_t i, int64_t lo, int64_t hi, int64_t at) {
    ops::GetBackend(params[i].value.device())->Copy(params[i].value.f32() + lo, hi - lo, dst + at);
  });
}

void UnpackValues(std::vector<Parameter>* params, FlatRange range, const float* src) {
  ForEachOverlap(*params, range, [&](size_t i, int64_t lo, int64_t hi, int64_t at) {
    Parameter& p = (*params)[i];
    ops::GetBackend(p.value.device())->Copy(src + at, hi - lo, p.value.f32() + lo);
    p.value_bf16_current = false;  // the next forward rounds the copy again
  });
}

AdamW::AdamW(std::vector<Parameter>* params, const AdamWOptions& options)
    : AdamW(params, options, FlatRange{0, FlatSize(*params)}) {}

AdamW::AdamW(std::vector<Parameter>* params, const AdamWOptions& options, FlatRange shard)
    : params_(params),
      options_(options),
      shard_(shard),
      pieces_(params->size()),
      m_(params->size()),
      v_(params->size()),
      backend_(ops::GetBackend(params->front().value.device())) {
  ForEachOverlap(*params_, shard_, [&](size_t i, int64_t lo, int64_t hi, int64_t) {
    pieces_[i] = {lo, hi};
    const Device device = (*params_)[i].value.device();
    m_[i] = Tensor::Zeros({hi - lo}, DType::kF32, device);
    v_[i] = Tensor::Zeros({hi - lo}, DType::kF32, device);
  });
}

// Queued and read once: one synchronisation on a GPU, not one per parameter.
double AdamW::GradNorm() const {
  backend_->ReadQueued();  // drop leftovers of a failed call, if any
  std::vector<std::pair<const float*, int64_t>> grads;
  for (const Parameter& p : *params_) grads.emplace_back(p.grad.f32(), p.grad.numel());
  backend_->QueueSumSquaresOfEach(grads);
  double ss = 0;
  for (double v : backend_->ReadQueued()) ss += v;
  return std::sqrt(ss);
}

double AdamW::Step(double lr, double clip) {
  const double norm = GradNorm();  // of every gradient: each rank holds them all (ZeRO-1)
  const double scale = (clip > 0 && std::isfinite(norm)) ? std::min(1.0, clip / (norm + 1e-6)) : 1.0;
  ++step_;
  const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(step_));
  std::vector<ops::Backend::AdamWBuffer> buffers;  // one update of them all (few launches on a GPU)
  for (size_t i = 0; i < params_->size(); ++i) {
    const Piece& piece = pieces_[i];
    if (piece.hi == piece.lo) continue;
    Parameter& p = (*params_)[i];
    const double wd = (p.weight_decay || options_.decay_all) ? options_.weight_decay : 0.0;
    // The bf16 copy rewritten in the same pass (current again below where the piece is all of it).
    void* p_bf16 = p.value_bf16.defined() ? static_cast<uint16_t*>(p.value_bf16.data()) + piece.lo : nullptr;
    buffers.push_back({p.value.f32() + piece.lo, p.grad.f32() + piece.lo, m_[i].f32(), v_[i].f32(), piece.hi - piece.lo,
                       static_cast<float>(wd), p_bf16});
  }
  backend_->AdamWEach(buffers, static_cast<float>(lr), static_cast<float>(options_.beta1),
                      static_cast<float>(options_.beta2), static_cast<float>(options_.eps), static_cast<float>(bc1),
                      static_cast<float>(bc2), static_cast<float>(scale));
  for (size_t i = 0; i < params_->size(); ++i) {
    Parameter& p = (*params_)[i];
    if (pieces_[i].lo == 0 && pieces_[i].hi == p.value.numel()) p.value_bf16_current = p.value_bf16.defined();
  }
  return norm;
}

std::vector<std::pair<std::string, Tensor>> AdamW::StateTensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_->size(); ++i) {
    const Parameter& p = (*params_)[i];
    out.emplace_back("adam.m." + p.name, m_[i].Reshaped(p.value.shape()));
    out.emplace_back("adam.v." + p.name, v_[i].Reshaped(p.value.shape()));
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> AdamW::StateTensorsFromFlat(const float* m, const float* v) const {
  std::vector<std::pair<std::string, Tensor>> out;
  int64_t at = 0;
  for (const Parameter& p : *params_) {
    for (auto [prefix, src] : {std::pair{"adam.m.", m}, std::pair{"adam.v.", v}}) {
      Tensor t = Tensor::Empty(p.value.shape());
      std::memcpy(t.data(), src + at, t.nbytes());
      out.emplace_back(prefix + p.name, std::move(t));
    }
    at += p.value.numel();
  }
  return out;
}

void AdamW::PackMoments(float* m, float* v) const {
  ForEachOverlap(*params_, shard_, [&](size_t i, int64_t lo, int64_t hi, int64_t at) {
    backend_->Copy(m_[i].f32(), hi - lo, m + at);
    backend_->Copy(v_[i].f32(), hi - lo, v + at);
  });
}

absl::Status AdamW::LoadState(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step) {
  for (size_t i = 0; i < params_->size(); ++i) {
    const Parameter& p = (*params_)[i];
    for (auto [prefix, dst] : {std::pair{"adam.m.", &m_[i]}, std::pair{"adam.v.", &v_[i]}}) {
      const std::string name = prefix + p.name;
      const Tensor* src = nullptr;
      for (const auto& [n, t] : tensors)
        if (n == name) src = &t;
      if (src == nullptr) return absl::DataLossError(absl::StrCat("optimizer state has no tensor ", name));
      if (src->shape() != p.value.shape() || src->dtype() != DType::kF32) {
        return absl::DataLossError(absl::StrCat("optimizer state ", name, " has shape ", ShapeToString(src->shape()),
                                                ", the model needs ", ShapeToString(p.value.shape())));
      }
      const Piece& piece = pieces_[i];
      if (piece.hi > piece.lo) dst->CopyFromHost(src->f32() + piece.lo);  // src: a host tensor
    }
  }
  step_ = step;
  return absl::OkStatus();
}

}  // namespace stability::optim
