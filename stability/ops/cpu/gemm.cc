#include "stability/ops/cpu/gemm.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "oneapi/dnnl/dnnl.h"
#include "stability/ops/cpu/internal/op_profile.h"

namespace stability::cpu {

absl::Status Sgemm(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                   int64_t ldc) {
  // A kernel profile's product row, named as the CUDA backend names its products.
  using ::stability::ops::cpu::internal::OpProfile, ::stability::ops::cpu::internal::OpScope;
  OpScope scope(OpProfile::Get().on() ? absl::StrFormat("sgemm %d×%d×%d", m, n, k) : std::string());
  if (m < 0 || n < 0 || k < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("Sgemm: negative size m=%d n=%d k=%d", m, n, k));
  }
  const int64_t a_cols = trans_a == Trans::kNo ? k : m;
  const int64_t b_cols = trans_b == Trans::kNo ? n : k;
  if (lda < std::max<int64_t>(1, a_cols) || ldb < std::max<int64_t>(1, b_cols) ||
      ldc < std::max<int64_t>(1, n)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "Sgemm: leading dimension too small (lda=%d needs >=%d, ldb=%d needs >=%d, ldc=%d needs >=%d)",
        lda, a_cols, ldb, b_cols, ldc, n));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  dnnl_status_t s = dnnl_sgemm(static_cast<char>(trans_a), static_cast<char>(trans_b), m, n, k,
                               alpha, a, lda, b, ldb, beta, c, ldc);
  if (s != dnnl_success) {
    return absl::InternalError(absl::StrFormat("oneDNN sgemm failed with status %d (m=%d n=%d k=%d)",
                                               static_cast<int>(s), m, n, k));
  }
  return absl::OkStatus();
}

void SgemmReference(Trans trans_a, Trans trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                    int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const float av = trans_a == Trans::kNo ? a[i * lda + p] : a[p * lda + i];
        const float bv = trans_b == Trans::kNo ? b[p * ldb + j] : b[j * ldb + p];
        acc += static_cast<double>(av) * bv;
      }
      // beta == 0 ignores C entirely (it may hold NaN), as BLAS does.
      const double prev = beta == 0.0f ? 0.0 : static_cast<double>(beta) * c[i * ldc + j];
      c[i * ldc + j] = static_cast<float>(alpha * acc + prev);
    }
  }
}

std::string GemmLibraryDescription() {
  const dnnl_version_t* v = dnnl_version();
  const char* runtime = v->cpu_runtime == DNNL_RUNTIME_OMP   ? "OpenMP"
                        : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
                        : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                                                             : "threadpool";
  return absl::StrFormat("oneDNN %d.%d.%d (%s)", v->major, v->minor, v->patch, runtime);
}

}  // namespace stability::cpu
