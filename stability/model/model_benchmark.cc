// Forward + backward per step on the CPU, with telemetry on and off (its cost), and model
// creation:
//   bazel run //stability/model:model_benchmark
// Args: size preset index (0 tiny: B 8 × T 64; 1 mid: 8 blocks × 512 wide, B 2 × T 512),
// telemetry (1 on, 0 off). Counters: tokens/s.
#include "benchmark/benchmark.h"
#include "stability/base/rng.h"
#include "stability/model/model.h"

namespace stability::model {
namespace {

void BM_ForwardBackward(benchmark::State& state) {
  const bool mid = state.range(0) == 1;
  const ModelConfig config = *MakeConfig(mid ? "mid" : "tiny", "baseline");
  const int64_t B = mid ? 2 : 8, T = mid ? 512 : 64;
  auto model = *Model::Create(config, 1);
  model->set_telemetry(state.range(1) == 1);
  model->set_keep_logits(false);  // as the trainer
  Tensor ids = Tensor::Empty({B, T}, DType::kI32), targets = Tensor::Empty({B, T}, DType::kI32);
  Rng rng(2);
  for (int64_t i = 0; i < B * T; ++i) {
    ids.i32()[i] = static_cast<int32_t>(rng.Below(config.vocab_size));
    targets.i32()[i] = static_cast<int32_t>(rng.Below(config.vocab_size));
  }
  for (auto _ : state) {
    benchmark::DoNotOptimize(*model->Forward(ids, targets));
    model->ZeroGrad();
    (void)model->Backward();
    if (state.range(1) == 1) model->ComputeGradNorms();
  }
  state.SetLabel(mid ? "mid" : "tiny");
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(B * T), benchmark::Counter::kIsIterationInvariantRate);
}

// Creating (initialising) a model of a size preset: the cost a large run pays before its
// first step (Arg: 0 tiny, 1 GPT-2 124M). Counters: parameters/s.
void BM_Create(benchmark::State& state) {
  const ModelConfig config = *MakeConfig(state.range(0) == 1 ? "gpt2_124m" : "tiny", "baseline");
  for (auto _ : state) benchmark::DoNotOptimize(*Model::Create(config, 1));
  state.counters["parameters/s"] = benchmark::Counter(static_cast<double>(ParameterCount(config)),
                                                      benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Create)->ArgName("gpt2_124m")->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);

BENCHMARK(BM_ForwardBackward)
    ->ArgNames({"mid", "telemetry"})
    ->Args({0, 1})
    ->Args({0, 0})
    ->Args({1, 1})
    ->Args({1, 0})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

}  // namespace
}  // namespace stability::model

BENCHMARK_MAIN();
