#include "stability/train/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace stability::train {

absl::StatusOr<MetricsFile> ReadMetrics(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  MetricsFile out;
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    ++line_no;
    if (nl == std::string::npos) {  // no newline: a write cut short
      out.torn_last_line = true;
      break;
    }
    nlohmann::json row = nlohmann::json::parse(text.substr(pos, nl - pos), nullptr, false);
    if (row.is_discarded() || !row.is_object()) {
      return absl::DataLossError(absl::StrCat(path, ":", line_no, ": not a JSON object"));
    }
    out.rows.push_back(std::move(row));
    pos = nl + 1;
  }
  return out;
}

absl::StatusOr<MetricsWriter> MetricsWriter::Open(const std::string& path, int64_t keep_through_step) {
  if (keep_through_step >= 0 && ::access(path.c_str(), F_OK) == 0) {
    absl::StatusOr<MetricsFile> old = ReadMetrics(path);
    if (!old.ok()) return old.status();
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      for (const nlohmann::json& row : old->rows)
        if (row.value("step", int64_t{0}) <= keep_through_step) out << row.dump() << "\n";
      if (!out.flush()) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::UnavailableError(absl::StrCat("cannot replace ", path, ": ", std::strerror(errno)));
    }
  }
  FILE* f = std::fopen(path.c_str(), "ab");
  if (f == nullptr) return absl::UnavailableError(absl::StrCat("cannot open ", path, " for writing: ", std::strerror(errno)));
  return MetricsWriter(f);
}

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status MetricsWriter::Write(const nlohmann::json& row) {
  // NaN/inf are not JSON; a diverged step records them as null (the summary says why).
  const std::string line = row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    return absl::UnavailableError(absl::StrCat("writing metrics: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace stability::train
