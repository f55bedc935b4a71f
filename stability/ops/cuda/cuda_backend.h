// The CUDA backend of the op interface (ops/backend.h), fp32: every op forward and
// backward on one GPU, with the same math, conventions and determinism as the CPU
// backend (ops/cpu) — which is its reference in cuda_backend_test.
//
//   absl::StatusOr<Backend*> be = ops::cuda::InitCudaBackend(0);   // cuda:0
//   Tensor x = Tensor::Empty({n, c}, DType::kF32, (*be)->device());
//   x.CopyFromHost(host.data());          // or host_tensor.To((*be)->device())
//
// InitCudaBackend registers the backend and a cudaMalloc allocator for DeviceType::kCuda
// (so Tensor::Empty(..., cuda) allocates device memory); it fails with a clear message
// when this build has no CUDA, when no GPU is visible, or when the index is out of range.
// Allocation failures throw std::bad_alloc with the bytes asked for and the bytes free.
//
// How the ops run (cuda_backend.cu, norm.cu, attention.cu, cross_entropy.cu):
//   linear, attention scores and values: cuBLAS SGEMM (fp32, no TF32: parity first);
//   attention: per (batch, head) strided-batched GEMMs around a row-softmax kernel with
//   the temperature, cap and clip, as the CPU's; norms, cross-entropy, AdamW, RoPE:
//   one kernel each; reductions: a fixed grid, warp-shuffle trees and a fixed-order
//   second pass, in double — the same bits on every run.
#ifndef STABILITY_OPS_CUDA_CUDA_BACKEND_H_
#define STABILITY_OPS_CUDA_CUDA_BACKEND_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "stability/ops/backend.h"

namespace stability::ops::cuda {

absl::StatusOr<Backend*> InitCudaBackend(int device_index);

// How a CUDA backend computes attention. kGemm (the default): cuBLAS products around a
// row-softmax kernel, the T×T probabilities stored (the CPU's algorithm). kFused
// (fused_attention.cu): FlashAttention-style tiles and recomputation, nothing T×T stored
// (`probs` is then left unwritten), head dims 16/32/64/96/128 (others fall back to kGemm).
// Set it between steps, never between a forward and its backward.
enum class AttentionKernel { kGemm, kFused };
void SetAttentionKernel(Backend* gpu, AttentionKernel kernel);

// Whether cuBLAS can be opened (it is loaded at run time, not linked); needs no GPU.
absl::Status CublasStatus();

// Free and total memory of an initialised GPU, in bytes.
struct MemoryInfo {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};
MemoryInfo GpuMemory(int device_index);

}  // namespace stability::ops::cuda

#endif  // STABILITY_OPS_CUDA_CUDA_BACKEND_H_
