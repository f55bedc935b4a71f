// Learning-rate schedules: linear warmup from lr/warmup to lr over `warmup` steps, then
// cosine, linear or constant decay to min_lr at step `total` − 1:
//
//   step < warmup:  lr · (step + 1) / warmup
//   after:          p = (step − warmup) / max(1, total − 1 − warmup) ∈ [0, 1]
//     cosine:   min_lr + (lr − min_lr) · ½(1 + cos(π·p))
//     linear:   lr + (min_lr − lr) · p
//     constant: lr
#ifndef STABILITY_OPTIM_SCHEDULE_H_
#define STABILITY_OPTIM_SCHEDULE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace stability::optim {

enum class Decay { kCosine, kLinear, kConstant };

struct Schedule {
  double lr = 1e-3;
  double min_lr = 0.0;
  int64_t warmup = 0;
  int64_t total = 1;
  Decay decay = Decay::kCosine;

  absl::Status Validate() const;
  double At(int64_t step) const;
};

// "cosine" | "linear" | "constant".
absl::Status ParseDecay(const std::string& name, Decay* decay);
const char* DecayName(Decay decay);

}  // namespace stability::optim

#endif  // STABILITY_OPTIM_SCHEDULE_H_
