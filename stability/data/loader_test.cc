#include "stability/data/loader.h"

#include <cstdio>
#include <filesystem>
#include <set>

#include "gtest/gtest.h"

namespace stability::data {
namespace {

// Two shards whose tokens are their stream positions: 0..999 and 1000..1499.
std::vector<std::string> MakeShards() {
  const std::string dir = ::testing::TempDir() + "/loader";
  std::filesystem::create_directories(dir);
  std::vector<int32_t> a(1000), b(500);
  for (int i = 0; i < 1000; ++i) a[i] = i;
  for (int i = 0; i < 500; ++i) b[i] = 1000 + i;
  EXPECT_TRUE(WriteShard(dir + "/train_000000.bin", a, 1 << 20).ok());
  EXPECT_TRUE(WriteShard(dir + "/train_000001.bin", b, 1 << 20).ok());
  return *ListShards(dir, "train");
}

TEST(LoaderTest, TargetsAreIdsShiftedAndWindowsCrossShards) {
  auto d = *DataLoader::Open(MakeShards(), {.batch = 4, .seq = 10, .shuffle = false});
  EXPECT_EQ(d->tokens(), 1500);
  EXPECT_EQ(d->windows(), 149);  // (1500 − 1) / 10
  Tensor ids, targets;
  for (int step = 0; step < 25; ++step) {
    ASSERT_TRUE(d->Next(&ids, &targets).ok());
    for (int64_t i = 0; i < 40; ++i) EXPECT_EQ(targets.i32()[i], ids.i32()[i] + 1);
  }
  // Unshuffled: batch 25 (0-based 24) starts at window 96, i.e. token 960; rows are contiguous.
  EXPECT_EQ(ids.i32()[0], 960);
  EXPECT_EQ(ids.i32()[39], 999);
}

TEST(LoaderTest, ShuffleIsDeterministicCoversEveryWindowAndPositionRestores) {
  const auto paths = MakeShards();
  auto a = *DataLoader::Open(paths, {.batch = 4, .seq = 10, .seed = 5});
  auto b = *DataLoader::Open(paths, {.batch = 4, .seq = 10, .seed = 5});
  auto c = *DataLoader::Open(paths, {.batch = 4, .seq = 10, .seed = 6});
  Tensor ia, ta, ib, tb, ic, tc;
  std::set<int32_t> starts;
  bool differs = false;
  for (int step = 0; step < 37; ++step) {  // one epoch: 149 / 4 = 37 batches
    ASSERT_TRUE(a->Next(&ia, &ta).ok());
    ASSERT_TRUE(b->Next(&ib, &tb).ok());
    ASSERT_TRUE(c->Next(&ic, &tc).ok());
    for (int r = 0; r < 4; ++r) starts.insert(ia.i32()[r * 10]);
    EXPECT_EQ(0, std::memcmp(ia.data(), ib.data(), ia.nbytes()));
    differs |= std::memcmp(ia.data(), ic.data(), ia.nbytes()) != 0;
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(starts.size(), 148u);  // 37 × 4 distinct windows, each starting at a multiple of 10
  for (int32_t s : starts) EXPECT_EQ(s % 10, 0);

  // Save, read three batches, restore in a new loader: the same three batches follow.
  const LoaderPosition saved = a->position();
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(a->Next(&ia, &ta).ok());
    expected.emplace_back(ia.i32(), ia.i32() + 40);
  }
  EXPECT_EQ(a->position().epoch, 1);
  auto d = *DataLoader::Open(paths, {.batch = 4, .seq = 10, .seed = 5});
  ASSERT_TRUE(d->set_position(saved).ok());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(d->Next(&ib, &tb).ok());
    EXPECT_EQ(std::vector<int32_t>(ib.i32(), ib.i32() + 40), expected[i]);
  }
}

TEST(LoaderTest, RanksReadDisjointSlices) {
  const auto paths = MakeShards();
  auto r0 = *DataLoader::Open(paths, {.batch = 2, .seq = 10, .seed = 1, .rank = 0, .world = 2});
  auto r1 = *DataLoader::Open(paths, {.batch = 2, .seq = 10, .seed = 1, .rank = 1, .world = 2});
  auto one = *DataLoader::Open(paths, {.batch = 4, .seq = 10, .seed = 1});
  Tensor a, at, b, bt, c, ct;
  ASSERT_TRUE(r0->Next(&a, &at).ok());
  ASSERT_TRUE(r1->Next(&b, &bt).ok());
  ASSERT_TRUE(one->Next(&c, &ct).ok());
  EXPECT_EQ(0, std::memcmp(a.data(), c.data(), a.nbytes()));                  // rows 0-1
  EXPECT_EQ(0, std::memcmp(b.data(), c.i32() + 20, b.nbytes()));             // rows 2-3
}

TEST(LoaderTest, ErrorsAreClear) {
  const auto paths = MakeShards();
  EXPECT_NE(DataLoader::Open(paths, {.batch = 100, .seq = 100}).status().message().find("fewer than one batch"),
            std::string::npos);
  EXPECT_NE(DataLoader::Open(paths, {.batch = 1, .seq = 10, .vocab_size = 1200}).status().message().find(
                "outside the model's vocabulary"),
            std::string::npos);
  EXPECT_EQ(ListShards("/nonexistent", "train").status().code(), absl::StatusCode::kNotFound);
  auto d = *DataLoader::Open(paths, {.batch = 1, .seq = 10});
  EXPECT_FALSE(d->set_position({0, 100000}).ok());
}

}  // namespace
}  // namespace stability::data

namespace stability::data {
namespace {

TEST(LoaderTest, Version2TokensBeyondInt32AreOutsideTheVocabulary) {
  // Found by shard_fuzzer: a uint32 token >= 2^31 reads as a negative int32.
  const std::string path = ::testing::TempDir() + "/huge_token.bin";
  ASSERT_TRUE(WriteShard(path, {1, 2, 3, 4}, 1 << 20).ok());  // version 2 (vocab > 65536)
  {
    std::FILE* f = std::fopen(path.c_str(), "r+b");
    const uint32_t huge = 0x80000001u;
    std::fseek(f, 1024 + 4, SEEK_SET);
    std::fwrite(&huge, 4, 1, f);
    std::fclose(f);
  }
  absl::StatusOr<std::unique_ptr<DataLoader>> d = DataLoader::Open({path}, {.batch = 1, .seq = 2, .vocab_size = 50257});
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("outside the model's vocabulary"), std::string::npos) << d.status();
}

}  // namespace
}  // namespace stability::data
