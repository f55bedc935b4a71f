#include "cli/run_flags.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_join.h"
#include "stability/base/json_fields.h"
#include "stability/base/paths.h"

namespace stability::cli {
namespace {

bool Contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Help lines for the generated per-field flags.
const std::map<std::string, std::string>& FieldHelp() {
  static const std::map<std::string, std::string> help = {
      {"data", "folder of train_*.bin/val_*.bin shards; empty = the bundled corpus (prepared on first use)"},
      {"out", "run folder; empty = runs/<preset>-<variant>-lr<lr>-seed<seed>"},
      {"device", "auto | cpu | cuda | cuda:N (auto: a GPU when present)"},
      {"precision", "fp32 | bf16: bf16 matrix products with fp32 accumulation, master weights and optimizer (GPU)"},
      {"attention",
       "auto | gemm | fused: fused recomputes the T×T probabilities in tiles (GPU; tensor cores in bf16); auto = fused "
       "in bf16"},
      {"threads", "OpenMP threads; 0 = all cores"},
      {"steps", "optimizer steps"},
      {"batch", "sequences per micro-batch"},
      {"seq", "tokens per sequence; 0 = the model's seq_len"},
      {"grad_accum", "micro-batches per step"},
      {"lr", "peak learning rate"},
      {"min_lr", "learning rate at the end of the decay"},
      {"warmup", "linear warmup steps"},
      {"schedule", "decay after warmup: cosine | linear | constant"},
      {"beta1", "AdamW beta1"},
      {"beta2", "AdamW beta2"},
      {"eps", "AdamW epsilon"},
      {"weight_decay", "decoupled weight decay (linear weights only unless --decay_all)"},
      {"decay_all", "also decay norms, biases and embeddings"},
      {"clip", "clip the gradient to this global L2 norm; 0 = off"},
      {"eval_interval", "validate every N steps (and at the end); 0 = only at the end"},
      {"eval_batches", "validation batches per evaluation"},
      {"telemetry_interval", "record telemetry every N steps"},
      {"profile_step", "break step N's time down by kernel (GPU) or op (CPU) into <out>/kernel_profile.md (0 = off)"},
      {"checkpoint_interval", "checkpoint every N steps (and at the end); 0 = only at the end"},
      {"keep_checkpoints", "checkpoints kept; 0 = write none (a benchmark's run: it cannot be resumed)"},
      {"divergence_factor",
       "diverged when loss > factor x loss at init for --divergence_patience steps after warmup; 0 = off"},
      {"divergence_patience", "steps above the threshold before a run counts as diverged"},
      {"spike_skip_factor",
       "skip an update whose loss or grad norm is this many std devs above the recent mean; 0 = off"},
      {"spike_window", "updates in the spike-protection window"},
      {"zero", "ZeRO stage with several ranks: 0 = off, 1 = shard the AdamW moments over the ranks"},
      {"seed", "seed of the parameters and of the data order"},
  };
  return help;
}

}  // namespace

std::vector<FlagSpec> RunFlagSpecs() {
  const nlohmann::json default_train = train::TrainConfig().ToJson();
  std::vector<FlagSpec> specs = {
      {"preset", "tiny", "size preset: " + absl::StrJoin(model::SizePresetNames(), ", ")},
      {"variant", "baseline", "stability method: " + absl::StrJoin(model::VariantPresetNames(), ", ")},
      {"config", "",
       "a run config JSON ({\"model\": {...}, \"train\": {...}}, e.g. a run's config.json); flags override it"},
  };
  for (const std::string& name : train::TrainConfigFieldNames()) {
    const nlohmann::json& v = default_train[name];
    specs.push_back({name, v.is_string() ? v.get<std::string>() : v.dump(),
                     FieldHelp().count(name) ? FieldHelp().at(name) : ""});
  }
  for (const std::string& name : model::ModelConfigFieldNames()) {
    if (name == "size" || name == "variant") continue;
    specs.push_back({name, "", "model switch (README: Switches); default from --preset/--variant"});
  }
  return specs;
}

nlohmann::json ExplicitRunFlags(const Flags& flags, int argc, char** argv) {
  const nlohmann::json default_train = train::TrainConfig().ToJson();
  nlohmann::json out = {{"model", nlohmann::json::object()}, {"train", nlohmann::json::object()}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) continue;
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    if (Contains(model::ModelConfigFieldNames(), name) && name != "size" && name != "variant") {
      out["model"][name] = FlagValueToJson(flags.Get(name));
    } else if (Contains(train::TrainConfigFieldNames(), name)) {
      out["train"][name] = default_train[name].is_string() ? nlohmann::json(flags.Get(name)) : FlagValueToJson(flags.Get(name));
    }
  }
  return out;
}

absl::StatusOr<train::RunConfig> RunConfigFromFlags(const Flags& flags, int argc, char** argv) {
  nlohmann::json model_overrides = nlohmann::json::object(), train_json = nlohmann::json::object();
  std::string preset = flags.Get("preset"), variant = flags.Get("variant");
  if (!flags.Get("config").empty()) {
    const std::string path = ResolveUserPath(flags.Get("config"));
    std::ifstream in(path);
    if (!in) return absl::NotFoundError("cannot open --config=" + path);
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
    absl::StatusOr<train::RunConfig> rc =
        j.is_discarded() ? absl::InvalidArgumentError("not valid JSON") : train::RunConfigFromJson(j);
    if (!rc.ok()) return absl::InvalidArgumentError(path + ": " + std::string(rc.status().message()));
    model_overrides = rc->model.ToJson();
    train_json = rc->train.ToJson();
    preset = flags.Get("preset") != "tiny" ? flags.Get("preset") : rc->model.size;
    variant = flags.Get("variant") != "baseline" ? flags.Get("variant") : rc->model.variant;
    model_overrides.erase("size");
    model_overrides.erase("variant");
  }
  const nlohmann::json given = ExplicitRunFlags(flags, argc, argv);
  model_overrides.update(given["model"]);
  train_json.update(given["train"]);
  absl::StatusOr<model::ModelConfig> mc = model::MakeConfig(preset, variant, model_overrides);
  if (!mc.ok()) return mc.status();
  train::RunConfig rc;
  rc.model = *mc;
  if (absl::Status s = train::ApplyTrainJson(train_json, &rc.train); !s.ok()) return s;
  return rc;
}

}  // namespace stability::cli
