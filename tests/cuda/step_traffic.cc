#include "tests/cuda/step_traffic.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <regex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "stability/base/rng.h"
#include "stability/model/model.h"
#include "stability/ops/cuda/cuda_backend.h"
#include "stability/ops/cuda/emulator/traffic.h"
#include "stability/optim/adamw.h"

namespace stability::cuda_traffic {

absl::StatusOr<std::vector<LaunchCost>> MeasuredStepTraffic(const model::ModelConfig& config, int64_t batch,
                                                            int64_t seq) {
  absl::StatusOr<ops::Backend*> backend = ops::cuda::InitCudaBackend(0);
  if (!backend.ok()) return backend.status();
  if (!(*backend)->SetMatmulPrecision(ops::MatmulPrecision::kBf16) ||
      !(*backend)->SetAttentionKernel(ops::AttentionKernel::kFused)) {
    return absl::FailedPreconditionError("the CUDA backend refused bf16 products or the fused attention");
  }
  absl::StatusOr<std::unique_ptr<model::Model>> m = model::Model::Create(config, 1, (*backend)->device());
  if (!m.ok()) return m.status();
  (*m)->set_telemetry(false);
  (*m)->set_keep_logits(false);  // as the trainer
  optim::AdamW opt(&(*m)->parameters(), {});
  Rng rng(7);
  Tensor ids = Tensor::Empty({batch, seq}, DType::kI32), targets = Tensor::Empty({batch, seq}, DType::kI32);
  for (int64_t i = 0; i < batch * seq; ++i) {
    ids.i32()[i] = static_cast<int32_t>(rng.NextU64() % config.vocab_size);
    targets.i32()[i] = static_cast<int32_t>(rng.NextU64() % config.vocab_size);
  }
  std::vector<emu::WorkTraffic> work;
  for (int step = 0; step < 2; ++step) {
    if (step == 1) emu::StartTraffic();
    absl::StatusOr<double> loss = (*m)->Forward(ids, targets);
    if (!loss.ok()) return loss.status();
    (*m)->ZeroGrad();
    if (absl::Status s = (*m)->Backward(); !s.ok()) return s;
    opt.Step(3e-4, 1.0);
    if (step == 1) work = emu::StopTraffic();
  }
  return work;
}

namespace {

// A library call's name carries its shape, which grows with the batch: the batch-2 run's
// names are the batch-1 run's with the token dimension doubled, so only the call is compared.
std::string Call(const LaunchCost& c) { return c.library ? c.name.substr(0, c.name.find(' ')) : c.name; }

// The name at `batch`: each number of the name that differs between the batch-1 and batch-2
// names (the token dimension of a shape) extrapolated as the counts are.
std::string NameAt(const std::string& one, const std::string& two, int64_t batch) {
  static const std::regex number(R"(\d+)");
  std::vector<std::string> a, b;
  for (auto it = std::sregex_iterator(one.begin(), one.end(), number); it != std::sregex_iterator(); ++it) {
    a.push_back(it->str());
  }
  for (auto it = std::sregex_iterator(two.begin(), two.end(), number); it != std::sregex_iterator(); ++it) {
    b.push_back(it->str());
  }
  if (a.size() != b.size() || std::regex_replace(one, number, "#") != std::regex_replace(two, number, "#")) {
    return Call({one, true}) + " (shape at batch " + std::to_string(batch) + ")";
  }
  std::string out;
  size_t i = 0;
  auto it = std::sregex_iterator(one.begin(), one.end(), number);
  size_t last = 0;
  for (; it != std::sregex_iterator(); ++it, ++i) {
    out += one.substr(last, it->position() - last);
    const int64_t x = std::stoll(a[i]), y = std::stoll(b[i]);
    out += std::to_string(x + (batch - 1) * (y - x));
    last = it->position() + it->length();
  }
  return out + one.substr(last);
}

}  // namespace

absl::StatusOr<std::vector<LaunchCost>> StepTraffic(const model::ModelConfig& config, int64_t batch, int64_t seq) {
  absl::StatusOr<std::vector<LaunchCost>> one = MeasuredStepTraffic(config, 1, seq);
  if (!one.ok() || batch == 1) return one;
  absl::StatusOr<std::vector<LaunchCost>> two = MeasuredStepTraffic(config, 2, seq);
  if (!two.ok()) return two.status();
  if (one->size() != two->size()) {
    return absl::InternalError(absl::StrFormat(
        "a step launches %d kernels and calls at batch 1 but %d at batch 2: cannot extrapolate launch by launch",
        one->size(), two->size()));
  }
  std::vector<LaunchCost> out;
  const auto at = [&](double x1, double x2) { return std::max(0.0, x1 + static_cast<double>(batch - 1) * (x2 - x1)); };
  for (size_t i = 0; i < one->size(); ++i) {
    const LaunchCost &a = (*one)[i], &b = (*two)[i];
    if (Call(a) != Call(b)) {
      return absl::InternalError(absl::StrFormat("launch %d is %s at batch 1 but %s at batch 2", i, a.name, b.name));
    }
    out.push_back({a.name == b.name ? a.name : NameAt(a.name, b.name, batch), a.library, at(a.bytes_read, b.bytes_read),
                   at(a.bytes_written, b.bytes_written), at(a.flops, b.flops)});
  }
  return out;
}

absl::Status WriteLaunchCosts(const std::string& path, const std::vector<LaunchCost>& step) {
  const std::string partial = path + ".partial";
  {
    std::ofstream out(partial);
    for (const LaunchCost& c : step) {
      out << absl::StrFormat("%.17g\t%.17g\t%.17g\t%s\t%s\n", c.bytes_read, c.bytes_written, c.flops,
                             c.library ? "library" : "kernel", c.name);
    }
    if (!out) return absl::UnavailableError("cannot write " + partial);
  }
  if (std::rename(partial.c_str(), path.c_str()) != 0) return absl::UnavailableError("cannot rename to " + path);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LaunchCost>> ReadLaunchCosts(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("no file " + path);
  std::vector<LaunchCost> step;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::vector<std::string> f = absl::StrSplit(line, '\t');
    LaunchCost c;
    if (f.size() != 5 || !absl::SimpleAtod(f[0], &c.bytes_read) || !absl::SimpleAtod(f[1], &c.bytes_written) ||
        !absl::SimpleAtod(f[2], &c.flops) || (f[3] != "library" && f[3] != "kernel")) {
      return absl::DataLossError(absl::StrFormat(
          "%s:%d is not a counted launch (bytes read, bytes written, flops, library|kernel, name; tab-separated): "
          "delete the file to count the step again",
          path, n));
    }
    c.library = f[3] == "library";
    c.name = f[4];
    step.push_back(c);
  }
  return step;
}

StepProjection ProjectStep(const std::vector<LaunchCost>& step, const Gpu& gpu) {
  StepProjection p;
  for (const LaunchCost& c : step) {
    ProjectedLaunch l{c, gpu.launch_us, "launch"};
    const double memory_us =
        (c.bytes_read + c.bytes_written) / (gpu.bandwidth_tbs * 1e12 * gpu.memory_efficiency) * 1e6;
    const double efficiency = c.library ? gpu.product_efficiency : gpu.attention_efficiency;
    const double compute_us = c.flops / (gpu.peak_tflops * 1e12 * efficiency) * 1e6;
    if (memory_us > l.us) l.us = memory_us, l.bound = "memory";
    if (compute_us > l.us) l.us = compute_us, l.bound = "compute";
    p.us += l.us;
    p.launches.push_back(l);
  }
  return p;
}

double MatmulParameters(const model::ModelConfig& config) {
  double n = static_cast<double>(model::ParameterCount(config));
  if (config.position == model::Position::kLearned) n -= static_cast<double>(config.seq_len * config.n_embd);
  if (!config.tie_embeddings) n -= static_cast<double>(config.vocab_size * config.n_embd);
  return n;
}

}  // namespace stability::cuda_traffic
