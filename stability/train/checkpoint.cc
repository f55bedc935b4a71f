#include "stability/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "stability/base/checksum.h"

namespace stability::train {
namespace fs = std::filesystem;

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", err));
  }
  return absl::OkStatus();
}

namespace {

void SyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::vector<std::string> StepDirs(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step_", 0) == 0 && name.find(".tmp") == std::string::npos) {
      out.push_back(e.path().string());
    }
  }
  std::sort(out.begin(), out.end());  // zero-padded: lexical = numeric
  return out;
}

}  // namespace

absl::Status WriteCheckpoint(const std::string& checkpoints_dir, int64_t step, const SafetensorsFile& tensors,
                             nlohmann::json state, int64_t keep) {
  std::error_code ec;
  fs::create_directories(checkpoints_dir, ec);
  const std::string final_dir = absl::StrFormat("%s/step_%08d", checkpoints_dir, step);
  const std::string tmp_dir = final_dir + ".tmp";
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create ", tmp_dir, ": ", ec.message()));
  if (absl::Status s = WriteSafetensors(tmp_dir + "/model.safetensors", tensors); !s.ok()) return s;
  absl::StatusOr<std::string> sum = FileChecksum(tmp_dir + "/model.safetensors");
  if (!sum.ok()) return sum.status();
  state["step"] = step;
  state["model_file"] = "model.safetensors";
  state["model_checksum_fnv1a64"] = *sum;
  if (absl::Status s = WriteFileAtomically(tmp_dir + "/state.json", state.dump(2) + "\n"); !s.ok()) return s;
  SyncDir(tmp_dir);
  fs::remove_all(final_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot rename ", tmp_dir, ": ", ec.message()));
  SyncDir(checkpoints_dir);
  std::vector<std::string> dirs = StepDirs(checkpoints_dir);
  for (size_t i = 0; i + keep < dirs.size(); ++i) fs::remove_all(dirs[i], ec);
  return absl::OkStatus();
}

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& checkpoints_dir) {
  std::vector<std::string> dirs = StepDirs(checkpoints_dir);
  if (dirs.empty()) return absl::NotFoundError(absl::StrCat("no checkpoint in ", checkpoints_dir));
  return dirs.back();
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& step_dir) {
  Checkpoint c;
  c.path = step_dir;
  std::ifstream in(step_dir + "/state.json");
  if (!in) return absl::DataLossError(absl::StrCat("checkpoint ", step_dir, " has no state.json (incomplete)"));
  std::stringstream ss;
  ss << in.rdbuf();
  c.state = nlohmann::json::parse(ss.str(), nullptr, false);
  if (!c.state.is_object() || !c.state.contains("model_checksum_fnv1a64") || !c.state.contains("step")) {
    return absl::DataLossError(absl::StrCat("checkpoint ", step_dir, "/state.json is corrupt"));
  }
  const std::string model = step_dir + "/model.safetensors";
  absl::StatusOr<std::string> sum = FileChecksum(model);
  if (!sum.ok()) return absl::DataLossError(absl::StrCat("checkpoint ", step_dir, ": ", sum.status().message()));
  if (*sum != c.state["model_checksum_fnv1a64"].get<std::string>()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", model, " is corrupt: checksum ", *sum, " but state.json says ",
                                            c.state["model_checksum_fnv1a64"].get<std::string>(),
                                            "; delete this checkpoint folder to resume from an older one"));
  }
  absl::StatusOr<SafetensorsFile> t = ReadSafetensors(model);
  if (!t.ok()) return t.status();
  c.tensors = std::move(*t);
  return c;
}

}  // namespace stability::train
