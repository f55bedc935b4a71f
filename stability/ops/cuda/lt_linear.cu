// cuBLASLt plans for the bf16 linear forward with fused epilogues (internal/lt_linear.cuh).
#include "stability/ops/cuda/internal/lt_linear.cuh"

#include "stability/ops/cuda/internal/common.cuh"

namespace stability::ops::cuda::internal {

LtLinear::LtLinear(const CublasApi* api) : api_(api) { Check(api_->lt_create(&handle_), "cublasLtCreate"); }

LtLinear::~LtLinear() {
  for (auto& [key, plan] : plans_) Destroy(plan);
  if (handle_) api_->lt_destroy(handle_);
}

void LtLinear::Destroy(Plan& p) {
  if (p.desc) api_->lt_matmul_desc_destroy(p.desc);
  for (cublasLtMatrixLayout_t l : {p.a, p.b, p.d}) {
    if (l) api_->lt_matrix_layout_destroy(l);
  }
  p = Plan{};
}

// Column-major. Forward: D = y [Out × N] = op_T(A)·x, A = w [In × Out], B = x [In × N]. DGELU:
// D = dx [In × N] = A·dyᵀ, A = w, B = dyᵀ [Out × N]. The aux (pre) is laid out as D. BGRADB:
// D = dwᵀ [In × Out] = A·op_T(B), A = xᵀ [In × N], B = dyᵀ [Out × N] (k = N), the bias
// gradient the sums of op_T(B)'s columns.
LtLinear::Plan LtLinear::MakePlan(int64_t n, int64_t in, int64_t out, cublasLtEpilogue_t epilogue, const void* bias,
                                  cudaDataType y_type, const void* aux, size_t workspace_bytes) {
  Plan p;
  const bool backward = epilogue == CUBLASLT_EPILOGUE_DGELU, weight = epilogue == CUBLASLT_EPILOGUE_BGRADB;
  const cublasOperation_t ta = backward || weight ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t tb = weight ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int64_t a_cols = weight ? n : out, b_rows = backward || weight ? out : in;
  const int64_t d_rows = backward || weight ? in : out, d_cols = weight ? out : n;
  const int64_t aux_ld = d_rows;
  bool ok = api_->lt_matmul_desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS;
  const auto set = [&](cublasLtMatmulDescAttributes_t attr, const void* value, size_t size) {
    ok = ok && api_->lt_matmul_desc_set_attribute(p.desc, attr, value, size) == CUBLAS_STATUS_SUCCESS;
  };
  set(CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  set(CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  set(CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
  // The heuristic reads the pointers' alignment, so the real ones are set before it.
  if (bias) set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
  if (aux) {
    set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux));
    set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld));
  }
  ok = ok && api_->lt_matrix_layout_create(&p.a, CUDA_R_16BF, in, a_cols, in) == CUBLAS_STATUS_SUCCESS;
  ok = ok && api_->lt_matrix_layout_create(&p.b, CUDA_R_16BF, b_rows, n, b_rows) == CUBLAS_STATUS_SUCCESS;
  ok = ok && api_->lt_matrix_layout_create(&p.d, y_type, d_rows, d_cols, d_rows) == CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulPreference_t pref = nullptr;
  ok = ok && api_->lt_preference_create(&pref) == CUBLAS_STATUS_SUCCESS;
  const uint64_t ws = workspace_bytes;
  ok = ok && api_->lt_preference_set_attribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)) ==
                 CUBLAS_STATUS_SUCCESS;
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  ok = ok && api_->lt_algo_get_heuristic(handle_, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &found) ==
                 CUBLAS_STATUS_SUCCESS && found > 0;
  if (pref) api_->lt_preference_destroy(pref);
  if (!ok) {
    Destroy(p);
    return p;  // remembered as unsupported
  }
  p.algo = result.algo;
  p.ok = true;
  return p;
}

