// Loss and attention statistics from per-row values, reduced on the host in row order, so
// any thread count gives the same numbers from the same rows: the CPU backend's, and the
// CUDA backend's loss (its attention rows are reduced on the device, where they are).
#ifndef STABILITY_OPS_ROW_STATS_H_
#define STABILITY_OPS_ROW_STATS_H_

#include <cstdint>

#include "stability/ops/backend.h"

namespace stability::ops {

// lse, the (capped) target logit and the max raw logit of each of n rows → the loss terms
// of CrossEntropyOptions: mean(lse − z_target) + z_loss·mean(lse²).
CrossEntropyStats CrossEntropyStatsFromRows(const float* lse, const float* target_z, const float* row_max, int64_t n,
                                            float z_loss);

// Entropy and max logit of each row (or of each head: any partition) → their sum and max.
AttentionStats AttentionStatsFromRows(const double* entropy, const float* max_logit, int64_t rows);

}  // namespace stability::ops

#endif  // STABILITY_OPS_ROW_STATS_H_
