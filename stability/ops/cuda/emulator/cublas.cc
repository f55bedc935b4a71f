// cuBLAS and cuBLASLt on the emulated GPU: the entry points of internal::CublasApi with
// their documented semantics (column-major operands, op(A)/op(B), leading dimensions,
// strided batches, beta = 0 never reading C, bf16 operands with fp32 accumulation, bf16 or
// fp32 outputs; cuBLASLt's BIAS, GELU_AUX(_BIAS), DGELU and BGRADB epilogues, GELU its tanh form
// of the unrounded value, DGELU its derivative at the aux input times the unrounded product,
// BGRADB the sums of op(B) over k (D's columns: the bias gradient of a weight-gradient product,
// summed in fp32 in k's order, alpha not applied, overwriting the vector), the
// bias vector and the aux matrix of D's type: its documented defaults,
// the only ones modelled — BIAS_DATA_TYPE and EPILOGUE_AUX_DATA_TYPE answer NOT_SUPPORTED), computed
// on the CPU in fp32 (oneDNN's SGEMM on the operands widened to fp32: a bf16 product is
// exact in fp32, as on the tensor cores). Each call checks its arguments as cuBLAS does and answers
// CUBLAS_STATUS_INVALID_VALUE (or NOT_SUPPORTED) where cuBLAS would.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.h"
#include "stability/ops/cuda/internal/cublas_api.cuh"

struct cublasContext {
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
};
struct cublasLtContext {};

namespace stability::ops::cuda::internal {
namespace {

struct LtDesc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // D's type
  void* aux = nullptr;         // D's type
  int64_t aux_ld = 0;
};
struct LtLayout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};

LtDesc* Desc(cublasLtMatmulDesc_t d) { return reinterpret_cast<LtDesc*>(d); }
LtLayout* Layout(cublasLtMatrixLayout_t l) { return reinterpret_cast<LtLayout*>(l); }

float Load(const void* p, cudaDataType t, int64_t i) {
  return t == CUDA_R_16BF ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]) : static_cast<const float*>(p)[i];
}
void Store(void* p, cudaDataType t, int64_t i, float v) {
  if (t == CUDA_R_16BF) {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(p)[i] = v;
  }
}

// op(X) as a dense row-major [rows × depth] fp32 matrix: row r holds op(X)(r, 0..depth).
// Column-major X: op N gives op(X)(r, l) = X[r + l·ld], op T gives X[l + r·ld].
std::vector<float> Rows(const void* x, cudaDataType t, cublasOperation_t op, int64_t rows, int64_t depth, int64_t ld) {
  std::vector<float> out(rows * depth);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t l = 0; l < depth; ++l) out[r * depth + l] = Load(x, t, op == CUBLAS_OP_N ? r + l * ld : l + r * ld);
  }
  return out;
}

// C[m × n] (column-major, ldc) = alpha·op(A)·op(B) + beta·C, then `finish` on each value.
// The fp32 product itself is oneDNN's SGEMM (the CPU backend's GEMM library).
template <typename Finish>
void Product(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
             cudaDataType at, int64_t lda, const void* b, cudaDataType bt, int64_t ldb, float beta, void* c,
             cudaDataType ct, int64_t ldc, Finish finish) {
  if (m == 0 || n == 0) return;
  const std::vector<float> ar = Rows(a, at, ta, m, k, lda);
  // op(B) is [k × n]; its columns are the rows of op(B)ᵀ, so flip the op.
  const std::vector<float> bc = Rows(b, bt, tb == CUBLAS_OP_N ? CUBLAS_OP_T : CUBLAS_OP_N, n, k, ldb);
  // Row-major R[n × m] = bc · arᵀ is column-major op(A)·op(B) with leading dimension m.
  std::vector<float> r(m * n, 0.0f);
  if (k > 0 && dnnl_sgemm('N', 'T', n, m, k, 1.0f, bc.data(), k, ar.data(), k, 0.0f, r.data(), m) != dnnl_success) {
    std::fprintf(stderr, "CUDA emulator: dnnl_sgemm failed\n");
    std::abort();
  }
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      float v = alpha * r[j * m + i];
      if (beta != 0.0f) v += beta * Load(c, ct, i + j * ldc);  // beta = 0: C is not read
      Store(c, ct, i + j * ldc, finish(i, j, v));
    }
  }
}

