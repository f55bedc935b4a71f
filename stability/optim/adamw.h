// AdamW over a list of Parameters, with gradient clipping by global norm folded into the
// update (the gradients themselves are left as computed, for telemetry).
//
//   AdamW opt(model.parameters(), {.beta1 = 0.9, .beta2 = 0.95, .weight_decay = 0.1});
//   double norm = opt.Step(lr, /*clip=*/1.0);   // returns the pre-clip global grad norm
//
// Weight decay applies to parameters with weight_decay = true (the linear weights: not
// norms, biases, embeddings, gains or scales) unless decay_all is set.
//
// ZeRO-1 (optimizer-state sharding, Rajbhandari et al. 2020): with a FlatRange, the
// optimizer keeps the moments of that range of the flattened parameter list only and
// updates only those parameter elements; every rank passes its ShardOf() range, and the
// caller all-gathers the parameters after each step (train/trainer.cc). The update of an
// element is the same arithmetic either way, so sharded and unsharded runs are bitwise equal.
#ifndef STABILITY_OPTIM_ADAMW_H_
#define STABILITY_OPTIM_ADAMW_H_

#include <cstdint>
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

// [begin, end) of the parameters flattened in list order (each row-major).
struct FlatRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};
int64_t FlatSize(const std::vector<Parameter>& params);
// Rank `rank`'s piece of `total` elements cut into `world` pieces of ceil(total / world)
// (the last ones shorter, possibly empty), the layout an equal-count all-gather needs.
FlatRange ShardOf(int64_t total, int rank, int world);
// The values of `range` to a contiguous dst, and back; dst/src in the parameters' memory
// (host or GPU: the copies go through their backend).
void PackValues(const std::vector<Parameter>& params, FlatRange range, float* dst);
void UnpackValues(std::vector<Parameter>* params, FlatRange range, const float* src);

class AdamW {
 public:
  // Moments for every element.
  AdamW(std::vector<Parameter>* params, const AdamWOptions& options);
  // Moments for `shard` only (ZeRO-1); Step updates only its elements.
  AdamW(std::vector<Parameter>* params, const AdamWOptions& options, FlatRange shard);

  // One update at learning rate lr. clip > 0 scales the gradient by min(1, clip / (norm + 1e-6))
  // (torch.nn.utils.clip_grad_norm_). Returns the global gradient norm before clipping.
  double Step(double lr, double clip);

  // Global L2 norm of all gradients.
  double GradNorm() const;

  int64_t step() const { return step_; }
  const FlatRange& shard() const { return shard_; }
  bool sharded() const { return shard_.size() != FlatSize(*params_); }
  int64_t state_bytes() const { return 2 * shard_.size() * static_cast<int64_t>(sizeof(float)); }

  // State for checkpoints: "adam.m.<name>" / "adam.v.<name>" tensors of the full shapes.
  // Unsharded: the moments themselves. Sharded: built from flat m and v of every element
  // (each rank's PackMoments, all-gathered).
  std::vector<std::pair<std::string, Tensor>> StateTensors() const;
  std::vector<std::pair<std::string, Tensor>> StateTensorsFromFlat(const float* m, const float* v) const;
  // This optimizer's moments of its shard, contiguous (shard().size() floats each), in the
  // parameters' memory.
  void PackMoments(float* m, float* v) const;
  // Full-shape tensors as StateTensors() writes them; a sharded optimizer keeps its range.
  absl::Status LoadState(const std::vector<std::pair<std::string, Tensor>>& tensors, int64_t step);

 private:
  // The part of parameter i inside the shard: elements [lo, hi) of it, at offset lo in m_[i].
  struct Piece {
    int64_t lo = 0, hi = 0;
  };
  std::vector<Parameter>* params_;
  AdamWOptions options_;
  FlatRange shard_;
  std::vector<Piece> pieces_;
  std::vector<Tensor> m_, v_;  // [hi − lo] each (undefined when empty)
  int64_t step_ = 0;
  ops::Backend* backend_;
};

}  // namespace stability::optim

#endif  // STABILITY_OPTIM_ADAMW_H_
