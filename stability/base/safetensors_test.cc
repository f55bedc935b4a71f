#include "stability/base/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace stability {
namespace {

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

TEST(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  SafetensorsFile f;
  Tensor a = Tensor::Empty({2, 3});
  for (int i = 0; i < 6; ++i) a.f32()[i] = 0.5f * i - 1;
  Tensor ids = Tensor::Empty({4}, DType::kI32);
  for (int i = 0; i < 4; ++i) ids.i32()[i] = 50256 - i;
  Tensor scalar = Tensor::Empty({}, DType::kF64);
  *static_cast<double*>(scalar.data()) = 3.25;
  f.tensors = {{"h.0.qkv.weight", a}, {"input_ids", ids}, {"loss", scalar}};
  f.metadata["config"] = R"({"n_layer": 2})";
  const std::string path = TempPath("roundtrip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, f).ok());

  absl::StatusOr<SafetensorsFile> r = ReadSafetensors(path);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->tensors.size(), 3u);
  EXPECT_EQ(r->metadata.at("config"), R"({"n_layer": 2})");
  Tensor a2 = *r->Get("h.0.qkv.weight");
  EXPECT_EQ(a2.shape(), (Shape{2, 3}));
  EXPECT_EQ(std::memcmp(a2.data(), a.data(), a.nbytes()), 0);
  EXPECT_EQ(r->Get("input_ids")->i32()[3], 50253);
  EXPECT_EQ(r->Get("loss")->shape(), Shape{});
  EXPECT_EQ(*static_cast<const double*>(r->Get("loss")->data()), 3.25);
  EXPECT_EQ(r->Get("nope").status().code(), absl::StatusCode::kNotFound);
}

void WriteRaw(const std::string& path, uint64_t header_len, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&header_len), 8);
  out << header << std::string(data_bytes, '\0');
}

TEST(SafetensorsTest, RejectsHostileHeaders) {
  const std::string path = TempPath("bad.safetensors");
  struct Case { uint64_t len; std::string header; size_t data; std::string expect; };
  const std::string ok_entry = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const Case cases[] = {
      {10ull << 30, "{}", 0, "exceeds the file"},  // 10 GB claimed header: error, not allocation
      {4, "nope", 0, "not a JSON object"},
      {ok_entry.size(), ok_entry, 4, "outside the data"},
      {0, "", 0, "not a JSON object"},
  };
  for (const Case& c : cases) {
    WriteRaw(path, c.len, c.header, c.data);
    absl::StatusOr<SafetensorsFile> r = ReadSafetensors(path);
    ASSERT_FALSE(r.ok()) << c.expect;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status();
  }
  const std::string wrong_size = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  WriteRaw(path, wrong_size.size(), wrong_size, 8);
  EXPECT_NE(ReadSafetensors(path).status().message().find("needs 12"), std::string::npos);
  const std::string huge_shape = R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})";
  WriteRaw(path, huge_shape.size(), huge_shape, 8);
  EXPECT_NE(ReadSafetensors(path).status().message().find("larger than the file"), std::string::npos);
  EXPECT_EQ(ReadSafetensors(TempPath("missing.safetensors")).status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, WriteIsAtomicAndLeavesNoTempFile) {
  const std::string dir = TempPath("atomic");
  std::filesystem::create_directories(dir);
  SafetensorsFile f;
  f.tensors = {{"w", Tensor::Zeros({8})}};
  ASSERT_TRUE(WriteSafetensors(dir + "/a.safetensors", f).ok());
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(e.path().filename(), "a.safetensors");
  }
  EXPECT_EQ(files, 1);
  EXPECT_FALSE(WriteSafetensors("/nonexistent-dir/a.safetensors", f).ok());
}

}  // namespace
}  // namespace stability