size_t Bytes(cudaDataType t) { return t == CUDA_R_16BF ? 2 : 4; }
const char* TypeName(cudaDataType t) { return t == CUDA_R_16BF ? "bf16" : "fp32"; }

// A product's device-memory traffic for the traffic counter (traffic.h): A, B (once when
// every batch shares it: stride 0), C when beta reads it, D, plus what an epilogue reads and
// writes; and its flops, named by the call and the shape.
void Account(const char* api, int64_t m, int64_t n, int64_t k, int64_t batch, cudaDataType at, bool a_shared,
             cudaDataType bt, bool b_shared, cudaDataType ct, float beta, double extra_read = 0,
             double extra_written = 0) {
  const double a = double(m) * k * Bytes(at) * (a_shared ? 1 : batch),
               b = double(k) * n * Bytes(bt) * (b_shared ? 1 : batch);
  const double c = double(m) * n * Bytes(ct) * batch;
  std::string name = std::string(api) + " " + TypeName(at) + "→" + TypeName(ct) + " " + std::to_string(m) + "×" +
                     std::to_string(n) + "×" + std::to_string(k);
  if (batch != 1) name += " ×" + std::to_string(batch);
  emu::LibraryWork(name.c_str(), a + b + (beta != 0.0f ? c : 0) + extra_read, c + extra_written,
                   2.0 * m * n * k * batch);
}

bool BadShape(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int lda, int ldb, int ldc) {
  if (m < 0 || n < 0 || k < 0) return true;
  if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k) || ldb < std::max(1, tb == CUBLAS_OP_N ? k : n)) return true;
  return ldc < std::max(1, m);
}

