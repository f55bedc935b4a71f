// σ-reparam on the GPU (math: ops/backend.h; the CPU's steps, cpu_backend.cc), for many layers
// at once: a model's every σ-reparam'd linear layer in 5 launches forward (3 without the
// power-iteration update) and 2 backward, instead of ~10 a layer (~480 a step at GPT-2 124M:
// the vectors are a layer wide, so launches, not bytes, were the cost). Layer k of a batch is
// blockIdx.y (blockIdx.x for the one-block-a-layer kernels).
//
// Forward, per layer:  v ← normalize(wᵀu) (update)      SigmaWtUKernel, SigmaNormalizeKernel
//                      wv = w v                          SigmaWvKernel (a warp a row)
//                      u ← normalize(wv) (update), σ = uᵀ wv   SigmaFinishKernel
//                      w_eff = (g/σ)·w                   SigmaScaleKernel
// Backward:            ⟨G, w⟩ partial sums (G = dw_eff)  SigmaDotPartialsKernel
//                      dw += (g/σ)·G − (g⟨G,w⟩/σ²)·u vᵀ,  dg += ⟨G, w⟩/σ   SigmaGradKernel
// Norms and σ in double, scales rounded to float, as the CPU's; grids and trees fixed by the sizes, so
// runs repeat bit for bit.
#include <algorithm>
#include <vector>

#include "stability/ops/cuda/internal/common.cuh"

namespace stability::ops::cuda::internal {
namespace {

// A batch of layers, passed by value (~3 KB of kernel parameters).
constexpr int kSigmaMaxLayers = 32;
struct SigmaBatch {
  const float* w[kSigmaMaxLayers];
  const float* g[kSigmaMaxLayers];
  float* u[kSigmaMaxLayers];
  float* v[kSigmaMaxLayers];
  float* sigma[kSigmaMaxLayers];
  float* w_eff[kSigmaMaxLayers];
  const float* dw_eff[kSigmaMaxLayers];
  float* dw[kSigmaMaxLayers];
  float* dg[kSigmaMaxLayers];
  int64_t out[kSigmaMaxLayers];
  int64_t in[kSigmaMaxLayers];
  int64_t wv_offset[kSigmaMaxLayers];  // layer k's w v in the scratch vector
  int32_t first_block[kSigmaMaxLayers + 1];  // layer k's blocks of ⟨G, w⟩ (ReduceBlocks(out·in))
  int count;
};
static_assert(sizeof(SigmaBatch) <= 4096, "kernel parameters are at most 4 KB before CUDA 12.1 / Volta");

constexpr int kThreads = 256;
constexpr int kScaleChunks = 64;  // blocks a layer of the elementwise kernels (grid-stride within, 4 at a time)

// v[j] = Σ_i w[i, j]·u[i]: a thread a column, rows in order (consecutive threads read
// consecutive columns of a row).
__global__ void SigmaWtUKernel(SigmaBatch b) {
  const int k = blockIdx.y;
  const int64_t in = b.in[k], out = b.out[k];
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= in) return;
  const float* w = b.w[k];
  const float* u = b.u[k];
  float s = 0.0f;
  for (int64_t i = 0; i < out; ++i) s += w[i * in + j] * u[i];
  b.v[k][j] = s;
}

// One block: dst ← src / max(‖src‖, 1e-12) over n values (dst may be src; each thread writes
// the values it read): the norm in double, the scale rounded to float, as the CPU's normalize.
__device__ void NormalizeInto(const float* src, int64_t n, float* dst) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += static_cast<double>(src[i]) * src[i];
  const float scale = static_cast<float>(1.0 / fmax(sqrt(BlockSum(s)), 1e-12));
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i] * scale;
}

// One block a layer: v normalised.
__global__ void SigmaNormalizeKernel(SigmaBatch b) {
  NormalizeInto(b.v[blockIdx.x], b.in[blockIdx.x], b.v[blockIdx.x]);
}

