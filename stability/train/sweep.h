// Sweeps: a grid of methods × learning rates × seeds (× any other switch) over one base
// run, each cell a normal run folder, run as parallel `stability train` processes.
//
// A sweep file (JSON; `stability sweep --sweep_file=F`, or the same from flags):
//   {
//     "base":    {"preset": "tiny", "model": {...switches}, "train": {...fields}},
//     "methods": ["baseline", "qk_norm"],          // variant presets
//     "lrs":     [1e-3, 1e-2, 1e-1],
//     "seeds":   [1, 2, 3],
//     "axes":    {"preset": ["tiny", "small"], "z_loss": [0, 1e-4]}   // optional
//   }
// The sweep folder holds sweep.json (the spec), cells/<name>/ (run folders),
// cell_configs/, logs/, tables/*.csv and results.md. Starting the same sweep again skips
// finished cells, resumes interrupted ones from their checkpoints and runs the rest.
#ifndef STABILITY_TRAIN_SWEEP_H_
#define STABILITY_TRAIN_SWEEP_H_

#include <atomic>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "stability/dist/communicator.h"
#include "stability/train/train_config.h"

namespace stability::train {

struct SweepCell {
  std::string name;    // "qk_norm-lr0.01-seed2" (+ "-preset=small" per extra axis)
  std::string method;  // the variant
  std::string group;   // method plus extra-axis values: the row label of the tables
  double lr = 0;
  uint64_t seed = 0;
  RunConfig config;
};

struct SweepSpec {
  nlohmann::json spec;  // as given (canonical form is written to sweep.json)
  std::vector<SweepCell> cells;
};

// Validates the spec and expands it into cells (every cell's config validated).
absl::StatusOr<SweepSpec> ExpandSweep(const nlohmann::json& spec);

struct SweepOptions {
  std::string executable;  // the `stability` binary to run cells with
  // Under mpirun, each rank runs the cells whose index i has i % ranks == rank (each cell a
  // single-process run); rank 0 writes sweep.json and the tables. nullptr: one process.
  dist::Communicator* comm = nullptr;
  int jobs = 1;            // cells at a time
  int threads_per_job = 1;
  // GPUs to spread the cells over (CellVisibleGpu): -1 = the visible ones (counted without
  // creating a context on any), 0 = none.
  int gpus = -1;
  FILE* progress = nullptr;
  const std::atomic<bool>* stop_requested = nullptr;
};

struct SweepOutcome {
  int64_t cells = 0, finished = 0, diverged = 0, failed = 0, skipped = 0;
  bool stopped = false;
  std::vector<std::string> failures;  // "name: see logs/name.log"
};

// The GPU a cell started in job slot `slot` (0 .. jobs−1) may see, as its
// CUDA_VISIBLE_DEVICES, on a machine with `gpus` GPUs (parent_visible: the sweep's own
// CUDA_VISIBLE_DEVICES, nullable): a cell whose device is auto or cuda sees GPU slot mod gpus
// alone (of the parent's list when it has one), so --jobs=<GPUs> runs one cell a GPU and the
// cell's saved config stays "auto" (a resumed cell runs wherever it is started). "": leave the
// environment as it is (an explicit cuda:N or cpu, or no GPU).
std::string CellVisibleGpu(const std::string& device, int slot, int gpus, const char* parent_visible);

// Runs every cell not finished yet, then writes the tables (tables/*.csv, results.md).
absl::StatusOr<SweepOutcome> RunSweep(const SweepSpec& sweep, const std::string& dir, const SweepOptions& options);

// The sweep.json of an existing sweep folder.
absl::StatusOr<nlohmann::json> ReadSweepSpec(const std::string& dir);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_SWEEP_H_
