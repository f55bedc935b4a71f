#include "stability/train/sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "stability/base/json_fields.h"
#include "stability/ops/cuda/device_query.h"
#include "stability/train/checkpoint.h"
#include "stability/train/sweep_tables.h"

extern char** environ;

namespace stability::train {
namespace fs = std::filesystem;
namespace {

std::string FormatValue(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return absl::StrFormat("%g", v.get<double>());
  return v.dump();
}

absl::StatusOr<std::vector<nlohmann::json>> ListOf(const nlohmann::json& spec, const char* key) {
  if (!spec.contains(key) || !spec[key].is_array() || spec[key].empty()) {
    return absl::InvalidArgumentError(absl::StrCat("sweep: \"", key, "\" must be a non-empty list"));
  }
  return std::vector<nlohmann::json>(spec[key].begin(), spec[key].end());
}

}  // namespace

absl::StatusOr<SweepSpec> ExpandSweep(const nlohmann::json& spec) {
  if (!spec.is_object()) return absl::InvalidArgumentError("a sweep spec is a JSON object");
  for (auto it = spec.begin(); it != spec.end(); ++it) {
    const std::string& k = it.key();
    if (k != "base" && k != "methods" && k != "lrs" && k != "seeds" && k != "axes") {
      return absl::InvalidArgumentError(absl::StrCat("sweep: unknown key \"", k, "\" (base, methods, lrs, seeds, axes)"));
    }
  }
  const nlohmann::json base = spec.value("base", nlohmann::json::object());
  if (!base.is_object()) return absl::InvalidArgumentError("sweep: \"base\" must be an object");
  for (auto it = base.begin(); it != base.end(); ++it) {
    if (it.key() != "preset" && it.key() != "model" && it.key() != "train") {
      return absl::InvalidArgumentError(absl::StrCat("sweep: unknown key base.", it.key(), " (preset, model, train)"));
    }
  }
  absl::StatusOr<std::vector<nlohmann::json>> methods = ListOf(spec, "methods"), lrs = ListOf(spec, "lrs"),
                                              seeds = ListOf(spec, "seeds");
  for (const auto* l : {&methods, &lrs, &seeds})
    if (!l->ok()) return l->status();
  constexpr size_t kMaxCells = 10000;  // a sweep file must not expand into an unbounded grid
  // Extra axes: their cartesian product, as ordered (name, value) lists.
  std::vector<std::vector<std::pair<std::string, nlohmann::json>>> combos = {{}};
  if (spec.contains("axes")) {
    if (!spec["axes"].is_object()) return absl::InvalidArgumentError("sweep: \"axes\" must be an object of lists");
    for (auto it = spec["axes"].begin(); it != spec["axes"].end(); ++it) {
      if (!it.value().is_array() || it.value().empty()) {
        return absl::InvalidArgumentError(absl::StrCat("sweep: axis \"", it.key(), "\" must be a non-empty list"));
      }
      if (combos.size() * it.value().size() > kMaxCells) {
        return absl::InvalidArgumentError(absl::StrCat("sweep: the axes expand beyond ", kMaxCells, " combinations"));
      }
      std::vector<std::vector<std::pair<std::string, nlohmann::json>>> next;
      for (const auto& c : combos)
        for (const nlohmann::json& v : it.value()) {
          auto e = c;
          e.emplace_back(it.key(), v);
          next.push_back(e);
        }
      combos = next;
    }
  }
  const size_t cells = combos.size() * methods->size() * lrs->size() * seeds->size();
  if (cells > kMaxCells) {
    return absl::InvalidArgumentError(absl::StrCat("sweep: ", cells, " cells exceed the limit of ", kMaxCells));
  }
  const std::vector<std::string> model_fields = model::ModelConfigFieldNames();
  const std::vector<std::string> train_fields = TrainConfigFieldNames();
  const auto is_in = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  SweepSpec out;
  out.spec = spec;
  for (const auto& combo : combos) {
    for (const nlohmann::json& m : *methods) {
      if (!m.is_string()) return absl::InvalidArgumentError("sweep: methods must be variant names");
      for (const nlohmann::json& lr : *lrs) {
        if (!lr.is_number()) return absl::InvalidArgumentError("sweep: lrs must be numbers");
        for (const nlohmann::json& seed : *seeds) {
          if (!seed.is_number_unsigned()) return absl::InvalidArgumentError("sweep: seeds must be non-negative integers");
          std::string preset = base.value("preset", std::string("tiny"));
          nlohmann::json model_json = base.value("model", nlohmann::json::object());
          nlohmann::json train_json = base.value("train", nlohmann::json::object());
          std::string suffix;
          for (const auto& [axis, value] : combo) {
            if (axis == "preset") {
              if (!value.is_string()) return absl::InvalidArgumentError("sweep: axis preset takes preset names");
              preset = value.get<std::string>();
            } else if (is_in(model_fields, axis) && axis != "size" && axis != "variant") {
              model_json[axis] = value;
            } else if (is_in(train_fields, axis) && axis != "lr" && axis != "seed" && axis != "out") {
              train_json[axis] = value;
            } else {
              return absl::InvalidArgumentError(absl::StrCat("sweep: axis \"", axis,
                                                             "\" is not a model switch, a training field or preset"));
            }
            absl::StrAppend(&suffix, " ", axis, "=", FormatValue(value));
          }
          SweepCell cell;
          cell.method = m.get<std::string>();
          cell.group = cell.method + suffix;
          cell.lr = lr.get<double>();
          cell.seed = seed.get<uint64_t>();
          cell.name = absl::StrFormat("%s-lr%g-seed%d", cell.method, cell.lr, cell.seed);
          for (const auto& [axis, value] : combo) absl::StrAppend(&cell.name, "-", axis, "=", FormatValue(value));
          for (char& ch : cell.name)
            if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.' || ch == '_' || ch == '=')) ch = '_';
          absl::StatusOr<model::ModelConfig> mc = model::MakeConfig(preset, cell.method, model_json);
          if (!mc.ok()) return absl::InvalidArgumentError(absl::StrCat("sweep cell ", cell.name, ": ", mc.status().message()));
          cell.config.model = *mc;
          train_json["lr"] = cell.lr;
          train_json["seed"] = cell.seed;
          if (absl::Status s = ApplyTrainJson(train_json, &cell.config.train); !s.ok()) {
            return absl::InvalidArgumentError(absl::StrCat("sweep cell ", cell.name, ": ", s.message()));
          }
          out.cells.push_back(std::move(cell));
        }
      }
    }
  }
  return out;
}

absl::StatusOr<nlohmann::json> ReadSweepSpec(const std::string& dir) {
  std::ifstream in(dir + "/sweep.json");
  if (!in) return absl::NotFoundError(absl::StrCat(dir, " holds no sweep (no sweep.json)"));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat(dir, "/sweep.json is not valid JSON"));
  return j;
}

