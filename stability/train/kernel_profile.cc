#include "stability/train/kernel_profile.h"

#include <algorithm>
#include <map>
#include <regex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"

namespace stability::train {

namespace {
bool IsProduct(const std::string& name) { return absl::StartsWith(name, "cublas") || absl::StartsWith(name, "sgemm"); }
}  // namespace

std::optional<double> ProductFlops(const std::string& name) {
  if (!IsProduct(name)) return std::nullopt;
  static const std::regex shape(R"((\d+)×(\d+)×(\d+)(?: ×(\d+))?$)");
  std::smatch m;
  if (!std::regex_search(name, m, shape)) return std::nullopt;
  const double batch = m[4].matched ? std::stod(m[4].str()) : 1.0;
  return 2.0 * std::stod(m[1].str()) * std::stod(m[2].str()) * std::stod(m[3].str()) * batch;
}

std::string KernelPart(const std::string& name) {
  if (IsProduct(name)) return "matrix products";
  if (absl::StrContains(absl::AsciiStrToLower(name), "attention") || absl::StartsWith(name, "Softmax") ||
      absl::StartsWith(name, "ClipProbs")) {
    return "attention";
  }
  if (absl::StartsWith(name, "CrossEntropy")) return "cross-entropy";
  if (absl::StartsWith(name, "cudaMemcpy") || absl::StartsWith(name, "cudaMemset") || name == "Copy") return "copies";
  if (absl::StartsWith(name, "(outside the ops")) return "outside the ops";
  return "other kernels";
}

std::string KernelProfileMarkdown(std::vector<ops::Backend::KernelTime> rows, int64_t step) {
  double total = 0;
  int64_t launches = 0;
  for (const auto& r : rows) total += r.ms, launches += r.calls;
  const auto share = [&](double ms) { return total > 0 ? 100 * ms / total : 0.0; };
  const auto tflops = [](double flops, double ms) { return ms > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0; };
  std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.ms > b.ms; });

  struct Part {
    double ms = 0, flops = 0;
    int64_t calls = 0;
  };
  std::map<std::string, Part> parts;
  for (const auto& r : rows) {
    Part& p = parts[KernelPart(r.name)];
    p.ms += r.ms;
    p.calls += r.calls;
    if (std::optional<double> f = ProductFlops(r.name)) p.flops += *f * r.calls;
  }
  std::vector<std::pair<std::string, Part>> by_time(parts.begin(), parts.end());
  std::stable_sort(by_time.begin(), by_time.end(),
                   [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });

  std::string md = absl::StrFormat(
      "# Kernel profile of step %d\n\n%.3f ms in %d calls. A GPU's rows are device time from launch to launch (a "
      "launch's time includes any wait of the device for the host before it); the CPU's are each op's wall time less "
      "the ops and products it calls, and the time between the ops.\n\n"
      "| part | calls | ms | share | TFLOP/s |\n|---|---:|---:|---:|---:|\n",
      step, total, launches);
  for (const auto& [name, p] : by_time) {
    md += absl::StrFormat("| %s | %d | %.3f | %.1f%% | %s |\n", name, p.calls, p.ms, share(p.ms),
                          p.flops > 0 ? absl::StrFormat("%.3g", tflops(p.flops, p.ms)) : "");
  }
  md +=
      "\nThe attention's own products are under \"matrix products\" with the GPU's gemm kernel and under "
      "\"attention\" on the CPU (run per head in parallel); the fused kernels are \"attention\". TFLOP/s: "
      "2·M·N·K (× batch) a product call over its time.\n\n"
      "| kernel | calls | ms | share | µs a call | TFLOP/s |\n|---|---:|---:|---:|---:|---:|\n";
  for (const auto& r : rows) {
    const std::optional<double> f = ProductFlops(r.name);
    md += absl::StrFormat("| %s | %d | %.3f | %.1f%% | %.1f | %s |\n", r.name, r.calls, r.ms, share(r.ms),
                          r.calls > 0 ? 1000 * r.ms / r.calls : 0.0,
                          f ? absl::StrFormat("%.3g", tflops(*f * r.calls, r.ms)) : "");
  }
  return md;
}

}  // namespace stability::train
