// AdamW over a list of Parameters, with gradient clipping by global norm folded into the
// update (the gradients themselves are left as computed, for telemetry).
//
//   AdamW opt(model.parameters(), {.beta1 = 0.9, .beta2 = 0.95, .weight_decay = 0.1});
//   double norm = opt.Step(lr, /*clip=*/1.0);   // returns the pre-clip global grad norm
//
// Weight decay applies to parameters with weight_decay = true (the linear weights: not
// norms, biases, embeddings, gains or scales) unless decay_all is set.
#ifndef STABILITY_OPTIM_ADAMW_H_
#define STABILITY_OPTIM_ADAMW_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "stability/base/parameter.h"
#include "stability/ops/backend.h"

namespace stability::optim {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool decay_all = false;  // also decay norms, biases, embeddings
};

class AdamW {
 public:
  AdamW(std::vector<Parameter>* params, const AdamWOptions& options);

  // One update at learning rate lr. clip > 0 scales the gradient by min(1, clip / (norm + 1e-6))
  // (torch.nn.utils.clip_grad_norm_). Returns the global gradient norm before clipping.
  double Step(double lr, double clip);

  // Global L2 norm of all gradients.
  double GradNorm() const;

  int64_t step() const { return step_; }
  // State for checkpoints: "adam.m.<name>" / "adam.v.<name>" tensors and the step count.
  std::vector<std::pair<std::string, Tensor>> StateTensors() const;
  absl::Status LoadState(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step);

 private:
  std::vector<Parameter>* params_;
  AdamWOptions options_;
  std::vector<Tensor> m_, v_;
  int64_t step_ = 0;
  ops::Backend* backend_;
};

}  // namespace stability::optim

#endif  // STABILITY_OPTIM_ADAMW_H_