namespace {

// The environment of a cell's process: this one's, less the launcher's variables, so a cell
// started from an mpirun rank is a single-process run.
// visible_gpu: the cell's CUDA_VISIBLE_DEVICES ("" = the parent's, unchanged).
std::vector<std::string> CellEnvironment(const std::string& visible_gpu) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string v = *e;
    if (v.rfind("OMPI_", 0) == 0 || v.rfind("PMI_", 0) == 0 || v.rfind("PMIX_", 0) == 0 || v.rfind("SLURM_", 0) == 0 ||
        (!visible_gpu.empty() && v.rfind("CUDA_VISIBLE_DEVICES=", 0) == 0)) {
      continue;
    }
    env.push_back(v);
  }
  if (!visible_gpu.empty()) env.push_back("CUDA_VISIBLE_DEVICES=" + visible_gpu);
  return env;
}

}  // namespace

std::string CellVisibleGpu(const std::string& device, int slot, int gpus, const char* parent_visible) {
  if (gpus <= 0 || (device != "auto" && device != "cuda")) return "";
  if (parent_visible != nullptr && *parent_visible != '\0') {
    const std::vector<std::string> ids = absl::StrSplit(parent_visible, ',', absl::SkipEmpty());
    if (!ids.empty()) return ids[slot % ids.size()];
  }
  return absl::StrCat(slot % gpus);
}

