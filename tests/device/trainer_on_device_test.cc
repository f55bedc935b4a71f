// The trainer on a stand-in GPU (ops::testing::CheckedDevice, which the trainer finds as a
// registered CUDA backend): `--device=cuda` in fp32 gives the CPU run's losses bit for bit;
// in bf16 (the GPU bench's configuration: bf16 products, fused attention, telemetry only at
// the end) a run stopped at a checkpoint and resumed gives the uninterrupted run's losses
// bit for bit, and so does telemetry at every step. Every kernel argument is checked to be
// device memory throughout. A run too large for the device is refused before it writes.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "stability/data/prepare.h"
#include "stability/model/memory.h"
#include "stability/ops/testing/checked_device.h"
#include "stability/train/metrics.h"
#include "stability/train/trainer.h"

namespace stability::train {
namespace {
namespace fs = std::filesystem;

const std::string& Shards() {
  static const std::string dir = [] {
    const std::string root = ::testing::TempDir() + "/device_data";
    fs::remove_all(root);
    fs::create_directories(root + "/text");
    std::ofstream text(root + "/text/a.txt");
    for (int i = 0; i < 200; ++i) text << "Every kernel argument on the device, line " << i % 13 << ".\n";
    text.close();
    EXPECT_TRUE(data::Prepare({.inputs = {root + "/text"}, .out_dir = root + "/shards", .tokenizer = "bytes"}).ok());
    return root + "/shards";
  }();
  return dir;
}

RunConfig SmallRun(const std::string& name, const std::string& device, const std::string& precision) {
  RunConfig rc;
  // Head dim 16: in bf16 the attention is the fused kernel's (no probabilities on the device).
  rc.model =
      *model::MakeConfig("tiny", "qk_norm", {{"vocab_size", 257}, {"n_embd", 32}, {"n_head", 2}, {"seq_len", 32}});
  rc.train.data = Shards();
  rc.train.out = ::testing::TempDir() + "/device_runs/" + name;
  fs::remove_all(rc.train.out);
  rc.train.device = device;
  rc.train.precision = precision;
  rc.train.steps = 20;
  rc.train.batch = 4;
  rc.train.warmup = 3;
  rc.train.eval_interval = 10;
  rc.train.eval_batches = 2;
  rc.train.checkpoint_interval = 10;
  rc.train.telemetry_interval = 100;  // only at the last step, as the GPU bench runs
  return rc;
}

std::vector<double> Losses(const RunConfig& rc) {
  std::vector<double> out;
  const MetricsFile m = *ReadMetrics(rc.train.out + "/metrics.jsonl");
  for (const auto& row : m.rows) {
    out.push_back(row["loss"].get<double>());
    if (row.contains("val_loss")) out.push_back(row["val_loss"].get<double>());
  }
  return out;
}

TEST(TrainerOnDeviceTest, Fp32RunIsTheCpuRun) {
  ops::testing::CheckedDevice device;
  const RunConfig cpu = SmallRun("cpu", "cpu", "fp32"), gpu = SmallRun("gpu", "cuda", "fp32");
  ASSERT_TRUE(RunTraining(cpu, {}).ok());
  absl::StatusOr<nlohmann::json> s = RunTraining(gpu, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Losses(gpu), Losses(cpu));
  EXPECT_GT(device.checked_ops(), 1000);
}

TEST(TrainerOnDeviceTest, Bf16RunResumesAndIgnoresTelemetryBitForBit) {
  ops::testing::CheckedDevice device(ops::testing::CheckedDevice::Mode::kBf16);
  const RunConfig whole = SmallRun("whole", "cuda", "bf16");
  absl::StatusOr<nlohmann::json> s = RunTraining(whole, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE((*s)["diverged"].get<bool>());

  const RunConfig halves = SmallRun("halves", "cuda", "bf16");
  ASSERT_TRUE(RunTraining(halves, {.stop_after = 10}).ok());
  ASSERT_TRUE(RunTraining(halves, {.resume = true}).ok());
  EXPECT_EQ(Losses(halves), Losses(whole));

  RunConfig every = SmallRun("every", "cuda", "bf16");
  every.train.telemetry_interval = 1;
  ASSERT_TRUE(RunTraining(every, {}).ok());
  EXPECT_EQ(Losses(every), Losses(whole));
}

// The trainer's other paths on a device — micro-batches (--grad_accum), the skip-step spike
// guard, telemetry every step, a profiled step, and a run that diverges — hand their kernels
// device memory only and never read device memory on the host (the stand-in faults if they
// do); in fp32 each gives the CPU run's losses bit for bit.
TEST(TrainerOnDeviceTest, EveryTrainingPathIsTheCpusOnTheDevice) {
  ops::testing::CheckedDevice device;
  const auto paths = [](RunConfig rc) {
    rc.train.grad_accum = 2;
    rc.train.spike_skip_factor = 0.5;  // low enough that some steps are skipped
    rc.train.spike_window = 4;
    rc.train.telemetry_interval = 1;
    rc.train.profile_step = 5;
    return rc;
  };
  const RunConfig cpu = paths(SmallRun("paths-cpu", "cpu", "fp32")), gpu = paths(SmallRun("paths-gpu", "cuda", "fp32"));
  absl::StatusOr<nlohmann::json> sc = RunTraining(cpu, {}), sg = RunTraining(gpu, {});
  ASSERT_TRUE(sc.ok()) << sc.status();
  ASSERT_TRUE(sg.ok()) << sg.status();
  EXPECT_EQ(Losses(gpu), Losses(cpu));
  EXPECT_GT((*sg)["skipped_steps"].get<int64_t>(), 0) << "the spike guard never fired: the test does not cover it";
  EXPECT_EQ((*sg)["skipped_steps"], (*sc)["skipped_steps"]);
  std::ifstream profile(gpu.train.out + "/kernel_profile.md");
  EXPECT_TRUE(profile.good()) << "the profiled step wrote no report";

  RunConfig diverge = SmallRun("diverge-gpu", "cuda", "fp32");
  diverge.train.lr = 1e3;
  diverge.train.warmup = 0;
  absl::StatusOr<nlohmann::json> sd = RunTraining(diverge, {});
  ASSERT_TRUE(sd.ok()) << sd.status();
  EXPECT_TRUE((*sd)["diverged"].get<bool>());
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A GPU too small for the run: refused before anything is written, with the bytes it needs
// and what to change; a stopped run on it is refused the same way on --resume, its files
// untouched. With room for the estimate (no more) the run trains.
TEST(TrainerOnDeviceTest, ARunThatDoesNotFitIsRefusedBeforeAnythingIsWritten) {
  ops::testing::CheckedDevice device(ops::testing::CheckedDevice::Mode::kBf16);
  const RunConfig stopped = SmallRun("stopped", "cuda", "bf16");
  ASSERT_TRUE(RunTraining(stopped, {.stop_after = 10}).ok());
  const std::string metrics = ReadAll(stopped.train.out + "/metrics.jsonl");

  ops::Backend* be = ops::GetBackend(device.device());
  ASSERT_TRUE(be->SetMatmulPrecision(ops::MatmulPrecision::kBf16));
  const int64_t need =
      model::EstimateTrainingMemory(stopped.model, stopped.train.batch, stopped.model.seq_len, *be).total();
  device.SetCapacity(device.bytes_alive() + need - 1);
  const RunConfig fresh = SmallRun("too-large", "cuda", "bf16");
  absl::StatusOr<nlohmann::json> s = RunTraining(fresh, {});
  ASSERT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted) << s.status();
  EXPECT_THAT(std::string(s.status().message()),
              ::testing::AllOf(::testing::HasSubstr("the run needs about"), ::testing::HasSubstr("activations"),
                               ::testing::HasSubstr("lower --batch or --seq")));
  EXPECT_FALSE(fs::exists(fresh.train.out)) << "a refused run created its folder";

  s = RunTraining(stopped, {.resume = true});
  ASSERT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted) << s.status();
  EXPECT_EQ(ReadAll(stopped.train.out + "/metrics.jsonl"), metrics);

  device.SetCapacity(device.bytes_alive() + need);
  FILE* log = std::tmpfile();
  s = RunTraining(stopped, {.resume = true, .progress = log});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE((*s)["diverged"].get<bool>());
  std::rewind(log);
  std::string printed;
  for (int ch; (ch = std::fgetc(log)) != EOF;) printed.push_back(static_cast<char>(ch));
  std::fclose(log);
  EXPECT_THAT(printed, ::testing::HasSubstr("memory: needs about")) << "a run that fits says what it needs";
}

}  // namespace
}  // namespace stability::train