cublasStatus_t Create(cublasHandle_t* h) {
  *h = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t Destroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t SetMathMode(cublasHandle_t h, cublasMath_t mode) {
  h->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t SgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const float* alpha, const float* a, int lda, long long sa, const float* b, int ldb,
                                   long long sb, const float* beta, float* c, int ldc, long long sc, int batch) {
  if (BadShape(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  for (int i = 0; i < batch; ++i) {
    Product(ta, tb, m, n, k, *alpha, a + i * sa, CUDA_R_32F, lda, b + i * sb, CUDA_R_32F, ldb, *beta, c + i * sc,
            CUDA_R_32F, ldc, [](int64_t, int64_t, float v) { return v; });
  }
  Account("cublasSgemm", m, n, k, batch, CUDA_R_32F, sa == 0, CUDA_R_32F, sb == 0, CUDA_R_32F, *beta);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t Sgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                     const float* alpha, const float* a, int lda, const float* b, int ldb, const float* beta, float* c,
                     int ldc) {
  return SgemmStridedBatched(h, ta, tb, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1);
}

cublasStatus_t GemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                    const void* alpha, const void* a, cudaDataType at, int lda, long long sa,
                                    const void* b, cudaDataType bt, int ldb, long long sb, const void* beta, void* c,
                                    cudaDataType ct, int ldc, long long sc, int batch, cublasComputeType_t compute,
                                    cublasGemmAlgo_t) {
  if (BadShape(ta, tb, m, n, k, lda, ldb, ldc) || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  for (cudaDataType t : {at, bt, ct}) {
    if (t != CUDA_R_16BF && t != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_NOT_SUPPORTED;  // the only one the backend asks for
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  for (int i = 0; i < batch; ++i) {
    Product(ta, tb, m, n, k, al, static_cast<const char*>(a) + i * sa * Bytes(at), at, lda,
            static_cast<const char*>(b) + i * sb * Bytes(bt), bt, ldb, be, static_cast<char*>(c) + i * sc * Bytes(ct),
            ct, ldc, [](int64_t, int64_t, float v) { return v; });
  }
  Account("cublasGemmEx", m, n, k, batch, at, sa == 0, bt, sb == 0, ct, be);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t LtCreate(cublasLtHandle_t* h) {
  *h = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t LtDestroy(cublasLtHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t LtDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  *d = reinterpret_cast<cublasLtMatmulDesc_t>(new LtDesc{compute, scale});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t LtDescDestroy(cublasLtMatmulDesc_t d) {
  delete Desc(d);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t LtDescSet(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const void* value, size_t size) {
  LtDesc* desc = Desc(d);
  const auto take = [&](auto& field) {
    if (size != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, value, size);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      return take(desc->ta);
    case CUBLASLT_MATMUL_DESC_TRANSB:
      return take(desc->tb);
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      return take(desc->epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return take(desc->bias);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
      return take(desc->aux);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
      return take(desc->aux_ld);
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}
cublasStatus_t LtLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld) {
  if (ld < static_cast<int64_t>(rows)) return CUBLAS_STATUS_INVALID_VALUE;
  *l = reinterpret_cast<cublasLtMatrixLayout_t>(new LtLayout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t LtLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete Layout(l);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t LtPrefCreate(cublasLtMatmulPreference_t* p) {
  *p = reinterpret_cast<cublasLtMatmulPreference_t>(new uint64_t(0));
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t LtPrefDestroy(cublasLtMatmulPreference_t p) {
  delete reinterpret_cast<uint64_t*>(p);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t LtPrefSet(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, const void* value,
                         size_t size) {
  if (attr != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES || size != sizeof(uint64_t)) return CUBLAS_STATUS_NOT_SUPPORTED;
  std::memcpy(reinterpret_cast<uint64_t*>(p), value, size);
  return CUBLAS_STATUS_SUCCESS;
}

bool SupportedEpilogue(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_DEFAULT || e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_GELU_AUX ||
         e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || e == CUBLASLT_EPILOGUE_DGELU || e == CUBLASLT_EPILOGUE_BGRADB;
}
bool GeluEpilogue(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_GELU_AUX || e == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
}
// The epilogues with an aux matrix (written by GELU_AUX, read by DGELU).
bool AuxEpilogue(cublasLtEpilogue_t e) { return GeluEpilogue(e) || e == CUBLASLT_EPILOGUE_DGELU; }

// D's shape must be op(A)·op(B)'s; the aux output needs its pointer and a leading dimension
// of at least D's rows (a multiple of 8, as cuBLASLt asks).
bool Consistent(const LtDesc& d, const LtLayout& a, const LtLayout& b, const LtLayout& c, const LtLayout& out) {
  const uint64_t m = d.ta == CUBLAS_OP_N ? a.rows : a.cols, ka = d.ta == CUBLAS_OP_N ? a.cols : a.rows;
  const uint64_t kb = d.tb == CUBLAS_OP_N ? b.rows : b.cols, n = d.tb == CUBLAS_OP_N ? b.cols : b.rows;
  if (ka != kb || out.rows != m || out.cols != n || c.rows != m || c.cols != n) return false;
  if (AuxEpilogue(d.epilogue) && (d.aux == nullptr || d.aux_ld < static_cast<int64_t>(m) || d.aux_ld % 8 != 0)) {
    return false;
  }
  if ((d.epilogue == CUBLASLT_EPILOGUE_BIAS || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
       d.epilogue == CUBLASLT_EPILOGUE_BGRADB) &&
      d.bias == nullptr) {
    return false;
  }
  return true;
}

cublasStatus_t LtHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                           cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t out, cublasLtMatmulPreference_t,
                           int requested, cublasLtMatmulHeuristicResult_t* result, int* found) {
  *found = 0;
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  if (!SupportedEpilogue(Desc(d)->epilogue) ||
      !Consistent(*Desc(d), *Layout(a), *Layout(b), *Layout(c), *Layout(out))) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  std::memset(result, 0, sizeof(*result));
  result->state = CUBLAS_STATUS_SUCCESS;
  result->wavesCount = 1.0f;
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)

cublasStatus_t LtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t dd, const void* alpha, const void* a,
                        cublasLtMatrixLayout_t al, const void* b, cublasLtMatrixLayout_t bl, const void* beta,
                        const void* c, cublasLtMatrixLayout_t cl, void* d, cublasLtMatrixLayout_t dl,
                        const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t) {
  const LtDesc& desc = *Desc(dd);
  const LtLayout &la = *Layout(al), &lb = *Layout(bl), &lc = *Layout(cl), &ld = *Layout(dl);
  if (!SupportedEpilogue(desc.epilogue) || !Consistent(desc, la, lb, lc, ld)) return CUBLAS_STATUS_INVALID_VALUE;
  const float be = *static_cast<const float*>(beta);
  if (be != 0.0f && (c != d || lc.ld != ld.ld || lc.type != ld.type)) return CUBLAS_STATUS_NOT_SUPPORTED;
  const int64_t m = ld.rows, n = ld.cols, k = desc.ta == CUBLAS_OP_N ? la.cols : la.rows;
  const bool bias = desc.epilogue == CUBLASLT_EPILOGUE_BIAS || desc.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const bool gelu = GeluEpilogue(desc.epilogue), dgelu = desc.epilogue == CUBLASLT_EPILOGUE_DGELU;
  const bool bgradb = desc.epilogue == CUBLASLT_EPILOGUE_BGRADB;
  if (bgradb) {
    for (int64_t j = 0; j < n; ++j) {
      float sum = 0;
      for (int64_t kk = 0; kk < k; ++kk) {
        sum += Load(b, lb.type, desc.tb == CUBLAS_OP_N ? kk + j * lb.ld : j + kk * lb.ld);
      }
      Store(const_cast<void*>(desc.bias), ld.type, j, sum);
    }
  }
  Product(desc.ta, desc.tb, m, n, k, *static_cast<const float*>(alpha), a, la.type, la.ld, b, lb.type, lb.ld, be, d,
          ld.type, ld.ld, [&](int64_t i, int64_t j, float v) {
            if (bias) v += Load(desc.bias, ld.type, i);  // along D's rows
            if (dgelu) {
              const float x = Load(desc.aux, ld.type, i + j * desc.aux_ld);
              const float th = std::tanh(kGeluScale * (x + 0.044715f * x * x * x));
              return v *
                     (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * kGeluScale * (1.0f + 3 * 0.044715f * x * x));
            }
            if (!gelu) return v;
            Store(desc.aux, ld.type, i + j * desc.aux_ld, v);
            return 0.5f * v * (1.0f + std::tanh(kGeluScale * (v + 0.044715f * v * v * v)));
          });
  const double aux_bytes = double(Bytes(ld.type)) * m * n;
  Account(bias && gelu ? "cublasLt + bias + GELU"
          : bias       ? "cublasLt + bias"
          : gelu       ? "cublasLt + GELU"
          : dgelu      ? "cublasLt + DGELU"
          : bgradb     ? "cublasLt + BGRADB"
                       : "cublasLt",
          m, n, k, 1, la.type, false, lb.type, false, ld.type, be,
          (bias ? double(Bytes(ld.type)) * m : 0.0) + (dgelu ? aux_bytes : 0.0),
          (gelu ? aux_bytes : 0.0) + (bgradb ? double(Bytes(ld.type)) * n : 0.0));
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

const CublasApi* LoadCublas(std::string*) {
  static const CublasApi api = {
      Create,          Destroy,      SetMathMode,   Sgemm,         SgemmStridedBatched, GemmStridedBatchedEx,
      LtCreate,        LtDestroy,    LtDescCreate,  LtDescDestroy, LtDescSet,           LtLayoutCreate,
      LtLayoutDestroy, LtPrefCreate, LtPrefDestroy, LtPrefSet,     LtHeuristic,         LtMatmul,
  };
  return &api;
}

}  // namespace stability::ops::cuda::internal
