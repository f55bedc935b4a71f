// --profile_step's report: one training step's device time by kernel (Backend's
// StopKernelProfile rows) as Markdown, with what the first GPU report must answer at a
// glance — how the step divides between the matrix products, the attention and everything
// else (elementwise passes, norms, reductions, copies), and the FLOP/s each product reached.
//
//   std::string md = KernelProfileMarkdown(backend->StopKernelProfile(), step);
//
// A product's row is named "<library call> M×N×K" (× batch when batched; ops/cuda's
// MarkProduct, the CPU's "sgemm M×N×K"): its FLOPs are 2·M·N·K·batch a call.
#ifndef STABILITY_TRAIN_KERNEL_PROFILE_H_
#define STABILITY_TRAIN_KERNEL_PROFILE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "stability/ops/backend.h"

namespace stability::train {

// FLOPs of one call of a product row ("cublasGemmEx bf16 8192×2304×768 ×12"), or nothing for
// a row that is not a product.
std::optional<double> ProductFlops(const std::string& name);

// "matrix products" (cuBLAS/cuBLASLt/sgemm rows), "attention" (the attention's kernels),
// "cross-entropy", "copies" (cudaMemcpy/cudaMemset, the CPU's Copy), "outside the ops" (the
// CPU's time between ops) or "other kernels".
std::string KernelPart(const std::string& name);

std::string KernelProfileMarkdown(std::vector<ops::Backend::KernelTime> rows, int64_t step);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_KERNEL_PROFILE_H_
