// The `stability` command: one binary, one subcommand per task.
//
//   bazel run //cli:stability -- train            (the tiny preset on the bundled corpus)
//   bazel run //cli:stability -- info
//   bazel run //cli:stability -- dump --preset=tiny --variant=qk_norm --out=/tmp/d.safetensors
//   bazel run //cli:stability -- help
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/dump.h"
#include "cli/info.h"
#include "cli/sweep.h"
#include "cli/train.h"

namespace {

struct Subcommand {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

constexpr Subcommand kSubcommands[] = {
    {"train", "train a model (no flags: the tiny preset on the bundled corpus)", stability::cli::RunTrain},
    {"prepare", "text files -> train/val token shards", stability::cli::RunPrepare},
    {"sweep", "methods x learning rates x seeds, in parallel; divergence, loss, sensitivity, cost tables",
     stability::cli::RunSweepCommand},
    {"report", "one self-contained HTML report of a run or sweep folder", stability::cli::RunReportCommand},
    {"info", "version, backends (CPU, CUDA + GPUs), threads, GEMM library, bundled data",
     stability::cli::RunInfo},
    {"dump", "one forward + backward to a safetensors file (parameters, logits, loss, gradients, telemetry)",
     stability::cli::RunDump},
};

void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: stability <subcommand> [flags]\n\nsubcommands:\n");
  for (const Subcommand& s : kSubcommands) std::fprintf(out, "  %-8s %s\n", s.name, s.summary);
  std::fprintf(out, "  %-8s %s\n", "help", "this list");
  std::fprintf(out, "\n`stability <subcommand> --help` explains its flags.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "help" || name == "--help" || name == "-h") {
    PrintUsage(stdout);
    return 0;
  }
  for (const Subcommand& s : kSubcommands) {
    if (name == s.name) return s.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "stability: unknown subcommand '%s'\n\n", name.c_str());
  PrintUsage(stderr);
  return 2;
}
