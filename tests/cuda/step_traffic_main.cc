// step_traffic: a bf16 training step of a preset, for the baseline and each method,
// projected onto a GPU from the bytes and flops its real CUDA kernels were measured to move
// and compute on the emulator (step_traffic.h), as a Markdown report.
//
//   bazel run //tests/cuda:step_traffic -- --size=gpt2_124m --methods=all --batch=16
//       --out=$PWD/docs/gpu/step_traffic-gpt2_124m.md   (one command line)
//
// Flags: --size (a size preset), --methods (comma-separated variant presets, or all),
// --batch, --seq (default: the preset's), --extrapolate_layers=true (emulate models of 1 and
// 2 layers and extrapolate to the preset's: every layer launches the same kernels on the same
// shapes; for presets too large to emulate whole), --cache_dir (each counted step kept there
// and read back instead of emulated again: another GPU's numbers, or methods counted by
// several processes at once, one report; --shard=K/N counts the methods K, K + N, … of the
// list only — tools/step_traffic_recount.sh runs N such processes), and the GPU: --peak_tflops,
// --bandwidth_tbs, --product_efficiency, --memory_efficiency, --attention_efficiency,
// --launch_us, --gpu_name.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "stability/model/config.h"
#include "tests/cuda/step_traffic.h"

namespace stability::cuda_traffic {
namespace {

struct Flags {
  std::string size = "gpt2_124m";
  std::vector<std::string> methods = {"baseline"};
  int64_t batch = 16, seq = 0;
  bool extrapolate_layers = false;
  int64_t shard = 0, shards = 1;
  std::string out, cache_dir;
  Gpu gpu;
};

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "step_traffic: %s\nusage: step_traffic --size=gpt2_124m --methods=baseline,qk_norm|all --batch=16 "
               "[--seq=N] [--extrapolate_layers=true] [--cache_dir=DIR] [--shard=K/N] [--out=report.md] "
               "[--peak_tflops=989.4 "
               "--bandwidth_tbs=3.35 "
               "--product_efficiency=0.7 --memory_efficiency=0.8 --attention_efficiency=0.3 --launch_us=2 "
               "--gpu_name=NAME]\n",
               why.c_str());
  std::exit(2);
}

Flags Parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) Usage("expected --name=value, got " + arg);
    const std::string key = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    const auto number = [&](double* x) {
      if (!absl::SimpleAtod(value, x) || *x <= 0) Usage("--" + key + " wants a positive number, got " + value);
    };
    const auto count = [&](int64_t* x) {
      if (!absl::SimpleAtoi(value, x) || *x <= 0) Usage("--" + key + " wants a positive integer, got " + value);
    };
    if (key == "size") {
      f.size = value;
    } else if (key == "methods") {
      f.methods = value == "all" ? model::VariantPresetNames() : absl::StrSplit(value, ',', absl::SkipEmpty());
    } else if (key == "batch") {
      count(&f.batch);
    } else if (key == "seq") {
      count(&f.seq);
    } else if (key == "extrapolate_layers") {
      if (value != "true" && value != "false") Usage("--extrapolate_layers wants true or false, got " + value);
      f.extrapolate_layers = value == "true";
    } else if (key == "out") {
      f.out = value;
    } else if (key == "cache_dir") {
      f.cache_dir = value;
    } else if (key == "shard") {
      const std::vector<std::string> kn = absl::StrSplit(value, '/');
      if (kn.size() != 2 || !absl::SimpleAtoi(kn[0], &f.shard) || !absl::SimpleAtoi(kn[1], &f.shards) || f.shards < 1 ||
          f.shard < 0 || f.shard >= f.shards) {
        Usage("--shard wants K/N with 0 <= K < N (this process's share of the methods), got " + value);
      }
    } else if (key == "gpu_name") {
      f.gpu.name = value;
    } else if (key == "peak_tflops") {
      number(&f.gpu.peak_tflops);
    } else if (key == "bandwidth_tbs") {
      number(&f.gpu.bandwidth_tbs);
    } else if (key == "product_efficiency") {
      number(&f.gpu.product_efficiency);
    } else if (key == "memory_efficiency") {
      number(&f.gpu.memory_efficiency);
    } else if (key == "attention_efficiency") {
      number(&f.gpu.attention_efficiency);
    } else if (key == "launch_us") {
      number(&f.gpu.launch_us);
    } else {
      Usage("unknown flag --" + key);
    }
  }
  // The baseline first: the others are compared with it.
  auto it = std::find(f.methods.begin(), f.methods.end(), "baseline");
  if (it != f.methods.end()) std::rotate(f.methods.begin(), it, it + 1);
  if (f.shards > 1) {
    std::vector<std::string> mine;
    for (size_t i = f.shard; i < f.methods.size(); i += f.shards) mine.push_back(f.methods[i]);
    if (mine.empty()) std::exit(0);  // more shards than methods: nothing for this one
    f.methods = mine;
  }
  return f;
}

