#include "stability/model/config.h"

#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "stability/base/json_fields.h"

namespace stability::model {
namespace {

using nlohmann::json;

// String names of the enums, as they appear in JSON and on the command line.
const std::map<std::string, ops::NormKind> kNormKinds = {{"layernorm", ops::NormKind::kLayerNorm},
                                                          {"rmsnorm", ops::NormKind::kRMSNorm}};
const std::map<std::string, ops::Activation> kActivations = {{"gelu", ops::Activation::kGelu},
                                                              {"relu", ops::Activation::kRelu}};
const std::map<std::string, Position> kPositions = {{"learned", Position::kLearned}, {"rope", Position::kRope}};

const JsonFields<ModelConfig>& Fields() {
#define F(f) STABILITY_JSON_FIELD(ModelConfig, f)
#define E(f, names) STABILITY_JSON_ENUM(ModelConfig, f, names)
  static const JsonFields<ModelConfig> fields = {
      F(size), F(variant), F(vocab_size), F(seq_len), F(n_layer), F(n_head), F(n_embd), F(mlp_ratio),
      E(norm, kNormKinds), F(norm_eps), F(n1), F(n2), F(qk_norm), F(v_norm), F(per_head_norm), F(proj_norm),
      F(fc2_norm), F(attn_temperature), F(attn_soft_cap), F(softmax_clip), F(clip_zeta), F(clip_gamma),
      F(sigma_reparam), F(layer_scale), F(layer_scale_init), F(z_loss), F(logit_soft_cap), E(position, kPositions),
      F(rope_base), F(tie_embeddings), F(bias), E(activation, kActivations), F(init_std),
  };
#undef F
#undef E
  return fields;
}

struct SizePreset {
  int64_t vocab_size, seq_len, n_layer, n_head, n_embd;
  bool tie_embeddings;
};

// tiny/small: fast on a 2-core CPU. mid: the benchmark's 8 × 512. gpt2_124m: GPT-2 small.
// paper_830m: Rybakov et al.'s 24 blocks × 1024 wide × 16 heads; with a 256k vocabulary
// and untied embeddings (NeMo's GPT setup) the count is ≈ 830M, which the paper reports.
const std::map<std::string, SizePreset>& SizePresets() {
  static const std::map<std::string, SizePreset> presets = {
      {"tiny", {50257, 64, 2, 4, 64, true}},
      {"small", {50257, 128, 4, 4, 128, true}},
      {"mid", {50257, 512, 8, 8, 512, true}},
      {"gpt2_124m", {50257, 1024, 12, 12, 768, true}},
      {"paper_830m", {256000, 2048, 24, 16, 1024, false}},
  };
  return presets;
}

const std::map<std::string, std::function<void(ModelConfig&)>>& Variants() {
  static const std::map<std::string, std::function<void(ModelConfig&)>> variants = {
      {"baseline", [](ModelConfig&) {}},
      {"qk_norm", [](ModelConfig& c) { c.qk_norm = true; }},
      {"qkv_norm",
       [](ModelConfig& c) {
         c.qk_norm = c.v_norm = true;
         c.n1 = false;
       }},
      {"qk_fc_norm", [](ModelConfig& c) { c.qk_norm = c.proj_norm = c.fc2_norm = true; }},
      {"soft_cap", [](ModelConfig& c) { c.attn_soft_cap = 50.0f; }},
      {"qk_norm_cap",
       [](ModelConfig& c) {
         c.qk_norm = true;
         c.attn_soft_cap = 50.0f;
       }},
      {"soft_temp", [](ModelConfig& c) { c.attn_temperature = 0.5f; }},
      {"soft_clip", [](ModelConfig& c) { c.softmax_clip = true; }},
      {"sigma_reparam", [](ModelConfig& c) { c.sigma_reparam = true; }},
      {"layer_scale", [](ModelConfig& c) { c.layer_scale = true; }},
  };
  return variants;
}

template <typename M>
std::vector<std::string> Keys(const M& m) {
  std::vector<std::string> keys;
  for (const auto& [k, v] : m) keys.push_back(k);
  return keys;
}

}  // namespace

absl::Status ModelConfig::Validate() const {
  const auto bad = [](const std::string& msg) { return absl::InvalidArgumentError("invalid model config: " + msg); };
  const std::pair<const char*, int64_t> positive[] = {{"vocab_size", vocab_size}, {"seq_len", seq_len},
                                                      {"n_layer", n_layer},       {"n_head", n_head},
                                                      {"n_embd", n_embd},         {"mlp_ratio", mlp_ratio}};
  for (const auto& [name, value] : positive) {
    if (value <= 0) return bad(absl::StrCat(name, " = ", value, " must be at least 1"));
  }
  if (vocab_size > (int64_t{1} << 31) - 1) return bad(absl::StrCat("vocab_size = ", vocab_size, " exceeds int32 ids"));
  if (n_embd % n_head != 0) {
    return bad(absl::StrCat("n_embd = ", n_embd, " must be divisible by n_head = ", n_head,
                            " (head_dim = n_embd / n_head); e.g. n_embd = ", (n_embd / n_head + 1) * n_head));
  }
  if (position == Position::kRope && head_dim() % 2 != 0) {
    return bad(absl::StrCat("position = rope needs an even head_dim, got n_embd / n_head = ", head_dim()));
  }
  if (!(norm_eps > 0)) return bad(absl::StrCat("norm_eps = ", norm_eps, " must be > 0"));
  if (!(attn_temperature > 0)) return bad(absl::StrCat("attn_temperature = ", attn_temperature, " must be > 0 (1 = off)"));
  if (!(attn_soft_cap >= 0)) return bad(absl::StrCat("attn_soft_cap = ", attn_soft_cap, " must be >= 0 (0 = off)"));
  if (!(logit_soft_cap >= 0)) return bad(absl::StrCat("logit_soft_cap = ", logit_soft_cap, " must be >= 0 (0 = off)"));
  if (!(z_loss >= 0)) return bad(absl::StrCat("z_loss = ", z_loss, " must be >= 0 (0 = off)"));
  if (softmax_clip && !(clip_zeta > clip_gamma && clip_zeta >= 1 && clip_gamma <= 0)) {
    return bad(absl::StrCat("softmax_clip needs clip_zeta >= 1 >= 0 >= clip_gamma, got zeta = ", clip_zeta,
                            ", gamma = ", clip_gamma, " (paper: 1.03, -0.03)"));
  }
  if (layer_scale && layer_scale_init == 0) return bad("layer_scale_init = 0 makes every block the identity forever");
  if (!(init_std > 0)) return bad(absl::StrCat("init_std = ", init_std, " must be > 0"));
  if (position == Position::kRope && !(rope_base > 1)) return bad(absl::StrCat("rope_base = ", rope_base, " must be > 1"));
  return absl::OkStatus();
}

nlohmann::json ModelConfig::ToJson() const { return ::stability::ToJson(*this, Fields()); }

std::vector<std::string> ModelConfigFieldNames() { return FieldNames(Fields()); }

absl::StatusOr<ModelConfig> ConfigFromJson(const nlohmann::json& j) {
  ModelConfig c;
  if (absl::Status s = FromJson(j, Fields(), &c, "model config"); !s.ok()) return s;
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

std::vector<std::string> SizePresetNames() { return Keys(SizePresets()); }
std::vector<std::string> VariantPresetNames() { return Keys(Variants()); }

absl::Status ApplyVariant(const std::string& variant, ModelConfig* config) {
  auto it = Variants().find(variant);
  if (it == Variants().end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown variant \"", variant,
                                                   "\"; choose one of: ", absl::StrJoin(VariantPresetNames(), ", ")));
  }
  it->second(*config);
  config->variant = variant;
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> MakeConfig(const std::string& size, const std::string& variant) {
  auto it = SizePresets().find(size);
  if (it == SizePresets().end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown size preset \"", size,
                                                   "\"; choose one of: ", absl::StrJoin(SizePresetNames(), ", ")));
  }
  ModelConfig c;
  c.size = size;
  c.vocab_size = it->second.vocab_size;
  c.seq_len = it->second.seq_len;
  c.n_layer = it->second.n_layer;
  c.n_head = it->second.n_head;
  c.n_embd = it->second.n_embd;
  c.tie_embeddings = it->second.tie_embeddings;
  if (absl::Status s = ApplyVariant(variant, &c); !s.ok()) return s;
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

