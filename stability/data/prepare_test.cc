#include "stability/data/prepare.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "stability/data/loader.h"
#include "stability/data/tokenizer.h"

namespace stability::data {
namespace fs = std::filesystem;
namespace {

std::string MakeCorpus(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir + "/sub");
  std::string text;
  for (int i = 0; i < 200; ++i) text += "The quick brown fox jumps over the lazy dog " + std::to_string(i) + ".\r\n";
  std::ofstream(dir + "/a.txt", std::ios::binary) << text;                      // CRLF
  std::ofstream(dir + "/sub/b.txt", std::ios::binary) << "Caf\xe9 cr\xe8me, na\xefve.\r" + text;  // ISO-8859-1
  std::ofstream(dir + "/ignored.md") << "not a .txt file";
  return dir;
}

TEST(PrepareTest, NormalizesNewlines) { EXPECT_EQ(NormalizeNewlines("a\r\nb\rc\n"), "a\nb\nc\n"); }

TEST(PrepareTest, BytesTokenizerSplitsEveryDocumentAndConvertsLatin1) {
  const std::string corpus = MakeCorpus("corpus_bytes"), out = ::testing::TempDir() + "/prep_bytes";
  fs::remove_all(out);
  int calls = 0;
  PrepareOptions o{.inputs = {corpus}, .out_dir = out, .tokenizer = "bytes", .val_fraction = 0.1,
                   .progress = [&](int64_t, int64_t, int64_t) { ++calls; }};
  absl::StatusOr<PrepareSummary> s = Prepare(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->documents, 2);
  EXPECT_EQ(calls, 2);
  ASSERT_EQ(s->latin1_converted.size(), 1u);
  EXPECT_NE(s->latin1_converted[0].find("b.txt"), std::string::npos);
  EXPECT_EQ(s->vocab_size, 257);
  EXPECT_EQ(s->train_tokens + s->val_tokens, s->bytes + 4);  // + one end-of-text per part
  EXPECT_NEAR(double(s->val_tokens) / (s->train_tokens + s->val_tokens), 0.1, 0.01);
  EXPECT_TRUE(fs::exists(out + "/prepare.json"));

  // The train shard decodes to the normalised, converted text.
  auto shard = *Shard::Open(*ListShards(out, "train").value().begin());
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < shard->size(); ++i) ids.push_back((*shard)[i]);
  const std::string text = *MakeByteTokenizer()->Decode(ids);
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_NE(text.find("Caf\xc3\xa9 cr\xc3\xa8me"), std::string::npos);  // UTF-8 now
  EXPECT_EQ(ids.front(), 256);

  // Existing shards are kept unless forced.
  absl::StatusOr<PrepareSummary> again = Prepare(o);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(again.status().message().find("--force"), std::string::npos);
  o.force = true;
  EXPECT_TRUE(Prepare(o).ok());
}

TEST(PrepareTest, ShardsRollOverAtTheLimit) {
  const std::string corpus = MakeCorpus("corpus_roll"), out = ::testing::TempDir() + "/prep_roll";
  fs::remove_all(out);
  absl::StatusOr<PrepareSummary> s =
      Prepare({.inputs = {corpus}, .out_dir = out, .tokenizer = "bytes", .shard_tokens = 4096});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->train_shards, (s->train_tokens + 4095) / 4096);
  EXPECT_EQ(ListShards(out, "train")->size(), static_cast<size_t>(s->train_shards));
}

TEST(PrepareTest, TrainsAndUsesASentencePieceVocabulary) {
  const std::string corpus = MakeCorpus("corpus_sp"), out = ::testing::TempDir() + "/prep_sp";
  fs::remove_all(out);
  absl::StatusOr<PrepareSummary> s = Prepare({.inputs = {corpus}, .out_dir = out, .tokenizer = "sp_train:360"});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->vocab_size, 360);
  EXPECT_EQ(s->tokenizer, "sp:" + fs::absolute(out).string() + "/tokenizer.model");
  auto tok = *LoadTokenizer(s->tokenizer);
  const std::string text = "The lazy dog jumps. Ünïcödé falls back to bytes: 日本";
  EXPECT_EQ(*tok->Decode(*tok->Encode(text)), text);
  EXPECT_LT(tok->Encode("The quick brown fox")->size(), 10u);  // 19 characters: merges happened
}

TEST(PrepareTest, BadInputsAreClear) {
  EXPECT_EQ(Prepare({.inputs = {"/nonexistent"}, .out_dir = "/tmp/x"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(Prepare({.inputs = {"/tmp"}, .out_dir = "/tmp/x", .val_fraction = 1.5}).status().message().find(
                "--val_fraction=1.5"),
            std::string::npos);
  const std::string corpus = MakeCorpus("corpus_bad");
  EXPECT_NE(Prepare({.inputs = {corpus}, .out_dir = ::testing::TempDir() + "/p", .tokenizer = "gpt3"})
                .status().message().find("unknown tokenizer \"gpt3\""),
            std::string::npos);
  EXPECT_NE(LoadTokenizer("sp:/nonexistent.model").status().message().find("not found"), std::string::npos);
}

}  // namespace
}  // namespace stability::data