// wv[row] = Σ_j w[row, j]·v[j]: a warp a row.
__global__ void SigmaWvKernel(SigmaBatch b, float* wv) {
  const int k = blockIdx.y;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= b.out[k]) return;
  const int lane = threadIdx.x & 31;
  const int64_t in = b.in[k];
  const float* w = b.w[k] + row * in;
  const float* v = b.v[k];
  float s = 0.0f;
  for (int64_t j = lane; j < in; j += 32) s += w[j] * v[j];
  s = WarpSum(s);
  if (lane == 0) wv[b.wv_offset[k] + row] = s;
}

// One block a layer: u ← normalize(wv) (update), σ = uᵀ wv in double → sigma_d[k], *sigma.
__global__ void SigmaFinishKernel(SigmaBatch b, const float* wv_all, bool update, double* sigma_d) {
  const int k = blockIdx.x;
  const int64_t out = b.out[k];
  const float* wv = wv_all + b.wv_offset[k];
  float* u = b.u[k];
  if (update) NormalizeInto(wv, out, u);  // u is read below by the threads that wrote it
  double d = 0;
  for (int64_t i = threadIdx.x; i < out; i += blockDim.x) d += static_cast<double>(u[i]) * wv[i];
  d = BlockSum(d);
  if (threadIdx.x == 0) {
    sigma_d[k] = d;
    *b.sigma[k] = static_cast<float>(d);
  }
}

// w_eff = (g/σ)·w, the scale rounded to float as the CPU's.
__global__ void SigmaScaleKernel(SigmaBatch b, const double* sigma_d) {
  const int k = blockIdx.y;
  const int64_t n = b.out[k] * b.in[k];
  const float scale = static_cast<float>(*b.g[k] / sigma_d[k]);
  const float* w = b.w[k];
  float* w_eff = b.w_eff[k];
  GridStrideBatched<4>(
      blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, static_cast<int64_t>(gridDim.x) * blockDim.x, n,
      [&](int64_t i) { return scale * w[i]; }, [&](int64_t i, float v) { w_eff[i] = v; });
}

// partials[block] of ⟨G, w⟩ (DotPartialsKernel's grid and tree, per layer).
__global__ void SigmaDotPartialsKernel(SigmaBatch b, double* partials) {
  const int k = BufferOfBlock(b.first_block, b.count, blockIdx.x);
  const int64_t first = b.first_block[k];
  const double s =
      DotPartial(b.dw_eff[k], b.w[k], b.out[k] * b.in[k], blockIdx.x - first, b.first_block[k + 1] - first);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Each block sums the layer's partials (the same fixed order in every block: the same ⟨G, w⟩),
// then dw += a·G − c·u vᵀ with a = g/σ, c = g·⟨G, w⟩/σ²; block 0's thread 0 adds dg += ⟨G, w⟩/σ.
__global__ void SigmaGradKernel(SigmaBatch b, const double* partials) {
  const int k = blockIdx.y;
  const double gw = BlockSumInOrder(partials + b.first_block[k], b.first_block[k + 1] - b.first_block[k]);
  const float sigma = *b.sigma[k], g = *b.g[k];
  const float a = g / sigma;
  const float c = static_cast<float>(g * gw / (static_cast<double>(sigma) * sigma));
  if (blockIdx.x == 0 && threadIdx.x == 0) *b.dg[k] += static_cast<float>(gw / sigma);
  const int64_t in = b.in[k], n = b.out[k] * in;
  const float* G = b.dw_eff[k];
  const float* u = b.u[k];
  const float* v = b.v[k];
  float* dw = b.dw[k];
  GridStrideBatched<4>(
      blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, static_cast<int64_t>(gridDim.x) * blockDim.x, n,
      [&](int64_t i) { return dw[i] + (a * G[i] - c * u[i / in] * v[i % in]); },
      [&](int64_t i, float value) { dw[i] = value; });
}

// Layers [first, first + count) as a batch; the largest out and in, and Σ out (wv's size).
SigmaBatch BatchOf(const std::vector<Backend::SigmaReparamLayer>& layers, size_t first, int count, int64_t* max_out,
                   int64_t* max_in, int64_t* wv_size) {
  SigmaBatch b{};
  b.count = count;
  *max_out = *max_in = *wv_size = 0;
  for (int k = 0; k < count; ++k) {
    const Backend::SigmaReparamLayer& l = layers[first + k];
    b.w[k] = l.w;
    b.g[k] = l.g;
    b.u[k] = l.u;
    b.v[k] = l.v;
    b.sigma[k] = l.sigma;
    b.w_eff[k] = l.w_eff;
    b.dw_eff[k] = l.dw_eff;
    b.dw[k] = l.dw;
    b.dg[k] = l.dg;
    b.out[k] = l.out;
    b.in[k] = l.in;
    b.wv_offset[k] = *wv_size;
    b.first_block[k + 1] = b.first_block[k] + ReduceBlocks(l.out * l.in);
    *wv_size += l.out;
    *max_out = std::max(*max_out, l.out);
    *max_in = std::max(*max_in, l.in);
  }
  return b;
}

}  // namespace

