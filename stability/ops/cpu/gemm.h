// Row-major single-precision GEMM on the CPU, through oneDNN.
//
//   C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C[M,N]
//
// op(X) is X or Xᵀ. Leading dimensions are row strides (row-major), as in cblas with
// CblasRowMajor. oneDNN was chosen over OpenBLAS by measurement on this machine kind
// (README, "CPU GEMM library"; gemm_benchmark.cc reproduces the numbers). Threads come
// from OpenMP (OMP_NUM_THREADS); oneDNN picks its AVX-512 / AVX2 kernel at run time.
#ifndef STABILITY_OPS_CPU_GEMM_H_
#define STABILITY_OPS_CPU_GEMM_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace stability::cpu {

enum class Trans : char { kNo = 'N', kYes = 'T' };

absl::Status Sgemm(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc);

// The plain reference of Sgemm (double accumulation, one thread), for tests.
void SgemmReference(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc);

// "oneDNN 2.6.3 (OpenMP)": the library behind Sgemm and how it runs, for `stability info`.
std::string GemmLibraryDescription();

}  // namespace stability::cpu

#endif  // STABILITY_OPS_CPU_GEMM_H_
