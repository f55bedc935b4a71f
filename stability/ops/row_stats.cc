#include "stability/ops/row_stats.h"

#include <algorithm>
#include <limits>

namespace stability::ops {

CrossEntropyStats CrossEntropyStatsFromRows(const float* lse, const float* target_z, const float* row_max, int64_t n,
                                            float z_loss) {
  double ce = 0, lse_sum = 0, lse_sq = 0;
  float lmax = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    ce += static_cast<double>(lse[i]) - target_z[i];
    lse_sum += lse[i];
    lse_sq += static_cast<double>(lse[i]) * lse[i];
    lmax = std::max(lmax, row_max[i]);
  }
  CrossEntropyStats stats;
  stats.ce_loss = ce / n;
  stats.mean_lse = lse_sum / n;
  stats.loss = stats.ce_loss + z_loss * lse_sq / n;
  stats.max_logit = lmax;
  return stats;
}

AttentionStats AttentionStatsFromRows(const double* entropy, const float* max_logit, int64_t rows) {
  AttentionStats stats;
  stats.max_logit = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    stats.max_logit = std::max(stats.max_logit, max_logit[r]);
    stats.entropy_sum += entropy[r];
  }
  return stats;
}

}  // namespace stability::ops
