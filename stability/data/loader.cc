#include "stability/data/loader.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "stability/base/rng.h"

namespace stability::data {

absl::StatusOr<std::unique_ptr<DataLoader>> DataLoader::Open(const std::vector<std::string>& paths,
                                                             const LoaderOptions& options) {
  if (paths.empty()) return absl::InvalidArgumentError("DataLoader: no shard files");
  if (options.batch < 1 || options.seq < 1 || options.world < 1 || options.rank < 0 || options.rank >= options.world) {
    return absl::InvalidArgumentError(absl::StrCat("DataLoader: bad batch ", options.batch, ", seq ", options.seq,
                                                   ", rank ", options.rank, " of ", options.world));
  }
  std::unique_ptr<DataLoader> d(new DataLoader);
  d->options_ = options;
  for (const std::string& p : paths) {
    absl::StatusOr<std::unique_ptr<Shard>> s = Shard::Open(p);
    if (!s.ok()) return s.status();
    if (options.vocab_size > 0) {
      for (int64_t i = 0; i < (*s)->size(); ++i) {
        if ((**s)[i] < 0 || (**s)[i] >= options.vocab_size) {  // negative: a v2 token beyond int32
          return absl::InvalidArgumentError(absl::StrCat("token shard ", p, ": token ", (**s)[i], " at ", i,
                                                         " is outside the model's vocabulary (vocab_size = ",
                                                         options.vocab_size, "); was it made with another tokenizer?"));
        }
      }
    }
    d->starts_.push_back(d->total_);
    d->total_ += (*s)->size();
    d->shards_.push_back(std::move(*s));
  }
  d->windows_ = d->total_ > 0 ? (d->total_ - 1) / options.seq : 0;
  if (d->batches_per_epoch() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("DataLoader: ", d->total_, " tokens give ", d->windows_,
                                                   " windows of ", options.seq + 1, " tokens, fewer than one batch of ",
                                                   options.batch * options.world,
                                                   "; use a smaller --batch/--seq or more data"));
  }
  return d;
}

int32_t DataLoader::Token(int64_t i) const {
  const auto it = std::upper_bound(starts_.begin(), starts_.end(), i) - 1;
  const size_t s = it - starts_.begin();
  return (*shards_[s])[i - *it];
}

void DataLoader::MakeOrder() {
  order_.resize(windows_);
  for (int64_t w = 0; w < windows_; ++w) order_[w] = w;
  if (options_.shuffle) {
    Rng rng(options_.seed * 1000003ull + static_cast<uint64_t>(pos_.epoch));
    for (int64_t i = windows_ - 1; i > 0; --i) std::swap(order_[i], order_[rng.Below(i + 1)]);
  }
  order_epoch_ = pos_.epoch;
}

absl::Status DataLoader::set_position(const LoaderPosition& pos) {
  if (pos.epoch < 0 || pos.next < 0 || pos.next > windows_) {
    return absl::InvalidArgumentError(absl::StrCat("DataLoader: position (epoch ", pos.epoch, ", window ", pos.next,
                                                   ") is outside this data (", windows_, " windows)"));
  }
  pos_ = pos;
  return absl::OkStatus();
}

absl::Status DataLoader::Next(Tensor* ids, Tensor* targets) {
  const int64_t B = options_.batch, T = options_.seq, per_step = B * options_.world;
  if (pos_.next + per_step > windows_) {
    ++pos_.epoch;
    pos_.next = 0;
  }
  if (order_epoch_ != pos_.epoch) MakeOrder();
  if (!ids->defined() || ids->shape() != Shape{B, T}) *ids = Tensor::Empty({B, T}, DType::kI32);
  if (!targets->defined() || targets->shape() != Shape{B, T}) *targets = Tensor::Empty({B, T}, DType::kI32);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t w = order_[pos_.next + options_.rank * B + b];
    for (int64_t t = 0; t < T; ++t) {
      ids->i32()[b * T + t] = Token(w * T + t);
      targets->i32()[b * T + t] = Token(w * T + t + 1);
    }
  }
  pos_.next += per_step;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ListShards(const std::string& dir, const std::string& split) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("data folder ", dir, " not found (make one with `stability prepare`)"));
  }
  std::vector<std::string> paths;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(split + "_", 0) == 0 && e.path().extension() == ".bin") paths.push_back(e.path().string());
  }
  std::sort(paths.begin(), paths.end());
  if (paths.empty()) {
    return absl::NotFoundError(absl::StrCat("no ", split, "_*.bin shards in ", dir, " (make them with `stability prepare`)"));
  }
  return paths;
}

}  // namespace stability::data
