// cuBLAS, opened when a GPU backend starts instead of linked: linking libcublas costs every
// process ~215 MB of resident memory at start-up (measured: a test binary linking it peaks
// at 224 MB before main, 8 MB without), CPU runs and the Python module included.
#ifndef STABILITY_OPS_CUDA_INTERNAL_CUBLAS_API_CUH_
#define STABILITY_OPS_CUDA_INTERNAL_CUBLAS_API_CUH_

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
};

// Opens libcublas.so.13 (then libcublas.so) once; nullptr with the reason in *error when it
// or one of the entry points is missing.
const CublasApi* LoadCublas(std::string* error);

}  // namespace stability::ops::cuda::internal

#endif  // STABILITY_OPS_CUDA_INTERNAL_CUBLAS_API_CUH_
