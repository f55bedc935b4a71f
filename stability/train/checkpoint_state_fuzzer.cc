// Fuzzes the checkpoint state reader (state.json): any bytes must parse into a typed state
// or give an error naming the bad field, never throw or crash.
#include <cstdint>
#include <string>

#include "stability/train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j =
      nlohmann::json::parse(std::string(reinterpret_cast<const char*>(data), size), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  (void)stability::train::ParseCheckpointState(j);
  return 0;
}
