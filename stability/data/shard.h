// Token shards in llm.c's .bin layout, so shards made by llm.c's data scripts (FineWeb,
// TinyStories, ...) load as they are:
//
//   int32 header[256]: [0] = 20240520 (magic), [1] = version, [2] = number of tokens
//   tokens: uint16 (version 1) or uint32 (version 2, for vocabularies over 65,536)
//
// Writing is atomic (temp file + fsync + rename). Reading memory-maps the file after
// checking magic, version and that the size is exactly header + count × token size.
#ifndef STABILITY_DATA_SHARD_H_
#define STABILITY_DATA_SHARD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace stability::data {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int64_t kShardHeaderInts = 256;

// Version 1 when every token fits in uint16 (vocab_size <= 65536), else version 2.
absl::Status WriteShard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size);

class Shard {
 public:
  static absl::StatusOr<std::unique_ptr<Shard>> Open(const std::string& path);
  ~Shard();
  int64_t size() const { return count_; }
  int version() const { return version_; }
  const std::string& path() const { return path_; }
  int32_t operator[](int64_t i) const {
    return version_ == 1 ? static_cast<const uint16_t*>(tokens_)[i] : static_cast<int32_t>(static_cast<const uint32_t*>(tokens_)[i]);
  }

 private:
  Shard() = default;
  std::string path_;
  int version_ = 1;
  int64_t count_ = 0;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const void* tokens_ = nullptr;
};

}  // namespace stability::data

#endif  // STABILITY_DATA_SHARD_H_
