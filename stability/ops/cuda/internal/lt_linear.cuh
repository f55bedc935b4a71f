// The bf16 linear layer's forward through cuBLASLt, with the bias, or the bias and the
// GELU, fused into the product's epilogue (no extra pass over the output):
//
//   y = x·wᵀ + b                      CUBLASLT_EPILOGUE_BIAS
//   pre = x·wᵀ + b,  y = GELU(pre)    CUBLASLT_EPILOGUE_GELU_AUX_BIAS (pre is the "aux"
//                                     output the backward needs; GELU_AUX without a bias)
//
// x and w come as bf16 copies; accumulation, bias and GELU are fp32. y is fp32 or bf16
// (y_type); the bias vector and the aux pre-activation are y's type (cuBLASLt's defaults,
// which its documentation promises for every such product: an fp32 bias beside a bf16 y is
// not among them), each output rounded from the fp32 value: GELU is taken of the unrounded
// pre. Row-major y[N, Out] is
// column-major yᵀ[Out, N] = op_T(w)·x, so the bias runs along D's rows, as cuBLASLt
// broadcasts it. A plan (descriptors and the heuristic's algorithm) is made once per shape,
// epilogue and y type and kept; those cuBLASLt has no kernel for are remembered too, and
// Forward returns false for them (the caller then runs the unfused ops).
#ifndef STABILITY_OPS_CUDA_INTERNAL_LT_LINEAR_CUH_
#define STABILITY_OPS_CUDA_INTERNAL_LT_LINEAR_CUH_

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

#include "stability/ops/cuda/internal/cublas_api.cuh"

namespace stability::ops::cuda::internal {

class LtLinear {
 public:
  explicit LtLinear(const CublasApi* api);
  ~LtLinear();
  LtLinear(const LtLinear&) = delete;
  LtLinear& operator=(const LtLinear&) = delete;

  // Whether cuBLASLt has a kernel for this shape and epilogue (the plan is made on first
  // asking and kept): callers check before rounding their operands to bf16.
  bool Ready(int64_t n, int64_t in, int64_t out, const void* b, cudaDataType y_type, void* gelu_pre,
             size_t workspace_bytes);
  // After Ready: b (y_type, nullable); gelu_pre nullptr: y = x·wᵀ + b; else gelu_pre =
  // x·wᵀ + b and y = GELU of it (both y_type). False (nothing written) if cuBLASLt fails at
  // run time.
  bool Forward(const __nv_bfloat16* x, const __nv_bfloat16* w, const void* b, int64_t n, int64_t in, int64_t out,
               void* y, cudaDataType y_type, void* gelu_pre, void* workspace, size_t workspace_bytes);

 private:
  struct Plan {
    bool ok = false;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int>;  // n, in, out, epilogue, y type
  Plan MakePlan(int64_t n, int64_t in, int64_t out, cublasLtEpilogue_t epilogue, const void* bias, cudaDataType y_type,
                void* aux, size_t workspace_bytes);
  void Destroy(Plan& p);
  static cublasLtEpilogue_t EpilogueFor(const void* b, const void* gelu_pre);
  static Key KeyFor(int64_t n, int64_t in, int64_t out, const void* b, cudaDataType y_type, const void* gelu_pre);

  const CublasApi* api_;
  cublasLtHandle_t handle_ = nullptr;
  std::map<Key, Plan> plans_;
};

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_LT_LINEAR_CUH_
