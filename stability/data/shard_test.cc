#include "stability/data/shard.h"

#include <fstream>

#include "gtest/gtest.h"

namespace stability::data {
namespace {

std::string Tmp(const std::string& name) { return ::testing::TempDir() + "/" + name; }

TEST(ShardTest, RoundTripsBothVersions) {
  const std::vector<int32_t> small = {0, 1, 50256, 65535};
  ASSERT_TRUE(WriteShard(Tmp("v1.bin"), small, 65536).ok());
  auto s1 = *Shard::Open(Tmp("v1.bin"));
  EXPECT_EQ(s1->version(), 1);
  ASSERT_EQ(s1->size(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ((*s1)[i], small[i]);

  const std::vector<int32_t> big = {0, 65536, 255999};
  ASSERT_TRUE(WriteShard(Tmp("v2.bin"), big, 256000).ok());
  auto s2 = *Shard::Open(Tmp("v2.bin"));
  EXPECT_EQ(s2->version(), 2);
  EXPECT_EQ((*s2)[1], 65536);
  EXPECT_FALSE(WriteShard(Tmp("bad.bin"), {70000}, 65536).ok());
}

TEST(ShardTest, ReadsTheLlmCLayoutByteForByte) {
  // What llm.c's write_datafile produces: header then uint16 tokens.
  int32_t header[256] = {20240520, 1, 3};
  const uint16_t tokens[3] = {15496, 995, 50256};
  {
    std::ofstream out(Tmp("llmc.bin"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    out.write(reinterpret_cast<const char*>(tokens), sizeof(tokens));
  }
  auto s = *Shard::Open(Tmp("llmc.bin"));
  EXPECT_EQ((*s)[0], 15496);
  EXPECT_EQ((*s)[2], 50256);
}

TEST(ShardTest, RejectsBrokenFilesWithClearErrors) {
  ASSERT_TRUE(WriteShard(Tmp("ok.bin"), std::vector<int32_t>(100, 7), 50257).ok());
  std::ifstream in(Tmp("ok.bin"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  const auto write = [](const std::string& path, const std::string& b) { std::ofstream(path, std::ios::binary) << b; };

  write(Tmp("truncated.bin"), bytes.substr(0, bytes.size() - 10));
  absl::StatusOr<std::unique_ptr<Shard>> r = Shard::Open(Tmp("truncated.bin"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("header says 100 tokens"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("truncated.bin"), std::string::npos);

  std::string magic = bytes;
  magic[0] = 1;
  write(Tmp("magic.bin"), magic);
  EXPECT_NE(Shard::Open(Tmp("magic.bin")).status().message().find("wrong magic"), std::string::npos);
  std::string version = bytes;
  version[4] = 9;
  write(Tmp("version.bin"), version);
  EXPECT_NE(Shard::Open(Tmp("version.bin")).status().message().find("unsupported version 9"), std::string::npos);
  write(Tmp("short.bin"), "abc");
  EXPECT_NE(Shard::Open(Tmp("short.bin")).status().message().find("shorter than the 1024-byte header"),
            std::string::npos);
  EXPECT_EQ(Shard::Open(Tmp("missing.bin")).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace stability::data
