// Fuzzes the token shard reader: any bytes must open as a valid shard whose every token
// can be read, or give an error.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "stability/data/shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/stability_shard_fuzz." + std::to_string(::getpid());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  absl::StatusOr<std::unique_ptr<stability::data::Shard>> s = stability::data::Shard::Open(path);
  if (s.ok()) {
    int64_t sum = 0;
    for (int64_t i = 0; i < (*s)->size(); ++i) sum += (**s)[i];
    if (sum < 0) __builtin_trap();  // tokens are unsigned on disk
  }
  return 0;
}
