// Fuzzes the config and sweep file parsers (a run's config.json, `--config`, `--sweep_file`):
// any JSON must give a validated config or an error, never an exception, a crash or an
// unbounded expansion.
#include <cstdint>
#include <string>

#include "stability/train/sweep.h"
#include "stability/train/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j =
      nlohmann::json::parse(std::string(reinterpret_cast<const char*>(data), size), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  (void)stability::train::RunConfigFromJson(j);
  (void)stability::train::ExpandSweep(j);
  return 0;
}
