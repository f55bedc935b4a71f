// Fuzzes the token shard reader and the loader over it: any bytes must open as a shard
// whose every token can be read, or give an error; a loader that accepts the shard must
// only ever yield ids inside the vocabulary. (This target found that uint32 tokens of a
// version-2 shard above 2^31 came out negative and passed the loader's vocabulary check.)
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "stability/data/loader.h"
#include "stability/data/shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/stability_shard_fuzz." + std::to_string(::getpid());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  absl::StatusOr<std::unique_ptr<stability::data::Shard>> s = stability::data::Shard::Open(path);
  if (!s.ok()) return 0;
  int64_t sum = 0;
  for (int64_t i = 0; i < (*s)->size(); ++i) sum += (**s)[i];
  constexpr int64_t kVocab = 50257;
  auto loader = stability::data::DataLoader::Open({path}, {.batch = 1, .seq = 2, .vocab_size = kVocab});
  if (loader.ok()) {
    stability::Tensor ids, targets;
    if ((*loader)->Next(&ids, &targets).ok()) {
      for (int i = 0; i < 2; ++i) {
        if (ids.i32()[i] < 0 || ids.i32()[i] >= kVocab || targets.i32()[i] < 0 || targets.i32()[i] >= kVocab) {
          __builtin_trap();
        }
      }
    }
  }
  return sum == -1 ? 1 : 0;
}
