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

absl::StatusOr<CheckpointState> ParseCheckpointState(const nlohmann::json& j) {
  const auto bad = [](const std::string& what) {
    return absl::DataLossError("checkpoint state.json: " + what);
  };
  if (!j.is_object()) return bad("not a JSON object");
  const auto integer = [&](const nlohmann::json& o, const char* key, int64_t* out) -> absl::Status {
    if (!o.is_object() || !o.contains(key) || !o[key].is_number_integer()) {
      return bad(absl::StrCat("\"", key, "\" is missing or not an integer"));
    }
    *out = o[key].get<int64_t>();
    if (*out < 0) return bad(absl::StrCat("\"", key, "\" is negative"));
    return absl::OkStatus();
  };
  CheckpointState s;
  for (auto [key, out] : {std::pair{"step", &s.step}, std::pair{"optimizer_step", &s.optimizer_step}}) {
    if (absl::Status st = integer(j, key, out); !st.ok()) return st;
  }
  if (!j.contains("data")) return bad("\"data\" (the loader position) is missing");
  if (absl::Status st = integer(j["data"], "epoch", &s.data_epoch); !st.ok()) return st;
  if (absl::Status st = integer(j["data"], "next", &s.data_next); !st.ok()) return st;
  if (!j.contains("detector") || !j["detector"].is_object()) return bad("\"detector\" is missing or not an object");
  const nlohmann::json& d = j["detector"];
  if (!d.contains("loss_at_init") || !(d["loss_at_init"].is_number() || d["loss_at_init"].is_null()) ||
      !d.contains("above") || !d["above"].is_number_integer()) {
    return bad("\"detector\" needs loss_at_init (number or null) and above (integer)");
  }
  for (const char* key : {"recent_loss", "recent_grad"}) {
    if (!d.contains(key)) continue;
    if (!d[key].is_array()) return bad(absl::StrCat("detector.", key, " is not a list"));
    for (const auto& v : d[key])
      if (!v.is_number()) return bad(absl::StrCat("detector.", key, " holds a non-number"));
  }
  if (d.contains("skipped") && !d["skipped"].is_number_integer()) return bad("detector.skipped is not an integer");
  s.detector = d;
  if (j.contains("best_val_loss") && j["best_val_loss"].is_number()) s.best_val_loss = j["best_val_loss"].get<double>();
  if (j.contains("wall_time_s") && j["wall_time_s"].is_number()) s.wall_time_s = j["wall_time_s"].get<double>();
  if (j.contains("world_size")) {
    if (absl::Status st = integer(j, "world_size", &s.world_size); !st.ok()) return st;
    if (s.world_size < 1) return bad("\"world_size\" must be at least 1");
  }
  return s;
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& step_dir) {
  Checkpoint c;
  c.path = step_dir;
  std::ifstream in(step_dir + "/state.json");
  if (!in) return absl::DataLossError(absl::StrCat("checkpoint ", step_dir, " has no state.json (incomplete)"));
  std::stringstream ss;
  ss << in.rdbuf();
  c.state = nlohmann::json::parse(ss.str(), nullptr, false);
  if (!c.state.is_object() || !c.state.contains("model_checksum_fnv1a64") ||
      !c.state["model_checksum_fnv1a64"].is_string()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", step_dir, "/state.json is corrupt (no model checksum)"));
  }
  absl::StatusOr<CheckpointState> parsed = ParseCheckpointState(c.state);
  if (!parsed.ok()) return absl::DataLossError(absl::StrCat(step_dir, ": ", parsed.status().message()));
  c.parsed = *parsed;
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
