// The PTX instructions the tensor-core attention is built on, on known operands, for
// warp_mma_test, checked where the kernels run (on a GPU by tools/gpu_check.sh, in CI on the
// emulator): one warp's mma.sync and ldmatrix (internal/warp_mma.cuh) and their register
// layouts; a block's cp.async copies (internal/cp_async.cuh) and their groups.
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

// One block of 64 threads: thread i copies 16 bytes (src words 4i..4i+3) into shared memory as
// group 0, then 4 bytes (word i) and 16 zero-filled bytes as group 1; after waiting for all but
// one group and a barrier it reads its neighbour's (i + 1) 16 bytes, after waiting for all
// and a barrier its neighbour's others.
struct CpAsyncProbe {
  std::vector<uint32_t> group0;  // [64 × 4]: thread i's read of thread i + 1's 16 bytes
  std::vector<uint32_t> word;    // [64]: its read of thread i + 1's 4 bytes
  std::vector<uint32_t> zeros;   // [64 × 4]: its read of thread i + 1's zero-filled 16 bytes
  std::vector<uint32_t> early;   // [64 × 4]: thread i's own 16 bytes read before any wait
  bool emulated = false;         // run on the CUDA emulator (which poisons what a wait has not landed)
};
// src: 256 words. False, with why, where no device runs it.
bool RunCpAsyncProbe(const std::vector<uint32_t>& src, CpAsyncProbe* out, std::string* why);

}  // namespace stability::ops::cuda

#endif  // STABILITY_OPS_CUDA_WARP_MMA_PROBE_H_
