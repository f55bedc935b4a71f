#include "stability/optim/adamw.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace stability::optim {

AdamW::AdamW(std::vector<Parameter>* params, const AdamWOptions& options)
    : params_(params), options_(options), backend_(ops::GetBackend(params->front().value.device())) {
  for (const Parameter& p : *params_) {
    m_.push_back(Tensor::Zeros(p.value.shape(), DType::kF32, p.value.device()));
    v_.push_back(Tensor::Zeros(p.value.shape(), DType::kF32, p.value.device()));
  }
}

double AdamW::GradNorm() const {
  double ss = 0;
  for (const Parameter& p : *params_) ss += backend_->SumSquares(p.grad.f32(), p.grad.numel());
  return std::sqrt(ss);
}

double AdamW::Step(double lr, double clip) {
  const double norm = GradNorm();
  const double scale = (clip > 0 && std::isfinite(norm)) ? std::min(1.0, clip / (norm + 1e-6)) : 1.0;
  ++step_;
  const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(options_.beta2, static_cast<double>(step_));
  for (size_t i = 0; i < params_->size(); ++i) {
    Parameter& p = (*params_)[i];
    const double wd = (p.weight_decay || options_.decay_all) ? options_.weight_decay : 0.0;
    backend_->AdamW(p.value.f32(), p.grad.f32(), m_[i].f32(), v_[i].f32(), p.value.numel(), static_cast<float>(lr),
                    static_cast<float>(options_.beta1), static_cast<float>(options_.beta2),
                    static_cast<float>(options_.eps), static_cast<float>(wd), static_cast<float>(bc1),
                    static_cast<float>(bc2), static_cast<float>(scale));
  }
  return norm;
}

std::vector<std::pair<std::string, Tensor>> AdamW::StateTensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_->size(); ++i) {
    out.emplace_back("adam.m." + (*params_)[i].name, m_[i]);
    out.emplace_back("adam.v." + (*params_)[i].name, v_[i]);
  }
  return out;
}

absl::Status AdamW::LoadState(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step) {
  for (size_t i = 0; i < params_->size(); ++i) {
    for (auto [prefix, dst] : {std::pair{"adam.m.", &m_[i]}, std::pair{"adam.v.", &v_[i]}}) {
      const std::string name = prefix + (*params_)[i].name;
      const Tensor* src = nullptr;
      for (const auto& [n, t] : tensors)
        if (n == name) src = &t;
      if (src == nullptr) return absl::DataLossError(absl::StrCat("optimizer state has no tensor ", name));
      if (src->shape() != dst->shape() || src->dtype() != DType::kF32) {
        return absl::DataLossError(absl::StrCat("optimizer state ", name, " has shape ", ShapeToString(src->shape()),
                                                ", the model needs ", ShapeToString(dst->shape())));
      }
      std::memcpy(dst->data(), src->data(), dst->nbytes());
    }
  }
  step_ = step;
  return absl::OkStatus();
}

}  // namespace stability::optim
