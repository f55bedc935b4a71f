// Fuzzes the GPT-2 vocabulary readers: the input is encoder.json and vocab.bpe separated
// by a NUL byte. Whatever loads must encode and decode a fixed text without crashing.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "stability/data/gpt2_tokenizer.h"

namespace {

void Write(const std::string& path, const char* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string base = "/tmp/stability_gpt2_fuzz." + std::to_string(::getpid());
  const char* bytes = reinterpret_cast<const char*>(data);
  size_t split = 0;
  while (split < size && bytes[split] != '\0') ++split;
  Write(base + ".json", bytes, split);
  Write(base + ".bpe", bytes + std::min(split + 1, size), size - std::min(split + 1, size));
  auto t = stability::data::LoadGpt2Tokenizer(base + ".json", base + ".bpe");
  if (t.ok()) {
    auto ids = (*t)->Encode("Hello world! It's 2026.");
    if (ids.ok()) (void)(*t)->Decode(*ids);
  }
  return 0;
}