struct Row {         // launches of one name
  std::string part;  // "matrix products" (cuBLAS), "attention" (our kernels with tensor-core flops), "other"
  int64_t launches = 0;
  double bytes_read = 0, bytes_written = 0, flops = 0, us = 0;
  std::map<std::string, int> bounds;
};
using Rows = std::map<std::string, Row>;

Rows ByName(const StepProjection& p) {
  Rows rows;
  for (const ProjectedLaunch& l : p.launches) {
    Row& r = rows[l.cost.name];
    r.part = l.cost.library && l.cost.flops > 0 ? "matrix products" : l.cost.flops > 0 ? "attention" : "other";
    ++r.launches;
    r.bytes_read += l.cost.bytes_read;
    r.bytes_written += l.cost.bytes_written;
    r.flops += l.cost.flops;
    r.us += l.us;
    ++r.bounds[l.bound];
  }
  return rows;
}

std::string Bound(const Row& r) {
  std::vector<std::string> parts;
  for (const auto& [bound, n] : r.bounds)
    parts.push_back(n == r.launches ? bound : absl::StrFormat("%s ×%d", bound, n));
  return absl::StrJoin(parts, ", ");
}

// A projection of `layers` layers from measurements at 1 and 2 (every layer launches the
// same kernels on the same shapes): per name, time and counts are affine in the layers.
Rows ExtrapolateLayers(const Rows& one, const Rows& two, int64_t layers) {
  Rows out;
  const double k = static_cast<double>(layers - 1);
  for (const auto& [name, b] : two) {
    const Row a = one.count(name) ? one.at(name) : Row{};
    Row& r = out[name];
    r.part = b.part;
    r.launches = a.launches + static_cast<int64_t>(k) * (b.launches - a.launches);
    r.bytes_read = a.bytes_read + k * (b.bytes_read - a.bytes_read);
    r.bytes_written = a.bytes_written + k * (b.bytes_written - a.bytes_written);
    r.flops = a.flops + k * (b.flops - a.flops);
    r.us = a.us + k * (b.us - a.us);
    for (const auto& [bound, n] : b.bounds) {
      const int64_t m = a.bounds.count(bound) ? a.bounds.at(bound) : 0;
      if (const int64_t at = m + static_cast<int64_t>(k) * (n - m); at > 0) r.bounds[bound] = at;
    }
  }
  return out;
}

struct MethodResult {
  std::string method;
  Rows rows;
  double us = 0, bytes = 0;
  std::map<std::string, double> part_us;
};

