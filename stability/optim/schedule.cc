#include "stability/optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace stability::optim {

absl::Status Schedule::Validate() const {
  if (!(lr > 0) || !std::isfinite(lr)) return absl::InvalidArgumentError(absl::StrCat("--lr=", lr, " must be a positive number"));
  if (!(min_lr >= 0) || min_lr > lr) {
    return absl::InvalidArgumentError(absl::StrCat("--min_lr=", min_lr, " must be in [0, lr = ", lr, "]"));
  }
  if (warmup < 0) return absl::InvalidArgumentError(absl::StrCat("--warmup=", warmup, " must be >= 0"));
  if (total < 1) return absl::InvalidArgumentError(absl::StrCat("--steps=", total, " must be >= 1"));
  return absl::OkStatus();
}

double Schedule::At(int64_t step) const {
  if (step < warmup) return lr * static_cast<double>(step + 1) / warmup;
  const double p = std::clamp(static_cast<double>(step - warmup) / std::max<int64_t>(1, total - 1 - warmup), 0.0, 1.0);
  switch (decay) {
    case Decay::kCosine: return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * p));
    case Decay::kLinear: return lr + (min_lr - lr) * p;
    case Decay::kConstant: return lr;
  }
  return lr;
}

absl::Status ParseDecay(const std::string& name, Decay* decay) {
  if (name == "cosine") *decay = Decay::kCosine;
  else if (name == "linear") *decay = Decay::kLinear;
  else if (name == "constant") *decay = Decay::kConstant;
  else return absl::InvalidArgumentError(absl::StrCat("unknown schedule \"", name, "\"; use cosine, linear or constant"));
  return absl::OkStatus();
}

const char* DecayName(Decay decay) {
  switch (decay) {
    case Decay::kCosine: return "cosine";
    case Decay::kLinear: return "linear";
    case Decay::kConstant: return "constant";
  }
  return "?";
}

}  // namespace stability::optim
