// Fuzzes ReadSafetensors (checkpoints, dumps): any bytes must give a tensor list or an
// error, never a crash, a hang or an allocation the file cannot back.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "stability/base/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/stability_safetensors_fuzz." + std::to_string(::getpid());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  absl::StatusOr<stability::SafetensorsFile> r = stability::ReadSafetensors(path);
  if (r.ok()) {
    for (const auto& [name, t] : r->tensors) {
      if (t.nbytes() > size) __builtin_trap();  // a tensor larger than the file: a bounds bug
    }
  }
  return 0;
}