cublasLtEpilogue_t LtLinear::EpilogueFor(const void* b, const void* gelu_pre) {
  return gelu_pre ? (b ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                  : (b ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
}

LtLinear::Key LtLinear::KeyFor(int64_t n, int64_t in, int64_t out, const void* b, cudaDataType y_type,
                               const void* gelu_pre) {
  return {n, in, out, static_cast<int>(EpilogueFor(b, gelu_pre)), static_cast<int>(y_type)};
}

LtLinear::Plan& LtLinear::PlanFor(const Key& key, const void* bias, const void* aux, size_t workspace_bytes) {
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    const auto& [n, in, out, epilogue, y_type] = key;
    it = plans_
             .emplace(key, MakePlan(n, in, out, static_cast<cublasLtEpilogue_t>(epilogue), bias,
                                    static_cast<cudaDataType>(y_type), aux, workspace_bytes))
             .first;
  }
  return it->second;
}

bool LtLinear::Ready(int64_t n, int64_t in, int64_t out, const void* b, cudaDataType y_type, void* gelu_pre,
                     size_t workspace_bytes) {
  if (gelu_pre && out % 8 != 0) return false;  // the aux output's leading dimension
  return PlanFor(KeyFor(n, in, out, b, y_type, gelu_pre), b, gelu_pre, workspace_bytes).ok;
}

bool LtLinear::Run(Plan& p, const void* bias, const void* aux, const void* w, const void* b_operand, void* d,
                   void* workspace, size_t workspace_bytes, float beta) {
  if (bias) {
    Check(api_->lt_matmul_desc_set_attribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
          "cublasLtMatmulDescSetAttribute (bias)");
  }
  if (aux) {
    Check(api_->lt_matmul_desc_set_attribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)),
          "cublasLtMatmulDescSetAttribute (aux)");
  }
  const float alpha = 1.0f;
  if (api_->lt_matmul(handle_, p.desc, &alpha, w, p.a, b_operand, p.b, &beta, d, p.d, d, p.d, &p.algo, workspace,
                      workspace_bytes, nullptr) != CUBLAS_STATUS_SUCCESS) {
    Destroy(p);  // not again for this shape: the unfused ops take over
    return false;
  }
  return true;
}

bool LtLinear::Forward(const __nv_bfloat16* x, const __nv_bfloat16* w, const void* b, int64_t n, int64_t in,
                       int64_t out, void* y, cudaDataType y_type, void* gelu_pre, void* workspace,
                       size_t workspace_bytes) {
  auto it = plans_.find(KeyFor(n, in, out, b, y_type, gelu_pre));
  if (it == plans_.end() || !it->second.ok) return false;
  if (!Run(it->second, b, gelu_pre, w, x, y, workspace, workspace_bytes)) return false;
  MarkProduct(gelu_pre ? "cublasLt bf16 + bias + GELU" : b ? "cublasLt bf16 + bias" : "cublasLt bf16", n, out, in);
  return true;
}

bool LtLinear::GeluBackward(const __nv_bfloat16* dy, const __nv_bfloat16* w, int64_t n, int64_t in, int64_t out,
                            const __nv_bfloat16* gelu_pre, __nv_bfloat16* dx, void* workspace, size_t workspace_bytes) {
  if (in % 8 != 0) return false;  // the aux input's leading dimension
  const Key key{n, in, out, static_cast<int>(CUBLASLT_EPILOGUE_DGELU), static_cast<int>(CUDA_R_16BF)};
  Plan& p = PlanFor(key, nullptr, gelu_pre, workspace_bytes);
  if (!p.ok || !Run(p, nullptr, gelu_pre, w, dy, dx, workspace, workspace_bytes)) return false;
  MarkProduct("cublasLt bf16 + DGELU", n, in, out);
  return true;
}

bool LtLinear::WeightGradient(const __nv_bfloat16* dy, const __nv_bfloat16* x, int64_t n, int64_t in, int64_t out,
                              float* dw, float* db, void* workspace, size_t workspace_bytes) {
  const Key key{n, in, out, static_cast<int>(CUBLASLT_EPILOGUE_BGRADB), static_cast<int>(CUDA_R_32F)};
  Plan& p = PlanFor(key, db, nullptr, workspace_bytes);
  if (!p.ok || !Run(p, db, nullptr, x, dy, dw, workspace, workspace_bytes, 1.0f)) return false;
  MarkProduct("cublasLt bf16 + BGRADB", out, in, n);
  return true;
}

}  // namespace stability::ops::cuda::internal
