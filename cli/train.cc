#include "cli/train.h"

#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "stability/base/json_fields.h"
#include "stability/base/paths.h"
#include "stability/data/prepare.h"
#include "stability/train/trainer.h"

namespace stability::cli {
namespace {

bool Contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Fail(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "stability %s: %s\n", command.c_str(), message.c_str());
  return 2;
}

// Help lines for the generated per-field flags.
const std::map<std::string, std::string>& FieldHelp() {
  static const std::map<std::string, std::string> help = {
      {"data", "folder of train_*.bin/val_*.bin shards; empty = the bundled corpus (prepared on first use)"},
      {"out", "run folder; empty = runs/<preset>-<variant>-lr<lr>-seed<seed>"},
      {"device", "auto | cpu | cuda | cuda:N (auto: a GPU when present)"},
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
      {"checkpoint_interval", "checkpoint every N steps (and at the end); 0 = only at the end"},
      {"keep_checkpoints", "checkpoints kept"},
      {"divergence_factor", "diverged when loss > factor x loss at init for --divergence_patience steps after warmup; 0 = off"},
      {"divergence_patience", "steps above the threshold before a run counts as diverged"},
      {"seed", "seed of the parameters and of the data order"},
  };
  return help;
}

}  // namespace

int RunTrain(int argc, char** argv) {
  const train::TrainConfig defaults;
  const nlohmann::json default_train = defaults.ToJson();
  std::vector<FlagSpec> specs = {
      {"preset", "tiny", "size preset: " + absl::StrJoin(model::SizePresetNames(), ", ")},
      {"variant", "baseline", "stability method: " + absl::StrJoin(model::VariantPresetNames(), ", ")},
      {"config", "", "a run config JSON ({\"model\": {...}, \"train\": {...}}, e.g. a run's config.json); flags override it"},
      {"resume", "false", "continue the run in --out from its latest checkpoint"},
      {"stop_after", "0", "stop after this step with a checkpoint, as if interrupted (--resume continues)"},
  };
  for (const std::string& name : train::TrainConfigFieldNames()) {
    const nlohmann::json& v = default_train[name];
    specs.push_back({name, v.is_string() ? v.get<std::string>() : v.dump(), FieldHelp().count(name) ? FieldHelp().at(name) : ""});
  }
  const model::ModelConfig model_defaults;
  for (const std::string& name : model::ModelConfigFieldNames()) {
    if (name == "size" || name == "variant") continue;
    specs.push_back({name, "", "model switch (README: Switches); default from --preset/--variant"});
  }
  absl::StatusOr<Flags> flags = Flags::Parse("train", argc, argv, specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n(stability train --help lists them)\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->help()) {
    std::printf("Train a GPT on CPU (or GPU): with no flags, the tiny preset on the bundled corpus.\n\n%s",
                Flags::Usage("train", specs).c_str());
    return 0;
  }

  // Start from --config (if any), then presets, then flags.
  nlohmann::json model_overrides = nlohmann::json::object(), train_json = nlohmann::json::object();
  std::string preset = flags->Get("preset"), variant = flags->Get("variant");
  if (!flags->Get("config").empty()) {
    const std::string path = ResolveUserPath(flags->Get("config"));
    std::ifstream in(path);
    if (!in) return Fail("train", "cannot open --config=" + path);
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
    absl::StatusOr<train::RunConfig> rc = j.is_discarded() ? absl::InvalidArgumentError("not valid JSON")
                                                           : train::RunConfigFromJson(j);
    if (!rc.ok()) return Fail("train", path + ": " + std::string(rc.status().message()));
    model_overrides = rc->model.ToJson();
    train_json = rc->train.ToJson();
    preset = flags->Get("preset") != "tiny" ? flags->Get("preset") : rc->model.size;
    variant = flags->Get("variant") != "baseline" ? flags->Get("variant") : rc->model.variant;
    model_overrides.erase("size");
    model_overrides.erase("variant");
  }
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) continue;
    const std::string name = arg.substr(2, arg.find('=') == std::string::npos ? std::string::npos : arg.find('=') - 2);
    const std::string value = flags->Get(name);
    if (Contains(model::ModelConfigFieldNames(), name) && name != "size" && name != "variant") {
      model_overrides[name] = FlagValueToJson(value);
    } else if (Contains(train::TrainConfigFieldNames(), name)) {
      train_json[name] = default_train[name].is_string() ? nlohmann::json(value) : FlagValueToJson(value);
    }
  }
  absl::StatusOr<model::ModelConfig> mc = model::MakeConfig(preset, variant, model_overrides);
  if (!mc.ok()) return Fail("train", std::string(mc.status().message()));
  train::RunConfig rc;
  rc.model = *mc;
  if (absl::Status s = train::ApplyTrainJson(train_json, &rc.train); !s.ok()) return Fail("train", std::string(s.message()));

  absl::StatusOr<int64_t> stop_after = flags->GetInt("stop_after");
  if (!stop_after.ok()) return Fail("train", std::string(stop_after.status().message()));
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  train::TrainOptions options{.resume = flags->Get("resume") == "true", .stop_after = *stop_after,
                              .progress = stderr, .stop_requested = &g_stop};
  std::fprintf(stderr, "training %s / %s (%lld parameters) on cpu\n", rc.model.size.c_str(), rc.model.variant.c_str(),
               static_cast<long long>(model::ParameterCount(rc.model)));
  absl::StatusOr<nlohmann::json> summary = train::RunTraining(rc, options);
  if (!summary.ok()) return Fail("train", std::string(summary.status().message()));
  const nlohmann::json& s = *summary;
  std::printf("\nrun: %s\n", s["run"].get<std::string>().c_str());
  std::printf("steps: %lld%s, %.1f s, %.0f tokens/s\n", (long long)s["steps"].get<int64_t>(),
              s["finished"].get<bool>() ? "" : " (stopped; --resume continues)", s["wall_time_s"].get<double>(),
              s["tokens_per_s"].get<double>());
  if (s["diverged"].get<bool>()) {
    std::printf("DIVERGED at step %lld: %s\n", (long long)s["diverged_step"].get<int64_t>(),
                s["diverged_reason"].get<std::string>().c_str());
  }
  std::printf("loss: %.4f at init -> %.4f train", s["loss_at_init"].get<double>(),
              s["final_train_loss"].is_number() ? s["final_train_loss"].get<double>() : NAN);
  if (s["final_val_loss"].is_number()) {
    std::printf(", %.4f val (perplexity %.2f)", s["final_val_loss"].get<double>(), s["final_val_ppl"].get<double>());
  }
  std::printf("\n");
  return s["diverged"].get<bool>() ? 3 : 0;
}