absl::StatusOr<SweepOutcome> RunSweep(const SweepSpec& sweep, const std::string& dir, const SweepOptions& options) {
  std::unique_ptr<dist::Communicator> single;
  dist::Communicator* comm = options.comm;
  if (comm == nullptr) {
    single = dist::MakeSingleProcessCommunicator();
    comm = single.get();
  }
  const bool root = comm->is_root();
  std::error_code ec;
  if (fs::exists(dir + "/sweep.json", ec)) {
    absl::StatusOr<nlohmann::json> existing = ReadSweepSpec(dir);
    if (!existing.ok()) return existing.status();
    if (*existing != sweep.spec) {
      return absl::AlreadyExistsError(absl::StrCat(dir, " holds another sweep (its sweep.json differs); choose another --out",
                                                   " or run `stability sweep --out=", dir, "` to continue that one"));
    }
  } else if (fs::exists(dir, ec) && !fs::is_empty(dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(dir, " exists and is not a sweep folder; choose another --out"));
  }
  if (absl::Status s = comm->Barrier(); !s.ok()) return s;  // every rank checked the folder
  if (root) {
    for (const char* sub : {"cells", "cell_configs", "logs", "tables"}) fs::create_directories(dir + "/" + sub, ec);
    if (ec) return absl::UnavailableError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
    if (absl::Status s = WriteFileAtomically(dir + "/sweep.json", sweep.spec.dump(2) + "\n"); !s.ok()) return s;
  }
  if (absl::Status s = comm->Barrier(); !s.ok()) return s;

  SweepOutcome outcome;
  outcome.cells = (static_cast<int64_t>(sweep.cells.size()) - comm->rank() + comm->size() - 1) / comm->size();
  std::deque<const SweepCell*> pending;
  for (size_t i = 0; i < sweep.cells.size(); ++i) {
    const SweepCell& c = sweep.cells[i];
    if (static_cast<int>(i % comm->size()) != comm->rank()) continue;  // another rank's cell
    const std::string run = dir + "/cells/" + c.name;
    if (fs::exists(run + "/summary.json", ec)) {
      ++outcome.skipped;
      ++outcome.finished;
      continue;
    }
    pending.push_back(&c);
  }
  const auto started = std::chrono::steady_clock::now();
  const int gpus = options.gpus >= 0 ? options.gpus : cuda::CudaDeviceCount();
  struct Job {
    const SweepCell* cell;
    int slot;  // which of the `jobs` slots: its GPU
  };
  std::map<pid_t, Job> running;
  std::vector<bool> slot_busy(std::max(options.jobs, 1), false);
  int64_t done_now = 0;
  const auto report = [&](const std::string& event) {
    if (!options.progress) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const int64_t left = static_cast<int64_t>(pending.size() + running.size());
    const double eta = done_now > 0 ? elapsed / done_now * left / 1.0 : NAN;
    std::fprintf(options.progress, "%ssweep: %lld/%lld done (%lld diverged, %lld failed), %zu running, ETA %s%s\n",
                 comm->size() > 1 ? absl::StrCat("rank ", comm->rank(), " ").c_str() : "",
                 (long long)outcome.finished, (long long)outcome.cells, (long long)outcome.diverged,
                 (long long)outcome.failed, running.size(),
                 std::isfinite(eta) ? absl::StrFormat("%.0fs", eta).c_str() : "?", event.c_str());
    std::fflush(options.progress);
  };
  const auto launch = [&](const SweepCell& c) -> absl::Status {
    const std::string run = dir + "/cells/" + c.name;
    const std::string cfg = dir + "/cell_configs/" + c.name + ".json";
    const int slot = static_cast<int>(std::find(slot_busy.begin(), slot_busy.end(), false) - slot_busy.begin());
    RunConfig rc = c.config;
    rc.train.out = run;
    rc.train.threads = options.threads_per_job;
    const std::string visible_gpu = CellVisibleGpu(rc.train.device, slot, gpus, std::getenv("CUDA_VISIBLE_DEVICES"));
    if (absl::Status s = WriteFileAtomically(cfg, rc.ToJson().dump(2) + "\n"); !s.ok()) return s;
    const bool resume = FindLatestCheckpoint(run + "/checkpoints").ok();
    if (!resume) fs::remove_all(run, ec);  // a partial folder without a checkpoint starts over
    std::vector<std::string> args = {options.executable, "train", "--config=" + cfg, "--out=" + run,
                                     absl::StrCat("--threads=", options.threads_per_job)};
    if (resume) args.push_back("--resume");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    const std::string log = dir + "/logs/" + c.name + ".log";
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<std::string> env_strings = CellEnvironment(visible_gpu);
    std::vector<char*> envp;
    for (std::string& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid;
    const int err = posix_spawn(&pid, options.executable.c_str(), &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (err != 0) return absl::UnavailableError(absl::StrCat("cannot start ", options.executable, ": ", std::strerror(err)));
    running[pid] = {&c, slot};
    slot_busy[slot] = true;
    return absl::OkStatus();
  };

  report("");
  bool stopping = false;
  while (!pending.empty() || !running.empty()) {
    while (!stopping && !pending.empty() && static_cast<int>(running.size()) < options.jobs) {
      if (absl::Status s = launch(*pending.front()); !s.ok()) return s;
      pending.pop_front();
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) {
      if (!stopping && options.stop_requested && options.stop_requested->load()) {
        stopping = true;  // children checkpoint on SIGINT; restart the sweep to continue
        for (const auto& [p, job] : running) ::kill(p, SIGINT);
        pending.clear();
        outcome.stopped = true;
      }
      ::usleep(50000);
      continue;
    }
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const SweepCell& c = *it->second.cell;
    slot_busy[it->second.slot] = false;
    running.erase(it);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (fs::exists(dir + "/cells/" + c.name + "/summary.json", ec)) {
      ++outcome.finished;
      ++done_now;
      if (code == 3) ++outcome.diverged;
      report(absl::StrCat(" | ", c.name, code == 3 ? " diverged" : " done"));
    } else if (!stopping) {
      ++outcome.failed;
      outcome.failures.push_back(absl::StrCat(c.name, " (exit ", code, "): see ", dir, "/logs/", c.name, ".log"));
      report(absl::StrCat(" | ", c.name, " FAILED"));
    }
  }
  if (absl::Status s = comm->Barrier(); !s.ok()) return s;  // all ranks' cells are done
  if (!outcome.stopped && root) {
    if (absl::Status s = WriteSweepTables(sweep, dir); !s.ok()) return s;
  }
  return outcome;
}

}  // namespace stability::train
