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
  // value rounded to bf16, where a backend multiplies this weight in bf16 (the model allocates
  // it; undefined otherwise): the products' weight operand, kept from step to step. Current
  // while it holds value's bits: the optimizer writes both and sets it, the model's forward sets
  // it after rounding value into it; every other writer of value (a checkpoint load, the
  // wheel's set_parameter, ZeRO's gather) must clear it, so the next forward rounds again —
  // CopyValueFromHost does.
  Tensor value_bf16;
  bool value_bf16_current = false;

  // value from host memory (value.nbytes() of it), its bf16 copy marked stale: the way to
  // write a parameter outside the optimizer.
  void CopyValueFromHost(const void* host_src) {
    value.CopyFromHost(host_src);
    value_bf16_current = false;
  }
};

}  // namespace stability

#endif  // STABILITY_BASE_PARAMETER_H_