int RunPrepare(int argc, char** argv) {
  const std::vector<FlagSpec> specs = {
      {"input", "", "text files or folders (their *.txt files), comma-separated; empty = the bundled corpus"},
      {"out", "", "output folder for train_*.bin, val_*.bin and prepare.json (required)"},
      {"tokenizer", "gpt2", "gpt2 | gpt2:DIR | bytes | sp:MODEL_FILE | sp_train:VOCAB_SIZE"},
      {"val_fraction", "0.05", "the last fraction of each document's tokens that goes to val"},
      {"shard_tokens", "100000000", "tokens per shard file"},
      {"force", "false", "replace shards already in --out"},
  };
  absl::StatusOr<Flags> flags = Flags::Parse("prepare", argc, argv, specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->help()) {
    std::printf("Text -> token shards (llm.c .bin layout).\n\n%s", Flags::Usage("prepare", specs).c_str());
    return 0;
  }
  data::PrepareOptions o;
  if (flags->Get("input").empty()) {
    const BundledData d = FindBundledData();
    if (!d.corpus_present) return Fail("prepare", "the bundled corpus is missing; run `bash tools/setup.sh` or pass --input");
    o.inputs = {d.corpus_dir};
  } else {
    for (absl::string_view p : absl::StrSplit(flags->Get("input"), ',')) o.inputs.push_back(ResolveUserPath(std::string(p)));
  }
  if (flags->Get("out").empty()) return Fail("prepare", "--out=DIR is required");
  o.out_dir = ResolveUserPath(flags->Get("out"));
  o.tokenizer = flags->Get("tokenizer");
  if (o.tokenizer.rfind("sp:", 0) == 0) o.tokenizer = "sp:" + ResolveUserPath(o.tokenizer.substr(3));
  if (o.tokenizer.rfind("gpt2:", 0) == 0) o.tokenizer = "gpt2:" + ResolveUserPath(o.tokenizer.substr(5));
  nlohmann::json vf = FlagValueToJson(flags->Get("val_fraction"));
  absl::StatusOr<int64_t> shard_tokens = flags->GetInt("shard_tokens");
  if (!vf.is_number()) return Fail("prepare", "--val_fraction must be a number");
  if (!shard_tokens.ok()) return Fail("prepare", std::string(shard_tokens.status().message()));
  o.val_fraction = vf.get<double>();
  o.shard_tokens = *shard_tokens;
  o.force = flags->Get("force") == "true";
  o.progress = [](int64_t done, int64_t total, int64_t tokens) {
    const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(total, 1));
    std::fprintf(stderr, "\r[%s%s] %lld/%lld documents, %lld tokens", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), (long long)done, (long long)total, (long long)tokens);
  };
  absl::StatusOr<data::PrepareSummary> s = data::Prepare(o);
  std::fprintf(stderr, "\n");
  if (!s.ok()) return Fail("prepare", std::string(s.status().message()));
  std::printf("%lld documents (%lld bytes) -> %lld train tokens in %lld shard(s), %lld val tokens in %lld shard(s)\n",
              (long long)s->documents, (long long)s->bytes, (long long)s->train_tokens, (long long)s->train_shards,
              (long long)s->val_tokens, (long long)s->val_shards);
  std::printf("tokenizer %s, vocabulary %lld\n", s->tokenizer.c_str(), (long long)s->vocab_size);
  for (const std::string& f : s->latin1_converted) std::printf("converted from ISO-8859-1: %s\n", f.c_str());
  std::printf("wrote %s\n", o.out_dir.c_str());
  return 0;
}

}  // namespace stability::cli
