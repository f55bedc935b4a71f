#include "cli/dump.h"

#include <cstdio>
#include <filesystem>

#include "absl/strings/str_join.h"
#include "cli/flags.h"
#include "nlohmann/json.hpp"
#include "stability/model/config.h"
#include "stability/model/dump.h"

namespace stability::cli {

int RunDump(int argc, char** argv) {
  const std::vector<FlagSpec> specs = {
      {"preset", "tiny", "size preset: " + absl::StrJoin(model::SizePresetNames(), ", ")},
      {"variant", "baseline", "stability method preset: " + absl::StrJoin(model::VariantPresetNames(), ", ")},
      {"config_override", "", "JSON object of model config fields on top of the presets, e.g. '{\"norm\":\"rmsnorm\"}'"},
      {"seed", "1", "seed of the parameters (and, plus one, of the token ids)"},
      {"batch", "2", "sequences in the batch (B)"},
      {"seq", "16", "tokens per sequence (T), at most the config's seq_len"},
      {"out", "", "the safetensors file to write (required; an existing file is kept unless --force)"},
      {"force", "false", "overwrite --out if it exists"},
  };
  absl::StatusOr<Flags> flags = Flags::Parse("dump", argc, argv, specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->help()) {
    std::printf("%s", Flags::Usage("dump", specs).c_str());
    return 0;
  }
  const auto fail = [](const std::string& msg) {
    std::fprintf(stderr, "stability dump: %s\n", msg.c_str());
    return 2;
  };
  const std::string out = flags->Get("out");
  if (out.empty()) return fail("--out=FILE is required (where to write the safetensors dump)");
  std::error_code ec;
  if (std::filesystem::exists(out, ec) && flags->Get("force") != "true") {
    return fail(out + " already exists; choose another --out or pass --force to overwrite it");
  }
  nlohmann::json overrides;
  if (!flags->Get("config_override").empty()) {
    overrides = nlohmann::json::parse(flags->Get("config_override"), nullptr, /*allow_exceptions=*/false);
    if (overrides.is_discarded()) return fail("--config_override is not valid JSON: " + flags->Get("config_override"));
  }
  absl::StatusOr<model::ModelConfig> config = model::MakeConfig(flags->Get("preset"), flags->Get("variant"), overrides);
  if (!config.ok()) return fail(std::string(config.status().message()));
  absl::StatusOr<int64_t> seed = flags->GetInt("seed"), batch = flags->GetInt("batch"), seq = flags->GetInt("seq");
  for (const auto* v : {&seed, &batch, &seq})
    if (!v->ok()) return fail(std::string(v->status().message()));
  if (absl::Status s = model::WriteDebugDump(*config, static_cast<uint64_t>(*seed), *batch, *seq, out); !s.ok()) {
    return fail(std::string(s.message()));
  }
  std::printf("wrote %s (%s / %s, %lld parameters)\n", out.c_str(), config->size.c_str(), config->variant.c_str(),
              static_cast<long long>(model::ParameterCount(*config)));
  return 0;
}

}  // namespace stability::cli
