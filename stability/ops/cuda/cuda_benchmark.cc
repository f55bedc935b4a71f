// Microbenchmarks of the CUDA backend's ops at the shapes of the GPT-2 124M preset
// (B 8 × T 1024, C 768, 12 heads, vocab 50,257) and the paper's 830M shape (C 1024, 16 heads,
// B 4 × T 1024), with FLOP/s and bytes/s counters. Every benchmark skips itself where no
// GPU is visible (CI, the developers' machines); tools/gpu_check.sh runs them on a GPU:
//   bazel run //stability/ops/cuda:benchmarks
// Timing: CUDA events around the ops' kernels (Google Benchmark's manual time), after a
// synchronising warm-up call, so launches are counted and host work between calls is not.
#ifdef STABILITY_HAS_CUDA
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include "benchmark/benchmark.h"
#include "stability/base/rng.h"
#include "stability/ops/cuda/cuda_backend.h"

namespace stability::ops::cuda {
namespace {

Backend* Gpu() {
  static Backend* gpu = [] {
    absl::StatusOr<Backend*> be = InitCudaBackend(0);
    return be.ok() ? *be : nullptr;
  }();
  return gpu;
}

struct Shape {
  const char* name;
  int64_t b, t, h, hd, v;
};
// The presets' shapes (model/config.cc): the 830M one is 16 heads of 64 (C = 1024) with a
// 256K vocabulary.
const Shape kShapes[] = {{"gpt2_124m", 8, 1024, 12, 64, 50257}, {"paper_830m", 4, 1024, 16, 64, 256000}};

Tensor Random(int64_t n, uint64_t seed = 1) {
  Rng rng(seed);
  std::vector<float> host(n);
  for (float& x : host) x = static_cast<float>(rng.Normal());
  Tensor t = Tensor::Empty({n}, DType::kF32, Gpu()->device());
  t.CopyFromHost(host.data());
  return t;
}

// Runs `op` once to warm up, then times each iteration with CUDA events.
template <typename Op>
void Timed(benchmark::State& state, Op op) {
  op();
  cudaDeviceSynchronize();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (auto _ : state) {
    cudaEventRecord(start);
    op();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

void Report(benchmark::State& state, double flops, double bytes) {
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
}

#define SKIP_WITHOUT_GPU(state)                          \
  if (Gpu() == nullptr) {                                \
    state.SkipWithError("no GPU visible: skipped");      \
    return;                                              \
  }

// args: shape, which (0 QKV, 1 FC1, 2 FC2, 3 LM head), backward, bf16 (0: fp32 SGEMM,
// 1: bf16 tensor cores; the forward through cuBLASLt with the bias, and for FC1 the GELU,
// in the epilogue)
void BM_Linear(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const Shape s = kShapes[state.range(0)];
  const int64_t c = s.h * s.hd, n = s.b * s.t;
  const int64_t sizes[4][2] = {{c, 3 * c}, {c, 4 * c}, {4 * c, c}, {c, s.v}};
  const int64_t layer = state.range(1), in = sizes[layer][0], out = sizes[layer][1];
  const bool backward = state.range(2) == 1;
  Backend* be = Gpu();
  be->SetMatmulPrecision(state.range(3) == 1 ? MatmulPrecision::kBf16 : MatmulPrecision::kFp32);
  Tensor x = Random(n * in), w = Random(out * in, 2), b = Random(out, 4), y = Random(n * out, 3),
         act = Random(n * out, 5), dx = Random(n * in), dw = Random(out * in);
  const float* bias = layer == 3 ? nullptr : b.f32();  // the LM head has none
  Timed(state, [&] {
    if (backward) {
      be->LinearBackward(x.f32(), w.f32(), y.f32(), n, in, out, dx.f32(), dw.f32(), nullptr, nullptr);
    } else if (layer == 1) {
      be->LinearActivationForward(Activation::kGelu, x.f32(), w.f32(), bias, n, in, out, y.f32(), act.f32(), nullptr,
                                  nullptr);
    } else {
      be->LinearForward(x.f32(), w.f32(), bias, n, in, out, y.f32(), nullptr, nullptr);
    }
  });
  be->SetMatmulPrecision(MatmulPrecision::kFp32);
  Report(state, (backward ? 4.0 : 2.0) * n * in * out, 4.0 * (n * in + out * in + n * out));
}
BENCHMARK(BM_Linear)
    ->ArgNames({"shape", "layer", "backward", "bf16"})
    ->ArgsProduct({{0, 1}, {0, 1, 2, 3}, {0, 1}, {0, 1}})
    ->UseManualTime();

// FC1 and its GELU in bf16. fused 0: the two ops (fp32 pre-activation and activation).
// fused 1: forward, LinearActivationForward without a next operand (the product in fp32 by
// row chunks, then one pass saving pre in bf16 and writing the fp32 activation); backward,
// LinearActivationBackward's one-pass bf16 d_pre. fused 2 (forward; what the model runs):
// one cuBLASLt product whose bias + GELU epilogue writes GELU(pre) in bf16 straight into
// FC2's operand and pre in bf16 beside it — no fp32 pass over the N×4C values at all. llm.c
// found cuBLASLt's GELU epilogues slower than a separate GELU kernel (karpathy/llm.c#338,
// CUDA 12.4, fp32 output); these rows say how they compare here.
// args: shape, backward, fused
void BM_Fc1Gelu(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const Shape s = kShapes[state.range(0)];
  const int64_t c = s.h * s.hd, n = s.b * s.t, f = 4 * c;
  const bool backward = state.range(1) == 1, fused = state.range(2) == 1;
  Backend* be = Gpu();
  be->SetMatmulPrecision(MatmulPrecision::kBf16);
  Tensor x = Random(n * c), w = Random(f * c, 2), b = Random(f, 4), pre = Random(n * f, 3), act = Random(n * f, 5),
         dy = Random(n * f, 6), d_pre = Random(n * f, 7), dx = Random(n * c), dw = Random(f * c), db = Random(f);
  Tensor next_x = Tensor::Empty({n * f}, DType::kBF16, be->device()),
         next_w = Tensor::Empty({c * f}, DType::kBF16, be->device());
  Bf16Operands next{next_x.data(), next_w.data()};
  Timed(state, [&] {
    if (state.range(2) == 2) {
      be->LinearActivationForward(Activation::kGelu, x.f32(), w.f32(), b.f32(), n, c, f, pre.f32(), nullptr, nullptr,
                                  &next);
    } else if (backward && fused) {
      be->LinearActivationBackward(Activation::kGelu, x.f32(), w.f32(), pre.f32(), dy.f32(), n, c, f, d_pre.f32(),
                                   dx.f32(), dw.f32(), db.f32(), nullptr);
    } else if (backward) {
      be->ActivationBackward(Activation::kGelu, pre.f32(), dy.f32(), n * f, d_pre.f32());
      be->LinearBackward(x.f32(), w.f32(), d_pre.f32(), n, c, f, dx.f32(), dw.f32(), db.f32(), nullptr);
    } else if (fused) {
      be->LinearActivationForward(Activation::kGelu, x.f32(), w.f32(), b.f32(), n, c, f, pre.f32(), act.f32(), nullptr,
                                  nullptr);
    } else {
      be->LinearForward(x.f32(), w.f32(), b.f32(), n, c, f, pre.f32(), nullptr, nullptr);
      be->ActivationForward(Activation::kGelu, pre.f32(), n * f, act.f32());
    }
  });
  be->SetMatmulPrecision(MatmulPrecision::kFp32);
  Report(state, (backward ? 4.0 : 2.0) * n * c * f, 4.0 * (n * c + f * c + 2 * n * f));
}
BENCHMARK(BM_Fc1Gelu)
    ->ArgNames({"shape", "backward", "fused"})
    ->ArgsProduct({{0, 1}, {0, 1}, {0, 1}})
    ->Args({0, 0, 2})
    ->Args({1, 0, 2})
    ->UseManualTime();

// The MLP's backward in bf16 (FC2's, then FC1's with GELU'). fused 1: MlpBackward, FC2's dx
// product with cuBLASLt's DGELU epilogue writing FC1's pre-activation gradient in bf16 (no dh,
// no gradient pass; the dh-in-bf16 path where cuBLASLt refuses); fused 0: LinearBackward then
// LinearActivationBackward, dh in fp32 and a pass reading it with the pre-activation. The
// pre-activation is read as the bf16 forward saves it (its values are arbitrary here).
// args: shape, fused
void BM_MlpBackward(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const Shape s = kShapes[state.range(0)];
  const int64_t c = s.h * s.hd, n = s.b * s.t, f = 4 * c;
  Backend* be = Gpu();
  be->SetMatmulPrecision(MatmulPrecision::kBf16);
  Tensor x = Random(n * c), w1 = Random(f * c, 2), pre = Random(n * f, 3), h = Random(n * f, 4), w2 = Random(c * f, 5),
         dz = Random(n * c, 6), dh = Random(n * f, 7), d_pre = Random(n * f, 8), dx = Random(n * c),
         dw1 = Random(f * c), db1 = Random(f), dw2 = Random(c * f), db2 = Random(c);
  const Backend::LinearGradients fc1{x.f32(), w1.f32(), nullptr, dw1.f32(), db1.f32()};
  const Backend::LinearGradients fc2{h.f32(), w2.f32(), nullptr, dw2.f32(), db2.f32()};
  Timed(state, [&] {
    if (state.range(1) == 1) {
      be->MlpBackward(Activation::kGelu, fc1, fc2, pre.f32(), dz.f32(), n, c, f, c, dh.f32(), d_pre.f32(), dx.f32());
    } else {
      be->LinearBackward(h.f32(), w2.f32(), dz.f32(), n, f, c, dh.f32(), dw2.f32(), db2.f32(), nullptr);
      be->LinearActivationBackward(Activation::kGelu, x.f32(), w1.f32(), pre.f32(), dh.f32(), n, c, f, d_pre.f32(),
                                   dx.f32(), dw1.f32(), db1.f32(), nullptr);
    }
  });
  be->SetMatmulPrecision(MatmulPrecision::kFp32);
  Report(state, 8.0 * n * c * f, 4.0 * (n * c + 2 * f * c + 3 * n * f));
}
BENCHMARK(BM_MlpBackward)->ArgNames({"shape", "fused"})->ArgsProduct({{0, 1}, {0, 1}})->UseManualTime();

// args: shape, backward, soft cap (0/1), fused kernel (0: cuBLAS + softmax rows, 1: fused),
// bf16 (1: bf16 products; the fused kernel on the tensor cores)
void BM_Attention(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  Gpu()->SetAttentionKernel(state.range(3) == 1 ? AttentionKernel::kFused : AttentionKernel::kGemm);
  Gpu()->SetMatmulPrecision(state.range(4) == 1 ? MatmulPrecision::kBf16 : MatmulPrecision::kFp32);
  const Shape s = kShapes[state.range(0)];
  const bool backward = state.range(1) == 1;
  const int64_t n = s.b * s.t * s.h * s.hd;
  AttentionOptions opt;
  opt.scale = 1.0f / std::sqrt(static_cast<float>(s.hd));
  opt.soft_cap = state.range(2) == 1 ? 50.0f : 0.0f;
  // q, k, v read in place from a QKV product [B·T, 3·C], the gradients written into one, as
  // the model does.
  const int64_t c = s.h * s.hd;
  Tensor qkv = Random(3 * n), out = Random(n), probs = Random(s.b * s.h * s.t * s.t), lse = Random(s.b * s.h * s.t),
         dqkv = Random(3 * n);
  const float *q = qkv.f32(), *k = q + c, *v = q + 2 * c;
  const AttentionStrides ld{3 * c, 3 * c, 3 * c, 3 * c, 3 * c, 3 * c};
  Backend* be = Gpu();
  be->AttentionForward(q, k, v, s.b, s.t, s.h, s.hd, opt, ld, out.f32(), probs.f32(), lse.f32(), nullptr, nullptr,
                       nullptr);
  Timed(state, [&] {
    if (backward) {
      be->AttentionBackward(q, k, v, out.f32(), probs.f32(), lse.f32(), out.f32(), s.b, s.t, s.h, s.hd, opt, ld,
                            nullptr, dqkv.f32(), dqkv.f32() + c, dqkv.f32() + 2 * c);
    } else {
      be->AttentionForward(q, k, v, s.b, s.t, s.h, s.hd, opt, ld, out.f32(), probs.f32(), lse.f32(), nullptr, nullptr,
                           nullptr);
    }
  });
  Gpu()->SetAttentionKernel(AttentionKernel::kGemm);
  Gpu()->SetMatmulPrecision(MatmulPrecision::kFp32);
  // Causal useful FLOPs: forward 2 GEMMs of T²·hd/2 per head, backward 4.
  Report(state, (backward ? 4.0 : 2.0) * 2.0 * s.b * s.h * s.t * s.t / 2 * s.hd,
         4.0 * (4.0 * n + 2.0 * s.b * s.h * s.t * s.t));
}
BENCHMARK(BM_Attention)
    ->ArgNames({"shape", "backward", "cap", "fused", "bf16"})
    ->ArgsProduct({{0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}})
    ->UseManualTime();

// The attention's backward into QKV's in bf16 on the tensor cores, the blocks read in place
// (qk_norm 0: the baseline) or q and k behind full-width LayerNorms (1: the QK-norm methods).
// fused 1: AttentionQkvBackward — the kernels write their gradients in bf16 (into QKV's operand,
// or for the norms' backward, which writes bf16 there), QKV's bias summed from that operand;
// fused 0: the ops one by one — AttentionBackward in fp32, the norms' backward in fp32, QKV's
// LinearBackward with its pass rounding the fp32 gradient (what the model ran before).
// args: shape, qk_norm, fused
void BM_AttentionQkvBackward(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  Backend* be = Gpu();
  be->SetMatmulPrecision(MatmulPrecision::kBf16);
  be->SetAttentionKernel(AttentionKernel::kFused);
  const Shape s = kShapes[state.range(0)];
  const bool qk_norm = state.range(1) == 1;
  const int64_t c = s.h * s.hd, n = s.b * s.t, w3 = 3 * c;
  AttentionOptions opt;
  opt.scale = 1.0f / std::sqrt(static_cast<float>(s.hd));
  Tensor qkv = Random(n * w3), qn = Random(n * c, 2), kn = Random(n * c, 3), out = Random(n * c, 4),
         lse = Random(s.b * s.h * s.t, 5), dout = Random(n * c, 6), x = Random(n * c, 7), w = Random(w3 * c, 8),
         dw = Random(w3 * c), db = Random(w3), dq = Random(n * c), dk = Random(n * c), dv = Random(n * c),
         dqkv = Random(n * w3), dx = Random(n * c), gains = Random(4 * c, 9), mean = Random(2 * n, 10),
         rstd = Random(2 * n, 11), dgains = Random(4 * c);
  const float* q = qk_norm ? qn.f32() : qkv.f32();
  const float* k = qk_norm ? kn.f32() : qkv.f32() + c;
  AttentionStrides ld{w3, w3, w3, w3, w3, w3};
  if (qk_norm) ld.q = ld.k = ld.dq = ld.dk = c;
  const RowLayout layout{1, w3};
  const Backend::QkvNorm norm_q{gains.f32(), mean.f32(), rstd.f32(), dgains.f32(), dgains.f32() + c};
  const Backend::QkvNorm norm_k{gains.f32() + 2 * c, mean.f32() + n, rstd.f32() + n, dgains.f32() + 2 * c,
                                dgains.f32() + 3 * c};
  Backend::QkvNorms norms{NormKind::kLayerNorm, n, c, layout};
  if (qk_norm) norms.q = &norm_q, norms.k = &norm_k;
  const Backend::LinearGradients qkv_layer{x.f32(), w.f32(), nullptr, dw.f32(), db.f32()};
  const float* v = qkv.f32() + 2 * c;
  be->AttentionForward(q, k, v, s.b, s.t, s.h, s.hd, opt, ld, out.f32(), nullptr, lse.f32(), nullptr, nullptr, nullptr);
  Timed(state, [&] {
    if (state.range(2) == 1) {
      be->AttentionQkvBackward(qkv.f32(), q, k, v, ld, out.f32(), nullptr, lse.f32(), dout.f32(), s.b, s.t, s.h, s.hd,
                               opt, nullptr, norms, qkv_layer, dq.f32(), dk.f32(), dv.f32(), dqkv.f32(), dx.f32(),
                               false);
      return;
    }
    float* d = dqkv.f32();
    be->AttentionBackward(q, k, v, out.f32(), nullptr, lse.f32(), dout.f32(), s.b, s.t, s.h, s.hd, opt, ld, nullptr,
                          qk_norm ? dq.f32() : d, qk_norm ? dk.f32() : d + c, d + 2 * c);
    if (qk_norm) {
      be->NormBackward(NormKind::kLayerNorm, qkv.f32(), layout, norm_q.g, norm_q.mean, norm_q.rstd, dq.f32(), n, c, d,
                       norm_q.dg, norm_q.db, nullptr);
      be->NormBackward(NormKind::kLayerNorm, qkv.f32() + c, layout, norm_k.g, norm_k.mean, norm_k.rstd, dk.f32(), n, c,
                       d + c, norm_k.dg, norm_k.db, nullptr);
    }
    be->LinearBackward(x.f32(), w.f32(), d, n, c, w3, dx.f32(), dw.f32(), db.f32(), nullptr);
  });
  be->SetAttentionKernel(AttentionKernel::kGemm);
  be->SetMatmulPrecision(MatmulPrecision::kFp32);
  // The attention's four causal products and QKV's two.
  Report(state, 4.0 * 2.0 * s.b * s.h * s.t * s.t / 2 * s.hd + 4.0 * n * c * w3,
         4.0 * (4.0 * n * c + 2.0 * n * w3) + 2.0 * w3 * c);
}
BENCHMARK(BM_AttentionQkvBackward)
    ->ArgNames({"shape", "qk_norm", "fused"})
    ->ArgsProduct({{0, 1}, {0, 1}, {0, 1}})
    ->UseManualTime();

void BM_CrossEntropy(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const Shape s = kShapes[state.range(0)];
  const int64_t n = s.b * s.t;
  Tensor logits = Random(n * s.v), lse = Random(n), dlogits = Random(n * s.v);
  Tensor targets = Tensor::Zeros({n}, DType::kI32, Gpu()->device());
  Backend* be = Gpu();
  Timed(state, [&] {
    be->CrossEntropyForward(logits.f32(), targets.i32(), n, s.v, {}, lse.f32(), nullptr);
    be->CrossEntropyBackward(logits.f32(), targets.i32(), lse.f32(), n, s.v, {}, 1.0f, dlogits.f32());
  });
  Report(state, 8.0 * n * s.v, 4.0 * 3 * n * s.v);
}
BENCHMARK(BM_CrossEntropy)->ArgNames({"shape"})->Arg(0)->Arg(1)->UseManualTime();

// The loss head as the model runs it in bf16: the product into bf16 logits and the
// cross-entropy forward, then the bf16 gradient and the head's two backward products; fused 1:
// as the trainer runs it, the gradient written over the logits by the forward's kernel.
// FLOPs of the three products; bytes of the logits' traffic (bf16: written, read twice, the
// gradient written and read twice; fused: read once by the cross-entropy).
void BM_LossHead(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const Shape s = kShapes[state.range(0)];
  const bool fused = state.range(1) != 0;
  const int64_t n = s.b * s.t, c = s.h * s.hd;
  Backend* be = Gpu();
  be->SetMatmulPrecision(MatmulPrecision::kBf16);
  Tensor x = Random(n * c), w = Random(s.v * c, 2), lse = Random(n), dx = Random(n * c), dw = Random(s.v * c);
  const int64_t ld = be->LogitsRowStride(s.v);  // rows padded to 64 values
  Tensor logits = Tensor::Empty({n * ld}, DType::kBF16, be->device());
  Tensor dlogits = Tensor::Empty({n * ld}, DType::kBF16, be->device());
  Tensor targets = Tensor::Zeros({n}, DType::kI32, be->device());
  Timed(state, [&] {
    const bool ready = be->CrossEntropyLinearForward(x.f32(), w.f32(), targets.i32(), n, c, s.v, {}, logits.data(),
                                                     lse.f32(), nullptr, nullptr, fused);
    be->CrossEntropyLinearBackward(logits.data(), targets.i32(), lse.f32(), n, s.v, {}, 1.0f, x.f32(), w.f32(), c,
                                   ready ? logits.data() : dlogits.data(), dx.f32(), dw.f32(), nullptr, ready);
  });
  be->SetMatmulPrecision(MatmulPrecision::kFp32);
  Report(state, 6.0 * n * c * s.v, 2.0 * (fused ? 5 : 6) * n * s.v);
}
BENCHMARK(BM_LossHead)->ArgNames({"shape", "fused"})->ArgsProduct({{0, 1}, {0, 1}})->UseManualTime();

// Forward (x read, y written) and backward (x and dy read, dx written, the gains' and biases'
// gradients from the same pass): 5 floats moved per element. per_head: the q/k norms' shape
// (qk_norm), 64-wide rows, H a token.
void BM_LayerNorm(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const Shape s = kShapes[state.range(0)];
  const bool per_head = state.range(1) != 0;
  const int64_t rows = s.b * s.t * (per_head ? s.h : 1), d = per_head ? s.hd : s.h * s.hd;
  Tensor x = Random(rows * d), g = Random(d), b = Random(d), y = Random(rows * d), mean = Random(rows),
         rstd = Random(rows), dx = Random(rows * d), dg = Random(d), db = Random(d);
  Backend* be = Gpu();
  Timed(state, [&] {
    be->NormForward(NormKind::kLayerNorm, x.f32(), RowLayout::Contiguous(d), g.f32(), b.f32(), rows, d, 1e-5f, y.f32(),
                    mean.f32(), rstd.f32(), nullptr);
    be->NormBackward(NormKind::kLayerNorm, x.f32(), RowLayout::Contiguous(d), g.f32(), mean.f32(), rstd.f32(), y.f32(),
                     rows, d, dx.f32(), dg.f32(), db.f32(), nullptr);
  });
  Report(state, 16.0 * rows * d, 4.0 * 5 * rows * d);
}
BENCHMARK(BM_LayerNorm)->ArgNames({"shape", "per_head"})->ArgsProduct({{0, 1}, {0, 1}})->UseManualTime();

void BM_Gelu(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const Shape s = kShapes[state.range(0)];
  const int64_t n = s.b * s.t * 4 * s.h * s.hd;
  Tensor x = Random(n), y = Random(n), dx = Random(n);
  Backend* be = Gpu();
  Timed(state, [&] {
    be->ActivationForward(Activation::kGelu, x.f32(), n, y.f32());
    be->ActivationBackward(Activation::kGelu, x.f32(), y.f32(), n, dx.f32());
  });
  Report(state, 30.0 * n, 4.0 * 5 * n);
}
BENCHMARK(BM_Gelu)->ArgNames({"shape"})->Arg(0)->Arg(1)->UseManualTime();

// The embedding's backward (token and position gradients) on GPT-2-like text statistics:
// token ids drawn from a Zipf-like law over the vocabulary (frequent tokens make long runs).
void BM_EmbeddingBackward(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const Shape s = kShapes[state.range(0)];
  const int64_t n = s.b * s.t, c = s.h * s.hd;
  Rng rng(3);
  std::vector<int32_t> host(n);
  for (int32_t& id : host) id = static_cast<int32_t>(std::pow(static_cast<double>(s.v), rng.Uniform())) - 1;
  Tensor ids = Tensor::Empty({n}, DType::kI32, Gpu()->device());
  ids.CopyFromHost(host.data());
  Tensor dout = Random(n * c), dwte = Random(s.v * c), dwpe = Random(s.t * c);
  Backend* be = Gpu();
  Timed(state, [&] { be->EmbeddingBackward(ids.i32(), n, s.t, dout.f32(), c, dwte.f32(), dwpe.f32()); });
  Report(state, 2.0 * n * c, 4.0 * 3 * n * c);
}
BENCHMARK(BM_EmbeddingBackward)->ArgNames({"shape"})->Arg(0)->Arg(1)->UseManualTime();

// each 0: AdamW on one buffer; 1: AdamWEach writing the weights' bf16 copy, as the model's
// bf16 training steps run it (2 bytes more written a parameter).
void BM_AdamW(benchmark::State& state) {
  SKIP_WITHOUT_GPU(state);
  const int64_t n = state.range(0);
  const bool each = state.range(1) != 0;
  Tensor p = Random(n), g = Random(n), m = Tensor::Zeros({n}, DType::kF32, Gpu()->device()),
         v = Tensor::Zeros({n}, DType::kF32, Gpu()->device());
  Tensor p16 = Tensor::Empty({n}, DType::kBF16, Gpu()->device());
  Backend* be = Gpu();
  if (each) be->SetMatmulPrecision(MatmulPrecision::kBf16);  // a backend keeping bf16 operands
  Timed(state, [&] {
    if (each) {
      be->AdamWEach({{p.f32(), g.f32(), m.f32(), v.f32(), n, 0.1f, p16.data()}}, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.5f, 0.3f,
                    1.0f);
    } else {
      be->AdamW(p.f32(), g.f32(), m.f32(), v.f32(), n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 0.3f, 1.0f);
    }
  });
  be->SetMatmulPrecision(MatmulPrecision::kFp32);
  Report(state, 14.0 * n, (4.0 * 7 + (each ? 2.0 : 0.0)) * n);
}
BENCHMARK(BM_AdamW)->ArgNames({"params", "each"})->ArgsProduct({{124 * 1000 * 1000}, {0, 1}})->UseManualTime();

}  // namespace
}  // namespace stability::ops::cuda

BENCHMARK_MAIN();
#else  // built without a CUDA toolkit
#include <cstdio>
int main() {
  std::puts("the CUDA benchmarks need a build with a CUDA toolkit");
  return 0;
}
#endif
