// Parameter: a named trainable tensor and its gradient, shared by the model (which owns
// them) and the optimizer (which updates them) without either depending on the other.
#ifndef STABILITY_BASE_PARAMETER_H_
#define STABILITY_BASE_PARAMETER_H_

#include <string>

#include "stability/base/tensor.h"

namespace stability {

struct Parameter {
  std::string name;  // "h.0.qkv.weight": the names of the README's parameter table
  Tensor value;
  Tensor grad;
  bool weight_decay;  // false for norms, biases, embeddings, gains and scales
};

}  // namespace stability

#endif  // STABILITY_BASE_PARAMETER_H_
