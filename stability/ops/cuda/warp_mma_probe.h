// One warp's mma.sync and ldmatrix (internal/warp_mma.cuh) on known operands, for
// warp_mma_test: the register layouts the PTX ISA documents, checked where the kernels run
// (on a GPU by tools/gpu_check.sh, in CI on the emulator).
#ifndef STABILITY_OPS_CUDA_WARP_MMA_PROBE_H_
#define STABILITY_OPS_CUDA_WARP_MMA_PROBE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace stability::ops::cuda {

struct WarpMmaProbe {
  std::vector<float> d;       // [16 × 8] row-major: D = A·B from fragments built by the documented layout
  std::vector<uint32_t> a;    // [32 lanes × 4]: the A fragments built by the documented layout
  std::vector<uint32_t> ldm;  // [32 × 4]: ldmatrix.x4 of A's four 8 × 8 quarters (lane i: row i % 8 of quarter i / 8,
                              // quarter j = rows 8·(j % 2).., columns 8·(j / 2)..)
  std::vector<uint32_t> ldm_t;  // [32 × 4]: the same, .trans
};

// a: A [16 × 16] as bf16 bits, row-major; b: B [16 × 8] given as Bᵀ [8 × 16] bf16 bits
// (B(k, n) = b[n·16 + k]). False, with why, where no device runs it.
bool RunWarpMmaProbe(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b, WarpMmaProbe* out,
                     std::string* why);

}  // namespace stability::ops::cuda

#endif  // STABILITY_OPS_CUDA_WARP_MMA_PROBE_H_
