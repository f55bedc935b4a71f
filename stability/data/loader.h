// DataLoader: batches of (ids, targets) int32 [B, T] from token shards.
//
// The shards are one token stream, cut into windows of T + 1 tokens starting every T
// tokens (window w covers [w·T, w·T + T]); ids are a window's first T tokens, targets its
// last T. Training shuffles the windows every epoch with Rng(seed, epoch) (Fisher–Yates);
// evaluation reads them in order. Batch b of an epoch takes windows b·B .. b·B + B − 1 of
// the order, of which rank r of `world` data-parallel ranks reads its own slice. The
// position (epoch, next window) is saved in checkpoints and restored exactly.
#ifndef STABILITY_DATA_LOADER_H_
#define STABILITY_DATA_LOADER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "stability/base/tensor.h"
#include "stability/data/shard.h"

namespace stability::data {

struct LoaderPosition {
  int64_t epoch = 0;
  int64_t next = 0;  // index into the epoch's window order
  bool operator==(const LoaderPosition&) const = default;
};

struct LoaderOptions {
  int64_t batch = 8;  // per rank
  int64_t seq = 64;
  bool shuffle = true;
  uint64_t seed = 1;
  int rank = 0;
  int world = 1;
  int64_t vocab_size = 0;  // > 0: every token is checked to be below it
};

class DataLoader {
 public:
  // `paths`: shard files in order (see ListShards).
  static absl::StatusOr<std::unique_ptr<DataLoader>> Open(const std::vector<std::string>& paths,
                                                          const LoaderOptions& options);
  // Fills ids and targets ([batch, seq] int32), moving to the next epoch when needed.
  absl::Status Next(Tensor* ids, Tensor* targets);
  LoaderPosition position() const { return pos_; }
  absl::Status set_position(const LoaderPosition& pos);
  int64_t windows() const { return windows_; }
  int64_t tokens() const { return total_; }
  int64_t batches_per_epoch() const { return windows_ / (options_.batch * options_.world); }

 private:
  DataLoader() = default;
  void MakeOrder();
  int32_t Token(int64_t i) const;

  LoaderOptions options_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<int64_t> starts_;  // stream offset of each shard
  int64_t total_ = 0, windows_ = 0;
  LoaderPosition pos_;
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
};

// The shards of one split in a folder made by `prepare`: DIR/<split>_*.bin, sorted.
absl::StatusOr<std::vector<std::string>> ListShards(const std::string& dir, const std::string& split);

}  // namespace stability::data

#endif  // STABILITY_DATA_LOADER_H_
