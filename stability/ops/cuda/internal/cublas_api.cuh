// cuBLAS and cuBLASLt, opened when a GPU backend starts instead of linked: linking libcublas
// costs every process ~215 MB of resident memory at start-up (measured: a test binary
// linking it peaks at 224 MB before main, 8 MB without), CPU runs and the Python module
// included. cuBLAS does the fp32 and batched products, cuBLASLt the bf16 linear layers
// with their bias (+ GELU) epilogues.
#ifndef STABILITY_OPS_CUDA_INTERNAL_CUBLAS_API_CUH_
#define STABILITY_OPS_CUDA_INTERNAL_CUBLAS_API_CUH_

#include <cublasLt.h>
#include <cublas_v2.h>

#include <string>

namespace stability::ops::cuda::internal {

// The entry points the backend uses, by their exported names (cublas_v2.h maps
// cublasCreate to cublasCreate_v2, cublasSgemm to cublasSgemm_v2).
struct CublasApi {
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
  cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float*,
                          const float*, int, const float*, int, const float*, float*, int);
  cublasStatus_t (*sgemm_strided_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                          const float*, const float*, int, long long, const float*, int, long long,
                                          const float*, float*, int, long long, int);
  cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                            const void*, const void*, cudaDataType, int, long long, const void*,
                                            cudaDataType, int, long long, const void*, void*, cudaDataType, int,
                                            long long, int, cublasComputeType_t, cublasGemmAlgo_t);

  cublasStatus_t (*lt_create)(cublasLtHandle_t*);
  cublasStatus_t (*lt_destroy)(cublasLtHandle_t);
  cublasStatus_t (*lt_matmul_desc_create)(cublasLtMatmulDesc_t*, cublasComputeType_t, cudaDataType_t);
  cublasStatus_t (*lt_matmul_desc_destroy)(cublasLtMatmulDesc_t);
  cublasStatus_t (*lt_matmul_desc_set_attribute)(cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t, const void*,
                                                 size_t);
  cublasStatus_t (*lt_matrix_layout_create)(cublasLtMatrixLayout_t*, cudaDataType, uint64_t, uint64_t, int64_t);
  cublasStatus_t (*lt_matrix_layout_destroy)(cublasLtMatrixLayout_t);
  cublasStatus_t (*lt_preference_create)(cublasLtMatmulPreference_t*);
  cublasStatus_t (*lt_preference_destroy)(cublasLtMatmulPreference_t);
  cublasStatus_t (*lt_preference_set_attribute)(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                const void*, size_t);
  cublasStatus_t (*lt_algo_get_heuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                          cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                          cublasLtMatmulPreference_t, int, cublasLtMatmulHeuristicResult_t*, int*);
  cublasStatus_t (*lt_matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void*, const void*,
                              cublasLtMatrixLayout_t, const void*, cublasLtMatrixLayout_t, const void*, const void*,
                              cublasLtMatrixLayout_t, void*, cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t*,
                              void*, size_t, cudaStream_t);
};

// Opens libcublas.so.13 and libcublasLt.so.13 (then the unversioned names) once; nullptr
// with the reason in *error when one of them or one of the entry points is missing.
const CublasApi* LoadCublas(std::string* error);

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_CUBLAS_API_CUH_
