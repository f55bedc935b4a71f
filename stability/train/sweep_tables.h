// The sweep's results, recomputed from each cell's own summary.json:
//
// 1. divergence: per method (group), the highest LR at which every seed converged and the
//    lowest at which any diverged, with "k/n converged" per LR (the paper's table);
// 2. loss: final validation loss and perplexity per method and LR, mean ± 95% interval
//    over seeds (Student t), over the seeds that converged;
// 3. LR sensitivity (Wortsman et al. 2023): mean over the LR grid of
//    min(final val loss, loss at init) − the best of those on the grid, a diverged or
//    unfinished seed counting as the loss at initialisation;
// 4. throughput: mean tokens/s of each method's cells relative to the baseline's.
//
// Written as tables/{divergence,loss,sensitivity,throughput}.csv and results.md.
#ifndef STABILITY_TRAIN_SWEEP_TABLES_H_
#define STABILITY_TRAIN_SWEEP_TABLES_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "stability/train/sweep.h"

namespace stability::train {

// All four tables as JSON (for the report) and as Markdown.
struct SweepResults {
  nlohmann::json tables;  // {"divergence": [...rows], "loss": [...], "sensitivity": [...], "throughput": [...]}
  std::string markdown;
};

absl::StatusOr<SweepResults> ComputeSweepResults(const SweepSpec& sweep, const std::string& dir);
absl::Status WriteSweepTables(const SweepSpec& sweep, const std::string& dir);

// Two-sided 95% Student t quantile for `dof` degrees of freedom (1.96 for large dof).
double StudentT95(int dof);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_SWEEP_TABLES_H_
