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
// How the ops run (cuda_backend.cu, norm.cu, attention.cu, cross_entropy.cu, ...):
//   linear: cuBLAS SGEMM (fp32, no TF32: parity first), or bf16 operands on the tensor
//   cores with fp32 accumulation (SetMatmulPrecision(kBf16));
//   attention, AttentionKernel::kGemm (the default): per (batch, head) strided-batched GEMMs
//   around a row-softmax kernel with the temperature, cap and clip, as the CPU's;
//   kFused: FlashAttention-style tiles, nothing T×T stored (`probs` left unwritten) —
//   fused_attention.cu in fp32, tensor_core_attention.cu (mma.sync, cp.async) in bf16 — for head dims
//   16/32/64/96/128 (others take kGemm);
//   norms, cross-entropy, AdamW, RoPE: one kernel each; reductions: a fixed grid,
//   warp-shuffle trees and a fixed-order second pass, in double — the same bits every run.
#ifndef STABILITY_OPS_CUDA_CUDA_BACKEND_H_
#define STABILITY_OPS_CUDA_CUDA_BACKEND_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "stability/ops/backend.h"

namespace stability::ops::cuda {

absl::StatusOr<Backend*> InitCudaBackend(int device_index);

// Whether cuBLAS can be opened (it is loaded at run time, not linked); needs no GPU.
absl::Status CublasStatus();

}  // namespace stability::ops::cuda

#endif  // STABILITY_OPS_CUDA_CUDA_BACKEND_H_
