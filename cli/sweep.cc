#include "cli/sweep.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/common.h"
#include "cli/flags.h"
#include "cli/run_flags.h"
#include "stability/base/json_fields.h"
#include "stability/base/paths.h"
#include "stability/dist/communicator.h"
#include "stability/train/report.h"
#include "stability/train/sweep.h"
#include "stability/train/sweep_tables.h"

namespace stability::cli {
namespace {

// "a,b,c" -> ["a", "b", "c"] typed like JSON ("1e-3" -> 0.001).
nlohmann::json ListFlag(const std::string& value) {
  nlohmann::json out = nlohmann::json::array();
  for (absl::string_view v : absl::StrSplit(value, ',', absl::SkipEmpty())) out.push_back(FlagValueToJson(std::string(v)));
  return out;
}

std::string SelfExecutable() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : "";
}

}  // namespace

int RunSweepCommand(int argc, char** argv) {
  std::vector<FlagSpec> specs = {
      {"sweep_file", "", "a sweep spec JSON (README: Sweeps); the flags below build one instead"},
      {"methods", "baseline", "comma-separated variants, e.g. baseline,qk_norm,qkv_norm"},
      {"lrs", "1e-3,3e-3,1e-2", "comma-separated learning rates"},
      {"seeds", "1", "comma-separated seeds"},
      {"jobs", "2", "cells run at a time (processes)"},
      {"threads_per_job", "1", "OpenMP threads of each cell"},
  };
  for (const FlagSpec& s : RunFlagSpecs()) {
    if (s.name == "variant" || s.name == "config" || s.name == "lr" || s.name == "seed") continue;
    specs.push_back(s.name == "out" ? FlagSpec{"out", "", "the sweep folder (required); given alone, continues that sweep"} : s);
  }
  absl::StatusOr<Flags> flags = Flags::Parse("sweep", argc, argv, specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n(stability sweep --help lists them)\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->help()) {
    std::printf("Run a grid of methods x learning rates x seeds; tables at the end.\n\n%s",
                Flags::Usage("sweep", specs).c_str());
    return 0;
  }
  if (flags->Get("out").empty()) return Fail("sweep", "--out=DIR (the sweep folder) is required");
  const std::string dir = ResolveUserPath(flags->Get("out"));
  nlohmann::json spec;
  bool grid_flags = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--out", 0) != 0 && a.rfind("--jobs", 0) != 0 && a.rfind("--threads_per_job", 0) != 0) grid_flags = true;
  }
  if (!flags->Get("sweep_file").empty()) {
    const std::string path = ResolveUserPath(flags->Get("sweep_file"));
    std::ifstream in(path);
    if (!in) return Fail("sweep", "cannot open --sweep_file=" + path);
    std::stringstream ss;
    ss << in.rdbuf();
    spec = nlohmann::json::parse(ss.str(), nullptr, false);
    if (spec.is_discarded()) return Fail("sweep", path + " is not valid JSON");
  } else if (!grid_flags) {
    absl::StatusOr<nlohmann::json> existing = train::ReadSweepSpec(dir);  // `--out` alone: continue
    if (!existing.ok()) return Fail("sweep", std::string(existing.status().message()) + "; give --methods/--lrs/--seeds or --sweep_file");
    spec = *existing;
  } else {
    const nlohmann::json given = ExplicitRunFlags(*flags, argc, argv);
    nlohmann::json train = given["train"];
    train.erase("out");
    spec = {{"base", {{"preset", flags->Get("preset")}, {"model", given["model"]}, {"train", train}}},
            {"methods", ListFlag(flags->Get("methods"))},
            {"lrs", ListFlag(flags->Get("lrs"))},
            {"seeds", ListFlag(flags->Get("seeds"))}};
  }
  absl::StatusOr<train::SweepSpec> sweep = train::ExpandSweep(spec);
  if (!sweep.ok()) return Fail("sweep", std::string(sweep.status().message()));
  absl::StatusOr<int64_t> jobs = flags->GetInt("jobs"), threads = flags->GetInt("threads_per_job");
  if (!jobs.ok() || !threads.ok() || *jobs < 1 || *threads < 1) return Fail("sweep", "--jobs and --threads_per_job must be integers >= 1");
  absl::StatusOr<std::unique_ptr<dist::Communicator>> comm = dist::CommunicatorFromEnvironment();
  if (!comm.ok()) return Fail("sweep", std::string(comm.status().message()));
  const bool root = (*comm)->is_root();
  const std::atomic<bool>* stop = InstallStopHandler();
  if (root) {
    std::fprintf(stderr, "sweep %s: %zu cells, %lld at a time%s\n", dir.c_str(), sweep->cells.size(), (long long)*jobs,
                 (*comm)->size() > 1 ? absl::StrCat(" on each of ", (*comm)->size(), " ranks").c_str() : "");
  }
  absl::StatusOr<train::SweepOutcome> outcome =
      train::RunSweep(*sweep, dir, {.executable = SelfExecutable(), .comm = comm->get(), .jobs = static_cast<int>(*jobs),
                                    .threads_per_job = static_cast<int>(*threads), .progress = stderr,
                                    .stop_requested = stop});
  if (!outcome.ok()) return Fail("sweep", std::string(outcome.status().message()));
  if (!root) return outcome->failed > 0 ? 1 : 0;
  for (const std::string& f : outcome->failures) std::fprintf(stderr, "failed: %s\n", f.c_str());
  if (outcome->stopped) {
    std::fprintf(stderr, "stopped; `stability sweep --out=%s` continues\n", dir.c_str());
    return 130;
  }
  absl::StatusOr<train::SweepResults> results = train::ComputeSweepResults(*sweep, dir);
  if (!results.ok()) return Fail("sweep", std::string(results.status().message()));
  std::printf("%s\ntables: %s/tables/*.csv, %s/results.md\nreport: stability report %s\n", results->markdown.c_str(),
              dir.c_str(), dir.c_str(), dir.c_str());
  return outcome->failed > 0 ? 1 : 0;
}

int RunReportCommand(int argc, char** argv) {
  const std::vector<FlagSpec> specs = {
      {"out", "", "the HTML file to write; default: <folder>/report.html"},
  };
  std::vector<char*> flag_args = {argv[0]};
  std::string folder;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]).rfind("--", 0) == 0) flag_args.push_back(argv[i]);
    else if (folder.empty()) folder = argv[i];
    else return Fail("report", std::string("unexpected argument '") + argv[i] + "'");
  }
  absl::StatusOr<Flags> flags = Flags::Parse("report", static_cast<int>(flag_args.size()), flag_args.data(), specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "%s\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  if (flags->help() || folder.empty()) {
    std::printf("usage: stability report <run or sweep folder> [--out=FILE]\n\nOne self-contained HTML file with "
                "interactive charts (loss, layer output norms, attention logits, loss vs LR) and the tables.\n");
    return folder.empty() && !flags->help() ? 2 : 0;
  }
  const BundledData data = FindBundledData();
  if (!data.uplot_present) return Fail("report", "the chart library is missing at " + data.uplot_js + "; run `bash tools/setup.sh`");
  const std::string dir = ResolveUserPath(folder);
  const std::string out = flags->Get("out").empty() ? dir + "/report.html" : ResolveUserPath(flags->Get("out"));
  absl::Status s = train::WriteReport(dir, out, data.uplot_js, data.uplot_js.substr(0, data.uplot_js.rfind('/')) + "/uPlot.min.css");
  if (!s.ok()) return Fail("report", std::string(s.message()));
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace stability::cli
