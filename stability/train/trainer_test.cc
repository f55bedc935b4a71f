#include "stability/train/trainer.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "stability/data/prepare.h"
#include "stability/train/checkpoint.h"
#include "stability/train/metrics.h"

namespace stability::train {
namespace fs = std::filesystem;
namespace {

// Byte-level shards of some English text, made once per test binary.
const std::string& DataDir() {
  static const std::string dir = [] {
    const std::string root = ::testing::TempDir() + "/trainer_data";
    fs::remove_all(root);
    fs::create_directories(root + "/text");
    std::ofstream text(root + "/text/a.txt");
    for (int i = 0; i < 300; ++i) {
      text << "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
           << "All that glitters is not gold; " << i % 7 << " birds in the hand.\n";
    }
    text.close();
    auto s = data::Prepare({.inputs = {root + "/text"}, .out_dir = root + "/shards", .tokenizer = "bytes"});
    EXPECT_TRUE(s.ok()) << s.status();
    return root + "/shards";
  }();
  return dir;
}

RunConfig SmallRun(const std::string& name, int64_t steps) {
  RunConfig rc;
  rc.model = *model::MakeConfig("tiny", "qk_norm",
                                {{"vocab_size", 257}, {"n_embd", 32}, {"n_head", 4}, {"seq_len", 32}});
  rc.train.data = DataDir();
  rc.train.out = ::testing::TempDir() + "/runs/" + name;
  fs::remove_all(rc.train.out);
  rc.train.steps = steps;
  rc.train.batch = 4;
  rc.train.lr = 1e-2;
  rc.train.min_lr = 1e-3;
  rc.train.warmup = 5;
  rc.train.eval_interval = 10;
  rc.train.eval_batches = 2;
  rc.train.checkpoint_interval = 10;
  return rc;
}

std::vector<double> Losses(const std::string& run) {
  std::vector<double> out;
  const MetricsFile m = *ReadMetrics(run + "/metrics.jsonl");
  for (const auto& row : m.rows) out.push_back(row["loss"].get<double>());
  return out;
}

TEST(TrainerTest, LossFallsWellBelowLogVocabAndTheRunFolderIsComplete) {
  const RunConfig rc = SmallRun("falls", 150);
  absl::StatusOr<nlohmann::json> s = RunTraining(rc, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE((*s)["diverged"].get<bool>());
  EXPECT_NEAR((*s)["loss_at_init"].get<double>(), std::log(257.0), 0.1);
  EXPECT_LT((*s)["final_val_loss"].get<double>(), 0.5 * std::log(257.0));
  for (const char* f : {"config.json", "metrics.jsonl", "summary.json", "checkpoints"})
    EXPECT_TRUE(fs::exists(rc.train.out + "/" + f)) << f;
  const MetricsFile m = *ReadMetrics(rc.train.out + "/metrics.jsonl");
  ASSERT_EQ(m.rows.size(), 150u);
  EXPECT_FALSE(m.torn_last_line);
  const nlohmann::json& row = m.rows[9];
  EXPECT_EQ(row["step"], 10);
  for (const char* k : {"lr", "loss", "grad_norm", "tokens_per_s", "val_loss", "val_ppl", "h.0.qkv.out_norm",
                        "h.1.fc2.out_norm", "h.0.attn.max_logit", "logits.mean_log_z", "grad_norm.h.0.qkv.weight"}) {
    EXPECT_TRUE(row.contains(k)) << k;
  }
  EXPECT_FALSE(m.rows[8].contains("val_loss"));
  // keep_checkpoints = 2: steps 140 and 150 remain.
  EXPECT_EQ(*FindLatestCheckpoint(rc.train.out + "/checkpoints"), rc.train.out + "/checkpoints/step_00000150");
  EXPECT_TRUE(fs::exists(rc.train.out + "/checkpoints/step_00000140"));
  EXPECT_FALSE(fs::exists(rc.train.out + "/checkpoints/step_00000130"));
}

TEST(TrainerTest, ResumeIsBitwiseIdentical) {
  const RunConfig straight = SmallRun("straight", 30);
  ASSERT_TRUE(RunTraining(straight, {}).ok());
  RunConfig split = SmallRun("split", 30);
  split.train.checkpoint_interval = 0;  // only the stop checkpoint
  absl::StatusOr<nlohmann::json> first = RunTraining(split, {.stop_after = 15});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE((*first)["finished"].get<bool>());
  EXPECT_FALSE(fs::exists(split.train.out + "/summary.json"));
  absl::StatusOr<nlohmann::json> second = RunTraining(split, {.resume = true});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(Losses(straight.train.out), Losses(split.train.out));  // bitwise: doubles compared exactly
  const Checkpoint a = *LoadCheckpoint(straight.train.out + "/checkpoints/step_00000030");
  const Checkpoint b = *LoadCheckpoint(split.train.out + "/checkpoints/step_00000030");
  EXPECT_EQ(a.state["model_checksum_fnv1a64"], b.state["model_checksum_fnv1a64"]);  // weights and Adam state
}

// --keep_checkpoints=0 (a benchmark's run): the run finishes and writes no checkpoint, not even
// at the end or when stopped; a negative count is refused before anything is written.
TEST(TrainerTest, KeepingNoCheckpointsWritesNone) {
  RunConfig rc = SmallRun("no_checkpoints", 12);
  rc.train.keep_checkpoints = 0;
  absl::StatusOr<nlohmann::json> s = RunTraining(rc, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE((*s)["finished"].get<bool>());
  EXPECT_EQ(Losses(rc.train.out).size(), 12u);
  EXPECT_FALSE(fs::exists(rc.train.out + "/checkpoints"));
  RunConfig stopped = SmallRun("no_checkpoints_stopped", 12);
  stopped.train.keep_checkpoints = 0;
  ASSERT_TRUE(RunTraining(stopped, {.stop_after = 5}).ok());
  EXPECT_FALSE(fs::exists(stopped.train.out + "/checkpoints"));

  RunConfig bad = SmallRun("negative_keep", 3);
  bad.train.keep_checkpoints = -1;
  EXPECT_NE(RunTraining(bad, {}).status().message().find("--keep_checkpoints=-1 must be >= 0"), std::string::npos);
  EXPECT_FALSE(fs::exists(bad.train.out));
}

TEST(TrainerTest, DivergenceEndsTheRunEarlyAndSaysWhy) {
  RunConfig rc = SmallRun("diverges", 200);
  rc.model = *model::MakeConfig("tiny", "baseline", {{"vocab_size", 257}, {"n_embd", 32}, {"seq_len", 32}});
  rc.train.lr = 5.0;
  rc.train.clip = 0;
  rc.train.warmup = 2;
  rc.train.divergence_patience = 3;
  absl::StatusOr<nlohmann::json> s = RunTraining(rc, {});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE((*s)["diverged"].get<bool>());
  EXPECT_LT((*s)["diverged_step"].get<int64_t>(), 200);
  EXPECT_FALSE((*s)["diverged_reason"].get<std::string>().empty());
  EXPECT_TRUE(fs::exists(rc.train.out + "/summary.json"));
}

TEST(TrainerTest, RunFoldersAreNeverOverwritten) {
  const RunConfig rc = SmallRun("kept", 3);
  ASSERT_TRUE(RunTraining(rc, {}).ok());
  absl::StatusOr<nlohmann::json> again = RunTraining(rc, {});
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(again.status().message().find("finished run"), std::string::npos);

  const RunConfig unfinished = SmallRun("unfinished", 20);
  ASSERT_TRUE(RunTraining(unfinished, {.stop_after = 2}).ok());
  EXPECT_NE(RunTraining(unfinished, {}).status().message().find("pass --resume"), std::string::npos);
  EXPECT_EQ(RunTraining(SmallRun("nothing", 3), {.resume = true}).status().code(), absl::StatusCode::kNotFound);
}

TEST(TrainerTest, CorruptCheckpointIsRefused) {
  const RunConfig rc = SmallRun("corrupt", 20);
  ASSERT_TRUE(RunTraining(rc, {.stop_after = 10}).ok());
  const std::string model = rc.train.out + "/checkpoints/step_00000010/model.safetensors";
  {
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-4, std::ios::end);
    f.write("oops", 4);
  }
  absl::StatusOr<nlohmann::json> r = RunTraining(rc, {.resume = true});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("is corrupt: checksum"), std::string::npos) << r.status();
}

TEST(TrainerTest, BadConfigAndDataAreErrorsBeforeTraining) {
  RunConfig rc = SmallRun("bad_lr", 3);
  rc.train.lr = -1;
  EXPECT_NE(RunTraining(rc, {}).status().message().find("--lr=-1 must be positive"), std::string::npos);
  EXPECT_FALSE(fs::exists(rc.train.out));

  rc = SmallRun("bad_data", 3);
  rc.train.data = ::testing::TempDir() + "/truncated";
  fs::create_directories(rc.train.data);
  fs::copy_file(DataDir() + "/val_000000.bin", rc.train.data + "/val_000000.bin", fs::copy_options::overwrite_existing);
  fs::copy_file(DataDir() + "/train_000000.bin", rc.train.data + "/train_000000.bin", fs::copy_options::overwrite_existing);
  fs::resize_file(rc.train.data + "/train_000000.bin", 2000);
  absl::StatusOr<nlohmann::json> r = RunTraining(rc, {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("train_000000.bin"), std::string::npos) << r.status();

  rc = SmallRun("vocab", 3);
  rc.model.vocab_size = 100;  // byte ids go up to 256
  EXPECT_NE(RunTraining(rc, {}).status().message().find("outside the model's vocabulary"), std::string::npos);
}

TEST(MetricsTest, TornLastLineIsReportedAndSkipped) {
  const std::string path = ::testing::TempDir() + "/torn.jsonl";
  std::ofstream(path) << "{\"step\": 1, \"loss\": 2.5}\n{\"step\": 2, \"lo";
  const MetricsFile m = *ReadMetrics(path);
  EXPECT_EQ(m.rows.size(), 1u);
  EXPECT_TRUE(m.torn_last_line);
  // A writer that resumes after step 1 drops the torn line.
  { ASSERT_TRUE(MetricsWriter::Open(path, 1).ok()); }
  const MetricsFile again = *ReadMetrics(path);
  EXPECT_EQ(again.rows.size(), 1u);
  EXPECT_FALSE(again.torn_last_line);
}

}  // namespace
}  // namespace stability::train

namespace stability::train {
namespace {

TEST(TrainerTest, SpikeProtectionSkipsUpdatesAndCountsThem) {
  RunConfig rc = SmallRun("spikes", 60);
  rc.train.lr = 0.3;
  rc.train.spike_skip_factor = 2.0;
  rc.train.spike_window = 10;
  absl::StatusOr<nlohmann::json> s = RunTraining(rc, {});
  ASSERT_TRUE(s.ok()) << s.status();
  const int64_t skipped = (*s)["skipped_steps"].get<int64_t>();
  EXPECT_GT(skipped, 0);
  const MetricsFile m = *ReadMetrics(rc.train.out + "/metrics.jsonl");
  int64_t marked = 0;
  for (const auto& row : m.rows) marked += row["skipped"].get<bool>() ? 1 : 0;
  EXPECT_EQ(marked, skipped);
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(m.rows[i]["skipped"].get<bool>());  // needs a full window first

  RunConfig off = SmallRun("no_spikes", 60);
  off.train.lr = 0.3;
  ASSERT_TRUE(RunTraining(off, {}).ok());
  EXPECT_NE(Losses(rc.train.out), Losses(off.train.out));
  EXPECT_FALSE(ReadMetrics(off.train.out + "/metrics.jsonl")->rows[0].contains("skipped"));
}

}  // namespace
}  // namespace stability::train
