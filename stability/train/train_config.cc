#include "stability/train/train_config.h"

#include "absl/strings/str_cat.h"
#include "stability/base/json_fields.h"
#include "stability/optim/schedule.h"

namespace stability::train {
namespace {

const JsonFields<TrainConfig>& Fields() {
#define F(f) STABILITY_JSON_FIELD(TrainConfig, f)
  static const JsonFields<TrainConfig> fields = {
      F(data),
      F(out),
      F(device),
      F(precision),
      F(attention),
      F(threads),
      F(steps),
      F(batch),
      F(seq),
      F(grad_accum),
      F(lr),
      F(min_lr),
      F(warmup),
      F(schedule),
      F(beta1),
      F(beta2),
      F(eps),
      F(weight_decay),
      F(decay_all),
      F(clip),
      F(eval_interval),
      F(eval_batches),
      F(telemetry_interval),
      F(checkpoint_interval),
      F(keep_checkpoints),
      F(profile_step),
      F(divergence_factor),
      F(divergence_patience),
      F(spike_skip_factor),
      F(spike_window),
      F(zero),
      F(seed),
  };
#undef F
  return fields;
}

}  // namespace

absl::Status TrainConfig::Validate() const {
  const auto bad = [](const std::string& m) { return absl::InvalidArgumentError("invalid training config: " + m); };
  const std::pair<const char*, int64_t> positive[] = {{"steps", steps},
                                                      {"batch", batch},
                                                      {"grad_accum", grad_accum},
                                                      {"eval_batches", eval_batches},
                                                      {"telemetry_interval", telemetry_interval},
                                                      {"divergence_patience", divergence_patience},
                                                      {"spike_window", spike_window}};
  for (const auto& [name, v] : positive)
    if (v < 1) return bad(absl::StrCat("--", name, "=", v, " must be at least 1"));
  const std::pair<const char*, int64_t> non_negative[] = {{"seq", seq},
                                                          {"threads", threads},
                                                          {"warmup", warmup},
                                                          {"eval_interval", eval_interval},
                                                          {"checkpoint_interval", checkpoint_interval},
                                                          {"keep_checkpoints", keep_checkpoints},
                                                          {"profile_step", profile_step}};
  for (const auto& [name, v] : non_negative)
    if (v < 0) return bad(absl::StrCat("--", name, "=", v, " must be >= 0"));
  if (!(lr > 0)) return bad(absl::StrCat("--lr=", lr, " must be positive"));
  if (!(min_lr >= 0 && min_lr <= lr)) return bad(absl::StrCat("--min_lr=", min_lr, " must be in [0, lr = ", lr, "]"));
  optim::Decay decay;
  if (absl::Status s = optim::ParseDecay(schedule, &decay); !s.ok()) return bad(std::string(s.message()));
  if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1)) {
    return bad(absl::StrCat("--beta1=", beta1, " and --beta2=", beta2, " must be in [0, 1)"));
  }
  if (!(eps > 0)) return bad(absl::StrCat("--eps=", eps, " must be positive"));
  if (!(weight_decay >= 0)) return bad(absl::StrCat("--weight_decay=", weight_decay, " must be >= 0"));
  if (!(clip >= 0)) return bad(absl::StrCat("--clip=", clip, " must be >= 0 (0 = off)"));
  if (!(spike_skip_factor >= 0)) return bad(absl::StrCat("--spike_skip_factor=", spike_skip_factor, " must be >= 0 (0 = off)"));
  if (zero != 0 && zero != 1) return bad(absl::StrCat("--zero=", zero, " must be 0 (off) or 1 (shard the AdamW moments)"));
  if (!(divergence_factor >= 0)) return bad(absl::StrCat("--divergence_factor=", divergence_factor, " must be >= 0"));
  if (precision != "fp32" && precision != "bf16") {
    return bad(absl::StrCat("--precision=", precision, " must be fp32 or bf16"));
  }
  if (attention != "auto" && attention != "gemm" && attention != "fused") {
    return bad(absl::StrCat("--attention=", attention, " must be auto, gemm or fused"));
  }
  if (device != "auto" && device != "cpu" && device.rfind("cuda", 0) != 0) {
    return bad(absl::StrCat("--device=", device, " must be auto, cpu, cuda or cuda:N"));
  }
  return absl::OkStatus();
}

nlohmann::json TrainConfig::ToJson() const { return ::stability::ToJson(*this, Fields()); }

std::vector<std::string> TrainConfigFieldNames() { return FieldNames(Fields()); }

absl::Status ApplyTrainJson(const nlohmann::json& j, TrainConfig* config) {
  if (absl::Status s = FromJson(j, Fields(), config, "training config"); !s.ok()) return s;
  return config->Validate();
}

absl::StatusOr<RunConfig> RunConfigFromJson(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("model") || !j.contains("train")) {
    return absl::InvalidArgumentError("a run config is a JSON object {\"model\": {...}, \"train\": {...}}");
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "model" && it.key() != "train") {
      return absl::InvalidArgumentError(absl::StrCat("unknown run config section \"", it.key(), "\" (model, train)"));
    }
  }
  RunConfig rc;
  absl::StatusOr<model::ModelConfig> m = model::ConfigFromJson(j["model"]);
  if (!m.ok()) return m.status();
  rc.model = *m;
  if (absl::Status s = ApplyTrainJson(j["train"], &rc.train); !s.ok()) return s;
  return rc;
}

}  // namespace stability::train
