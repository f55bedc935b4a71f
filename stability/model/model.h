// The GPT: parameters, one forward and one hand-written backward over the op interface,
// with every stability method as a branch inside the block (DESIGN.md §2):
//
//   a1 = N1(x)                      (skipped when !n1, e.g. qkv_norm)
//   q, k, v = split(QKV(a1))        QKV weight [3C, C], output [q | k | v]
//   q, k (, v) = norms              (qk_norm, v_norm; per head or full width)
//   q, k = rope(q, k)               (position = rope)
//   h = x + LS1 ⊙ Nproj(Proj(Attn(q, k, v)))      (Nproj: proj_norm; LS1: layer_scale)
//   y = h + LS2 ⊙ Nfc2(FC2(act(FC1(N2(h)))))      (Nfc2: fc2_norm)
//   logits = Nf(x_L) · Wᵀ (W = wte when tied, else lm_head); loss = CE + z-loss
//
// With sigma_reparam each of QKV, Proj, FC1, FC2 uses W_eff = (g/σ(W))·W, σ from one
// power-iteration step per training forward (buffers sigma_u, sigma_v).
//
//   auto model = Model::Create(config, /*seed=*/1);
//   double loss = *model->Forward(ids, targets);   // ids, targets: int32 [B, T]
//   model->ZeroGrad(); model->Backward();
//   for (Parameter& p : model->parameters()) ... p.grad ...
#ifndef STABILITY_MODEL_MODEL_H_
#define STABILITY_MODEL_MODEL_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "stability/base/parameter.h"
#include "stability/base/tensor.h"
#include "stability/model/config.h"
#include "stability/ops/backend.h"

namespace stability::model {

using ::stability::Parameter;

// Telemetry values by their fixed names (README: "Telemetry"), in a stable order.
class Telemetry {
 public:
  void Set(const std::string& name, double value);
  // The slot of `name` (appended, NaN, when new), to fill later with SetAt: values computed
  // on the device and read back together keep their place in the order.
  size_t Slot(const std::string& name);
  void SetAt(size_t slot, double value) { values_[slot].second = value; }
  const std::vector<std::pair<std::string, double>>& values() const { return values_; }
  double Get(const std::string& name) const;  // NaN when absent
  void Clear() { values_.clear(); }

 private:
  std::vector<std::pair<std::string, double>> values_;
};

class Model {
 public:
  // Builds the parameters with GPT-2 initialisation from `seed`: N(0, init_std), residual
  // projections (Proj, FC2) N(0, init_std / sqrt(2·n_layer)), norm gains 1, biases 0,
  // layer scales layer_scale_init, σ-reparam gains 1 (σ-reparam's u: a random unit vector,
  // then one power-iteration step, so σ is defined before training). Values are drawn on
  // the host and moved to `device` (a GPU's backend must be initialised first:
  // ops::cuda::InitCudaBackend), so every device starts from the same weights.
  static absl::StatusOr<std::unique_ptr<Model>> Create(const ModelConfig& config, uint64_t seed,
                                                       Device device = kCpu);
  ~Model();

  const ModelConfig& config() const { return config_; }
  std::vector<Parameter>& parameters() { return params_; }
  // Non-trainable state saved with the parameters (σ-reparam power-iteration vectors).
  std::vector<std::pair<std::string, Tensor>>& buffers() { return buffers_; }
  Parameter* FindParameter(const std::string& name);
  // Every Parameter::grad is a view of this one buffer (each starting 64-byte aligned, the
  // gaps zero): ZeroGrad is one memset, and data parallelism all-reduces it in one call.
  Tensor& gradients() { return gradients_; }

  // Training mode advances the σ-reparam power iteration in each Forward (default on).
  void set_training(bool training) { training_ = training; }
  // Telemetry in Forward (norms, attention stats) costs a few percent; on by default.
  void set_telemetry(bool on) { telemetry_on_ = on; }
  // Whether logits() holds the logits after a training Forward (default on). Off (a trainer,
  // which reads only the loss), a backend may compute the loss's gradient in the forward's
  // pass over the N×V logits and store it in their place (Backend::CrossEntropyLinearForward's
  // with_gradient): one pass over them, not two. Forward in eval mode always keeps them.
  void set_keep_logits(bool keep) { keep_logits_ = keep; }

  // ids, targets: int32 [B, T] on the CPU (checked there, then copied to the model's
  // device), T <= seq_len, values < vocab_size. Returns the loss.
  absl::StatusOr<double> Forward(const Tensor& ids, const Tensor& targets);
  // Accumulates d(loss)/d(param)·dloss into every Parameter::grad. Needs a Forward first, one
  // Backward for each.
  absl::Status Backward(float dloss = 1.0f);
  void ZeroGrad();
  // Global and per-tensor gradient L2 norms, into telemetry (grad_norm, grad_norm.<name>).
  double ComputeGradNorms();

  const Telemetry& telemetry() const { return telemetry_; }
  // [B·T, vocab_size] of the last Forward, on the model's device, in the backend's storage
  // (fp32; bf16 where the matrix products are bf16: Backend::SavedValueBytes) — until Backward,
  // which overwrites them with their gradient (no second N×V buffer), or already the gradient
  // after a training Forward with set_keep_logits(false). The model's own buffer where its rows
  // are vocab_size apart; a copy without the padding where the backend pads them
  // (Backend::LogitsRowStride: CUDA in bf16).
  Tensor logits() const;

 private:
  struct Impl;
  Model(ModelConfig config, Device device);
  ModelConfig config_;
  Device device_;
  ops::Backend* backend_;
  bool training_ = true;
  bool telemetry_on_ = true;
  bool keep_logits_ = true;
  std::vector<Parameter> params_;
  Tensor gradients_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  Telemetry telemetry_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stability::model

#endif  // STABILITY_MODEL_MODEL_H_
