// The bf16 linear layer through cuBLASLt with elementwise work fused into the product's
// epilogue (no extra pass over the output):
//
//   y = x·wᵀ + b                      CUBLASLT_EPILOGUE_BIAS            (Forward)
//   pre = x·wᵀ + b,  y = GELU(pre)    CUBLASLT_EPILOGUE_GELU_AUX_BIAS   (Forward; pre is the
//                                     "aux" output the backward needs; GELU_AUX without a bias)
//   dx = GELU'(pre) ⊙ (dy·w)          CUBLASLT_EPILOGUE_DGELU           (GeluBackward: FC2's
//                                     input gradient, already FC1's pre-activation gradient)
//   dw += dyᵀ·x,  db = Σ_n dy         CUBLASLT_EPILOGUE_BGRADB          (WeightGradient: the
//                                     bias gradient from the operand the product reads anyway)
//
// x, w and dy come as bf16 copies; accumulation, bias, GELU and GELU' are fp32. y is fp32 or
// bf16 (y_type), dx bf16; the bias vector and pre are the output's type (cuBLASLt's
// defaults, which its documentation promises for every such product: an fp32 bias beside a
// bf16 y is not among them), each output rounded from the fp32 value: GELU is taken of the
// unrounded pre, GELU' multiplies the unrounded dy·w. Row-major y[N, Out] is column-major
// yᵀ[Out, N] = op_T(w)·x, so the bias runs along D's rows, as cuBLASLt broadcasts it; dx[N,
// In] is dxᵀ[In × N] = w·dyᵀ, laid out as pre. A plan (descriptors and the heuristic's
// algorithm) is made once per shape, epilogue and output type and kept; those cuBLASLt has no
// kernel for are remembered too, and the calls return false for them (the caller then runs
// the unfused ops).
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
  // dx [n, in] = GELU'(gelu_pre) ⊙ (dy [n, out] · w [out, in]), gelu_pre [n, in]; all bf16.
  // False (nothing written) where cuBLASLt has no kernel for it.
  bool GeluBackward(const __nv_bfloat16* dy, const __nv_bfloat16* w, int64_t n, int64_t in, int64_t out,
                    const __nv_bfloat16* gelu_pre, __nv_bfloat16* dx, void* workspace, size_t workspace_bytes);
  // dw [out, in] += dy [n, out]ᵀ · x [n, in] (fp32, beta 1) and db [out] = Σ_n dy (fp32,
  // OVERWRITTEN: cuBLASLt writes the vector). False (nothing written) where cuBLASLt has no
  // kernel for it.
  bool WeightGradient(const __nv_bfloat16* dy, const __nv_bfloat16* x, int64_t n, int64_t in, int64_t out, float* dw,
                      float* db, void* workspace, size_t workspace_bytes);

 private:
  struct Plan {
    bool ok = false;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int>;  // n, in, out, epilogue, y type
  // The plan of `key`, made on first asking (the heuristic reads the pointers' alignment).
  Plan& PlanFor(const Key& key, const void* bias, const void* aux, size_t workspace_bytes);
  Plan MakePlan(int64_t n, int64_t in, int64_t out, cublasLtEpilogue_t epilogue, const void* bias, cudaDataType y_type,
                const void* aux, size_t workspace_bytes);
  // The product of a ready plan with these pointers: false (the plan destroyed: not again for
  // this shape) if cuBLASLt fails at run time.
  bool Run(Plan& p, const void* bias, const void* aux, const void* w, const void* b_operand, void* d, void* workspace,
           size_t workspace_bytes, float beta = 0.0f);
  void Destroy(Plan& p);
  static cublasLtEpilogue_t EpilogueFor(const void* b, const void* gelu_pre);
  static Key KeyFor(int64_t n, int64_t in, int64_t out, const void* b, cudaDataType y_type, const void* gelu_pre);

  const CublasApi* api_;
  cublasLtHandle_t handle_ = nullptr;
  std::map<Key, Plan> plans_;
};

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_LT_LINEAR_CUH_
