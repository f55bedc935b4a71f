// metrics.jsonl: one JSON object per line, flushed line by line, so a crash leaves at most
// one torn last line, which the reader reports and skips.
#ifndef STABILITY_TRAIN_METRICS_H_
#define STABILITY_TRAIN_METRICS_H_

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace stability::train {

class MetricsWriter {
 public:
  // Appends to `path`; with keep_through_step >= 0 first drops rows whose "step" is larger
  // (a resumed run rewrites the steps after its checkpoint).
  static absl::StatusOr<MetricsWriter> Open(const std::string& path, int64_t keep_through_step = -1);
  MetricsWriter(MetricsWriter&& other) noexcept : file_(other.file_) { other.file_ = nullptr; }
  ~MetricsWriter();
  absl::Status Write(const nlohmann::json& row);

 private:
  explicit MetricsWriter(FILE* f) : file_(f) {}
  FILE* file_;
};

struct MetricsFile {
  std::vector<nlohmann::json> rows;
  bool torn_last_line = false;  // the last line was incomplete (skipped)
};

absl::StatusOr<MetricsFile> ReadMetrics(const std::string& path);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_METRICS_H_
