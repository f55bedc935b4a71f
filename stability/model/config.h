// ModelConfig: the GPT's shape and every stability switch, with named presets.
//
// A config is a size preset (tiny, small, mid, gpt2_124m, paper_830m) plus a variant
// preset (the methods of Rybakov et al. 2024: baseline, qk_norm, qkv_norm, qk_fc_norm,
// soft_cap, qk_norm_cap, soft_temp, soft_clip, sigma_reparam, layer_scale), plus any
// orthogonal switch set by hand. Every field round-trips through JSON by its name; the
// README's "Model config" table documents each one and the choices made where the paper
// is silent.
//
//   absl::StatusOr<ModelConfig> c = MakeConfig("tiny", "qk_norm");
//   c->norm = ops::NormKind::kRMSNorm;
//   STABILITY_RETURN_IF_ERROR(c->Validate());
#ifndef STABILITY_MODEL_CONFIG_H_
#define STABILITY_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "stability/ops/backend.h"

namespace stability::model {

enum class Position { kLearned, kRope };

struct ModelConfig {
  std::string size = "tiny";         // informational: the size preset it came from
  std::string variant = "baseline";  // informational: the variant preset it came from

  // Shape.
  int64_t vocab_size = 50257;
  int64_t seq_len = 64;  // block size: the longest sequence (learned positions need it)
  int64_t n_layer = 2;
  int64_t n_head = 4;
  int64_t n_embd = 64;
  int64_t mlp_ratio = 4;  // FC1 width = mlp_ratio · n_embd

  // Norms: kind, where.
  ops::NormKind norm = ops::NormKind::kLayerNorm;
  float norm_eps = 1e-5f;
  bool n1 = true;               // pre-attention input norm N1 (qkv_norm removes it)
  bool n2 = true;               // pre-MLP input norm N2
  bool qk_norm = false;         // norm on q and on k after QKV
  bool v_norm = false;          // norm on v after QKV
  bool per_head_norm = false;   // q/k/v norms per head (gain of head_dim) or full width (n_embd)
  bool proj_norm = false;       // norm on the Proj output before the residual add
  bool fc2_norm = false;        // norm on the FC2 output before the residual add

  // Attention softmax.
  float attn_temperature = 1.0f;  // logits divided by it (soft_temp: 0.5)
  float attn_soft_cap = 0.0f;     // c·tanh(s/c), 0 = off (soft_cap: 50)
  bool softmax_clip = false;      // clip((ζ−γ)·softmax + γ, 0, 1)
  float clip_zeta = 1.03f;
  float clip_gamma = -0.03f;

  // Reparametrisations.
  bool sigma_reparam = false;     // QKV, Proj, FC1, FC2 weights used as (g/σ(W))·W
  bool layer_scale = false;       // residual branches scaled by learnable per-channel vectors
  float layer_scale_init = 0.1f;

  // Output and loss.
  float z_loss = 0.0f;            // coefficient of mean(log² Z) (PaLM: 1e-4)
  float logit_soft_cap = 0.0f;    // final logits c·tanh(l/c), 0 = off (Gemma 2: 30)

  // Everything else.
  Position position = Position::kLearned;
  float rope_base = 10000.0f;
  bool tie_embeddings = true;
  bool bias = true;               // biases of the linear layers and LayerNorms
  ops::Activation activation = ops::Activation::kGelu;
  float init_std = 0.02f;

  int64_t head_dim() const { return n_embd / n_head; }
  // Checks every field; the error names the field, its value and how to fix it.
  absl::Status Validate() const;
  nlohmann::json ToJson() const;
};

// Field by field from JSON: unknown fields, wrong types and invalid values are errors
// that name the field. Missing fields keep the defaults above. The result is validated.
absl::StatusOr<ModelConfig> ConfigFromJson(const nlohmann::json& j);

// The JSON / flag names of every field, in declaration order.
std::vector<std::string> ModelConfigFieldNames();

std::vector<std::string> SizePresetNames();
std::vector<std::string> VariantPresetNames();
// A size preset with a variant preset applied; errors list the valid names.
absl::StatusOr<ModelConfig> MakeConfig(const std::string& size, const std::string& variant);
// The same, then `overrides` (a JSON object of fields, e.g. {"norm": "rmsnorm"}) on top.
absl::StatusOr<ModelConfig> MakeConfig(const std::string& size, const std::string& variant,
                                       const nlohmann::json& overrides);
// Applies a variant preset's switches on top of `config` (sets config->variant).
absl::Status ApplyVariant(const std::string& variant, ModelConfig* config);

// Each trainable tensor's number of elements, in the model's creation order (model.cc).
std::vector<int64_t> ParameterSizes(const ModelConfig& config);
// Number of trainable parameters (what 6N in the FLOP formula counts): their sum.
int64_t ParameterCount(const ModelConfig& config);
// The gradients are views of one buffer (Model::gradients), each starting 64-byte aligned as
// a tensor of its own would: the floats a gradient of n takes there, and the buffer's size.
inline int64_t GradientSlot(int64_t n) { return (n + 15) / 16 * 16; }
int64_t GradientBufferFloats(const ModelConfig& config);

}  // namespace stability::model

#endif  // STABILITY_MODEL_CONFIG_H_