void CudaBackend::SigmaReparamForwardEach(const std::vector<SigmaReparamLayer>& layers, bool update) {
  for (size_t first = 0; first < layers.size(); first += kSigmaMaxLayers) {
    const int count = static_cast<int>(std::min<size_t>(kSigmaMaxLayers, layers.size() - first));
    int64_t max_out = 0, max_in = 0, wv_size = 0;
    const SigmaBatch b = BatchOf(layers, first, count, &max_out, &max_in, &wv_size);
    auto* wv = static_cast<float*>(Scratch(kVector, std::max<int64_t>(wv_size, 1) * sizeof(float)));
    auto* sigma_d = static_cast<double*>(Scratch(kSigma, kSigmaMaxLayers * sizeof(double)));
    if (update) {
      SigmaWtUKernel<<<dim3(Blocks(max_in, kThreads), count), kThreads>>>(b);
      STABILITY_CUDA_LAUNCHED("SigmaWtUKernel");
      SigmaNormalizeKernel<<<count, 1024>>>(b);
      STABILITY_CUDA_LAUNCHED("SigmaNormalizeKernel");
    }
    SigmaWvKernel<<<dim3(Blocks(max_out, kThreads / 32), count), kThreads>>>(b, wv);
    STABILITY_CUDA_LAUNCHED("SigmaWvKernel");
    SigmaFinishKernel<<<count, 1024>>>(b, wv, update, sigma_d);
    STABILITY_CUDA_LAUNCHED("SigmaFinishKernel");
    SigmaScaleKernel<<<dim3(kScaleChunks, count), kThreads>>>(b, sigma_d);
    STABILITY_CUDA_LAUNCHED("SigmaScaleKernel");
  }
}

void CudaBackend::SigmaReparamBackwardEach(const std::vector<SigmaReparamLayer>& layers) {
  for (size_t first = 0; first < layers.size(); first += kSigmaMaxLayers) {
    const int count = static_cast<int>(std::min<size_t>(kSigmaMaxLayers, layers.size() - first));
    int64_t max_out = 0, max_in = 0, wv_size = 0;
    const SigmaBatch b = BatchOf(layers, first, count, &max_out, &max_in, &wv_size);
    auto* partials = static_cast<double*>(Scratch(kEachPartials, b.first_block[count] * sizeof(double)));
    SigmaDotPartialsKernel<<<b.first_block[count], kReduceThreads>>>(b, partials);
    STABILITY_CUDA_LAUNCHED("SigmaDotPartialsKernel");
    SigmaGradKernel<<<dim3(kScaleChunks, count), kThreads>>>(b, partials);
    STABILITY_CUDA_LAUNCHED("SigmaGradKernel");
  }
}

void CudaBackend::SigmaReparamForward(const float* w, const float* g, int64_t out, int64_t in, bool update, float* u,
                                      float* v, float* sigma, float* w_eff) {
  SigmaReparamForwardEach({{w, g, out, in, u, v, sigma, w_eff, nullptr, nullptr, nullptr}}, update);
}

void CudaBackend::SigmaReparamBackward(const float* w, const float* g, const float* sigma, const float* u,
                                       const float* v, const float* dw_eff, int64_t out, int64_t in, float* dw,
                                       float* dg) {
  SigmaReparamBackwardEach({{w, g, out, in, const_cast<float*>(u), const_cast<float*>(v), const_cast<float*>(sigma),
                             nullptr, dw_eff, dw, dg}});
}

}  // namespace stability::ops::cuda::internal