absl::StatusOr<ModelConfig> MakeConfig(const std::string& size, const std::string& variant,
                                       const nlohmann::json& overrides) {
  absl::StatusOr<ModelConfig> base = MakeConfig(size, variant);
  if (!base.ok()) return base.status();
  if (overrides.is_null()) return base;
  if (!overrides.is_object()) {
    return absl::InvalidArgumentError("config overrides must be a JSON object, got " + overrides.dump());
  }
  json merged = base->ToJson();
  for (auto it = overrides.begin(); it != overrides.end(); ++it) merged[it.key()] = it.value();
  return ConfigFromJson(merged);
}

std::vector<int64_t> ParameterSizes(const ModelConfig& c) {
  const int64_t C = c.n_embd, F = c.mlp_ratio * c.n_embd;
  const int64_t qkv_norm_width = c.per_head_norm ? c.head_dim() : C;
  std::vector<int64_t> sizes;
  auto norm = [&](int64_t width) {
    sizes.push_back(width);                                                     // gain
    if (c.norm == ops::NormKind::kLayerNorm && c.bias) sizes.push_back(width);  // bias
  };
  auto linear = [&](int64_t out, int64_t in) {
    sizes.push_back(out * in);
    if (c.bias) sizes.push_back(out);
    if (c.sigma_reparam) sizes.push_back(1);  // the gain
  };
  sizes.push_back(c.vocab_size * C);
  if (c.position == Position::kLearned) sizes.push_back(c.seq_len * C);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    if (c.n1) norm(C);
    linear(3 * C, C);
    if (c.qk_norm) norm(qkv_norm_width), norm(qkv_norm_width);
    if (c.v_norm) norm(qkv_norm_width);
    linear(C, C);
    if (c.proj_norm) norm(C);
    if (c.layer_scale) sizes.push_back(C);
    if (c.n2) norm(C);
    linear(F, C);
    linear(C, F);
    if (c.fc2_norm) norm(C);
    if (c.layer_scale) sizes.push_back(C);
  }
  norm(C);
  if (!c.tie_embeddings) sizes.push_back(c.vocab_size * C);
  return sizes;
}

int64_t ParameterCount(const ModelConfig& c) {
  int64_t total = 0;
  for (int64_t n : ParameterSizes(c)) total += n;
  return total;
}

int64_t GradientBufferFloats(const ModelConfig& c) {
  int64_t total = 0;
  for (int64_t n : ParameterSizes(c)) total += GradientSlot(n);
  return total;
}

}  // namespace stability::model
