#include "cli/train.h"

#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/common.h"
#include "cli/flags.h"
#include "cli/run_flags.h"
#include "stability/base/json_fields.h"
#include "stability/base/paths.h"
#include "stability/dist/communicator.h"
#include "stability/data/prepare.h"
#include "stability/train/trainer.h"

namespace stability::cli {
int RunTrain(int argc, char** argv) {
  std::vector<FlagSpec> specs = RunFlagSpecs();
  specs.push_back({"resume", "false", "continue the run in --out from its latest checkpoint"});
  specs.push_back({"stop_after", "0", "stop after this step with a checkpoint, as if interrupted (--resume continues)"});
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
  absl::StatusOr<train::RunConfig> config = RunConfigFromFlags(*flags, argc, argv);
  if (!config.ok()) return Fail("train", std::string(config.status().message()));
  train::RunConfig& rc = *config;

  absl::StatusOr<int64_t> stop_after = flags->GetInt("stop_after");
  if (!stop_after.ok()) return Fail("train", std::string(stop_after.status().message()));
  // Started by mpirun/srun with several ranks: data parallel over MPI.
  absl::StatusOr<std::unique_ptr<dist::Communicator>> comm = dist::CommunicatorFromEnvironment();
  if (!comm.ok()) return Fail("train", std::string(comm.status().message()));
  const bool root = (*comm)->is_root();
  const std::atomic<bool>* stop = InstallStopHandler();
  train::TrainOptions options{.comm = comm->get(), .resume = flags->Get("resume") == "true",
                              .stop_after = *stop_after, .progress = stderr, .stop_requested = stop};
  if (root) {
    std::fprintf(stderr, "training %s / %s (%lld parameters), --device=%s", rc.model.size.c_str(),
                 rc.model.variant.c_str(), static_cast<long long>(model::ParameterCount(rc.model)),
                 rc.train.device.c_str());
    if ((*comm)->size() > 1) {
      std::fprintf(stderr, ", %d ranks (%s%s)", (*comm)->size(), (*comm)->name().c_str(),
                   rc.train.zero == 1 ? ", ZeRO-1: AdamW moments sharded" : "");
    }
    std::fprintf(stderr, "\n");
  }
  absl::StatusOr<nlohmann::json> summary = train::RunTraining(rc, options);
  if (!summary.ok()) {
    const std::string prefix = (*comm)->size() > 1 ? "rank " + std::to_string((*comm)->rank()) + ": " : "";
    return Fail("train", prefix + std::string(summary.status().message()));
  }
  const nlohmann::json& s = *summary;
  if (!root) return s["diverged"].get<bool>() ? 3 : 0;
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
