// LoadCublas: cuBLAS and cuBLASLt opened with dlopen (internal/cublas_api.cuh says why). The
// CUDA emulator answers the same call with its CPU products (emulator/cublas.cc).
#include <dlfcn.h>

#include <initializer_list>
#include <string>
#include <type_traits>

#include "stability/ops/cuda/internal/cublas_api.cuh"

namespace stability::ops::cuda::internal {

const CublasApi* LoadCublas(std::string* error) {
  static std::string load_error;
  static const CublasApi* api = []() -> const CublasApi* {
    const auto open = [](std::initializer_list<const char*> names) -> void* {
      for (const char* name : names) {
        if (void* lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) return lib;
      }
      load_error = std::string("cannot open ") + *names.begin() + ": " + dlerror();
      return nullptr;
    };
    void* blas = open({"libcublas.so.13", "libcublas.so"});
    void* lt = blas ? open({"libcublasLt.so.13", "libcublasLt.so"}) : nullptr;
    if (lt == nullptr) return nullptr;
    auto* a = new CublasApi;
    bool ok = true;
    const auto bind = [&](void* lib, auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, symbol));
      if (fn == nullptr) ok = false, load_error = std::string("cuBLAS has no ") + symbol;
    };
    bind(blas, a->create, "cublasCreate_v2");
    bind(blas, a->destroy, "cublasDestroy_v2");
    bind(blas, a->set_math_mode, "cublasSetMathMode");
    bind(blas, a->sgemm, "cublasSgemm_v2");
    bind(blas, a->sgemm_strided_batched, "cublasSgemmStridedBatched");
    bind(blas, a->gemm_strided_batched_ex, "cublasGemmStridedBatchedEx");
    bind(lt, a->lt_create, "cublasLtCreate");
    bind(lt, a->lt_destroy, "cublasLtDestroy");
    bind(lt, a->lt_matmul_desc_create, "cublasLtMatmulDescCreate");
    bind(lt, a->lt_matmul_desc_destroy, "cublasLtMatmulDescDestroy");
    bind(lt, a->lt_matmul_desc_set_attribute, "cublasLtMatmulDescSetAttribute");
    bind(lt, a->lt_matrix_layout_create, "cublasLtMatrixLayoutCreate");
    bind(lt, a->lt_matrix_layout_destroy, "cublasLtMatrixLayoutDestroy");
    bind(lt, a->lt_preference_create, "cublasLtMatmulPreferenceCreate");
    bind(lt, a->lt_preference_destroy, "cublasLtMatmulPreferenceDestroy");
    bind(lt, a->lt_preference_set_attribute, "cublasLtMatmulPreferenceSetAttribute");
    bind(lt, a->lt_algo_get_heuristic, "cublasLtMatmulAlgoGetHeuristic");
    bind(lt, a->lt_matmul, "cublasLtMatmul");
    if (!ok) {
      delete a;
      return nullptr;
    }
    return a;
  }();
  if (api == nullptr && error != nullptr) *error = load_error;
  return api;
}

}  // namespace stability::ops::cuda::internal