int Main(int argc, char** argv) {
  const Flags f = Parse(argc, argv);
  std::vector<MethodResult> results;
  model::ModelConfig first;
  for (const std::string& method : f.methods) {
    absl::StatusOr<model::ModelConfig> c = model::MakeConfig(f.size, method);
    if (!c.ok()) Usage(std::string(c.status().message()));
    const int64_t seq = f.seq > 0 ? f.seq : c->seq_len;
    if (seq > c->seq_len) Usage(absl::StrFormat("--seq=%d is longer than %s's %d", seq, f.size, c->seq_len));
    if (results.empty()) first = *c;
    std::cerr << absl::StrFormat("step_traffic: %s / %s, batch %d × %d ...\n", f.size, method, f.batch, seq);
    MethodResult r{method};
    const auto measure = [&](int64_t layers) -> Rows {
      model::ModelConfig lc = *c;
      lc.n_layer = layers;
      const std::string cached = f.cache_dir.empty()
                                     ? ""
                                     : absl::StrFormat("%s/%s-%s-batch%d-seq%d-layers%d.tsv", f.cache_dir, f.size,
                                                       method, f.batch, seq, layers);
      absl::StatusOr<std::vector<LaunchCost>> step = absl::NotFoundError("");
      if (!cached.empty()) step = ReadLaunchCosts(cached);
      if (!step.ok() && !absl::IsNotFound(step.status())) {
        std::cerr << "step_traffic: " << step.status().message() << "\n";
        std::exit(1);
      }
      if (!step.ok()) {
        step = StepTraffic(lc, f.batch, seq);
        if (step.ok() && !cached.empty()) {
          if (absl::Status s = WriteLaunchCosts(cached, *step); !s.ok()) {
            std::cerr << "step_traffic: " << s.message() << "\n";
            std::exit(1);
          }
        }
      }
      if (!step.ok()) {
        std::cerr << absl::StrFormat("step_traffic: %s / %s: %s\n", f.size, method, step.status().message());
        std::exit(1);
      }
      return ByName(ProjectStep(*step, f.gpu));
    };
    r.rows = f.extrapolate_layers ? ExtrapolateLayers(measure(1), measure(2), c->n_layer) : measure(c->n_layer);
    for (const auto& [name, row] : r.rows) {
      r.us += row.us;
      r.bytes += row.bytes_read + row.bytes_written;
      r.part_us[row.part] += row.us;
    }
    results.push_back(r);
  }

  const int64_t seq = f.seq > 0 ? f.seq : first.seq_len;
  const double tokens = static_cast<double>(f.batch * seq);
  const double flops_per_token =
      6 * MatmulParameters(first) + 6.0 * static_cast<double>(first.n_layer * first.n_embd * seq);
  std::string md = absl::StrFormat(
      "# Projected bf16 training step: %s, batch %d × %d, on an %s\n\n"
      "Not a measurement of time: every launch of one training step (forward, backward, AdamW with clipping; "
      "telemetry off; the tensor-core attention) ran on the CUDA emulator with its device-memory traffic counted "
      "(`tests/cuda:step_traffic`; each kernel's 32-byte sectors read and written, counted once a launch; tensor-core "
      "(mma.sync, WMMA) and "
      "cuBLAS flops; counted at batches 1 and 2 and extrapolated launch by launch%s). Each launch is then timed "
      "by its roofline on the GPU: the larger of its bytes at %.0f%% of %.2f TB/s and its flops at %.0f%% "
      "(cuBLAS) or %.0f%% (our tensor-core attention) of %.1f TFLOP/s, and at least %.1f µs; launches one after "
      "another. MFU counts 6N + 6·L·C·T FLOPs a token (N = %.1fM parameters in matrix products), as "
      "tools/gpu_bench.py does.\n\n"
      "| method | step ms | tokens/s | MFU | vs baseline | products ms | attention ms | other ms | GB moved |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
      f.size, f.batch, seq, f.gpu.name,
      f.extrapolate_layers
          ? absl::StrFormat("; models of 1 and 2 layers emulated and extrapolated to %d, name by name", first.n_layer)
          : "",
      100 * f.gpu.memory_efficiency, f.gpu.bandwidth_tbs, 100 * f.gpu.product_efficiency,
      100 * f.gpu.attention_efficiency, f.gpu.peak_tflops, f.gpu.launch_us, MatmulParameters(first) / 1e6);
  const double base_us = results.front().us;
  for (const MethodResult& r : results) {
    const double tps = tokens / (r.us * 1e-6);
    const auto part = [&](const char* name) { return r.part_us.count(name) ? r.part_us.at(name) / 1e3 : 0.0; };
    md += absl::StrFormat(
        "| %s | %.2f | %.0f | %.1f%% | %s | %.2f | %.2f | %.2f | %.2f |\n", r.method, r.us / 1e3, tps,
        100 * tps * flops_per_token / (f.gpu.peak_tflops * 1e12),
        r.method == results.front().method ? "—" : absl::StrFormat("%+.1f%%", 100 * (base_us / r.us - 1)),
        part("matrix products"), part("attention"), part("other"), r.bytes / 1e9);
  }
  md +=
      "\n\"vs baseline\": the method's tokens/s against the baseline's. \"attention\": the tensor-core attention's "
      "kernels (our kernels with tensor-core flops). \"other\": every kernel that is neither a product nor the "
      "attention "
      "(norms, elementwise passes, cross-entropy, AdamW, reductions, copies and sets).\n";

  const MethodResult& base = results.front();
  md += absl::StrFormat("\n## Where the %s step goes (the 25 largest rows)\n\n", base.method);
  md +=
      "| kernel or call | launches | GB read | GB written | GFLOP | ms | share | bound by |\n"
      "|---|---:|---:|---:|---:|---:|---:|---|\n";
  std::vector<std::pair<std::string, Row>> sorted(base.rows.begin(), base.rows.end());
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto& a, const auto& b) { return a.second.us > b.second.us; });
  for (size_t i = 0; i < std::min<size_t>(25, sorted.size()); ++i) {
    const auto& [name, r] = sorted[i];
    md +=
        absl::StrFormat("| %s | %d | %.3f | %.3f | %.1f | %.3f | %.1f%% | %s |\n", name, r.launches, r.bytes_read / 1e9,
                        r.bytes_written / 1e9, r.flops / 1e9, r.us / 1e3, 100 * r.us / base.us, Bound(r));
  }

  if (results.size() > 1) {
    md +=
        "\n## What each method adds to the baseline's step (the 4 largest differences by kernel or call)\n\n"
        "| method | kernel or call | launches | ms |\n|---|---|---:|---:|\n";
    for (size_t m = 1; m < results.size(); ++m) {
      std::map<std::string, std::pair<int64_t, double>> diff;
      for (const auto& [name, r] : results[m].rows) diff[name] = {r.launches, r.us};
      for (const auto& [name, r] : base.rows) diff[name].first -= r.launches, diff[name].second -= r.us;
      std::vector<std::pair<std::string, std::pair<int64_t, double>>> d(diff.begin(), diff.end());
      std::stable_sort(d.begin(), d.end(), [](const auto& a, const auto& b) {
        return std::abs(a.second.second) > std::abs(b.second.second);
      });
      for (size_t i = 0; i < std::min<size_t>(4, d.size()); ++i) {
        if (std::abs(d[i].second.second) < 1e-3) break;
        md += absl::StrFormat("| %s | %s | %+d | %+.3f |\n", results[m].method, d[i].first, d[i].second.first,
                              d[i].second.second / 1e3);
      }
    }
  }

  if (f.out.empty()) {
    std::cout << md;
  } else {
    std::ofstream out(f.out);
    out << md;
    if (!out) {
      std::fprintf(stderr, "step_traffic: cannot write %s\n", f.out.c_str());
      return 1;
    }
    std::fprintf(stderr, "step_traffic: wrote %s\n", f.out.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace stability::cuda_traffic

int main(int argc, char** argv) { return stability::cuda_traffic::Main(argc, argv); }
