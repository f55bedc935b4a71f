// How the norm kernels (norm.cu) lay rows over lanes, warps and blocks: plain functions of the
// row width and count, kept apart so that they are tested without a GPU (norm_shape_test).
#ifndef STABILITY_OPS_CUDA_INTERNAL_NORM_SHAPE_H_
#define STABILITY_OPS_CUDA_INTERNAL_NORM_SHAPE_H_

#include <cstdint>
#include <initializer_list>

namespace stability::ops::cuda::internal {

// Lanes a row: 8 up to 128 columns (four rows a warp), else 32.
inline int LanesPerRow(int64_t d) { return d <= 128 ? 8 : 32; }
// Warps the forward needs for `rows` rows of d.
inline int64_t ForwardWarpsFor(int64_t rows, int64_t d) {
  const int64_t per_warp = 32 / LanesPerRow(d);
  return (rows + per_warp - 1) / per_warp;
}
// Columns a lane holds in registers: ⌈d / L⌉ rounded up to 2, 4, 8, 16, 24 or 32, or 0 past
// 1,024 (streamed). A per-head row (64) is 8 (of 8 lanes), GPT-2's 768 24, the 830M shape's
// 1,024 32.
inline int LanePart(int64_t d) {
  const int64_t need = (d + LanesPerRow(d) - 1) / LanesPerRow(d);
  for (int p : {2, 4, 8, 16, 24, 32}) {
    if (need <= p) return p;
  }
  return 0;
}
// Row chunks of the backward: ~32 rows a block, at most 2,048 partial rows for the column
// totals to add up — rounded down to whole waves of the `resident` blocks the GPU holds at once
// (when there are more chunks than that), so that no last wave runs partly empty: a GPT-2
// norm's 512 chunks were 1.3 waves on an H200 at 3 blocks an SM (396), two rounds of 32 rows a
// block; as 396 chunks, one round of ~41. A per-head norm (196,608 rows × 64) gets 2,048 → 7
// waves of 264 (2 blocks an SM) = 1,848.
inline int NormChunks(int64_t rows, int resident) {
  const int64_t chunks = rows < 32 ? 1 : rows / 32 < 2048 ? rows / 32 : 2048;
  return static_cast<int>(resident > 0 && chunks > resident ? chunks / resident * resident : chunks);
}
// Warps a block of the backward: as many as keep their groups' column sums (8 bytes a column
// each, 32 / L groups a warp) within the default 48 KB of shared memory (1 from d = 6,144), at
// most 8, and at most 4 where a lane holds 16 or more columns (d > 256: ~140–200 registers, so
// two or three blocks share an SM, not one with a quarter of the grid left for a last wave) —
// 8 at a per-head width, 4 at GPT-2's and the 830M shape's.
constexpr int BackwardMostWarps(int lane_part) { return lane_part >= 16 ? 4 : 8; }  // and its launch bound
inline int NormBackwardWarps(int64_t d) {
  const int64_t fit = 48 * 1024 / (2 * d * static_cast<int64_t>(sizeof(float)) * (32 / LanesPerRow(d)));
  const int64_t most = BackwardMostWarps(LanePart(d));
  return static_cast<int>(fit < 1 ? 1 : fit > most ? most : fit);
}

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_NORM_SHAPE_H_
