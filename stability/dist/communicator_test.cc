// The communicators' collectives. Under plain `bazel test` this is one process (the single
// communicator); //tests/dist:mpi_test also runs it under `mpirun -np 2`, where
// CommunicatorFromEnvironment() picks MPI. Sizes cross the MPI chunk (4 MiB) so the chunked
// paths run, and AllGatherInChunks is driven with a chunk smaller than a rank's piece.
#include "stability/dist/communicator.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace stability::dist {
namespace {

Communicator& Comm() {
  static std::unique_ptr<Communicator> comm = [] {
    absl::StatusOr<std::unique_ptr<Communicator>> c = CommunicatorFromEnvironment();
    if (!c.ok()) std::abort();
    return std::move(*c);
  }();
  return *comm;
}

constexpr int64_t kLarge = 3 * (1 << 20) + 17;  // floats: 12 MB, over two 4 MiB chunks

TEST(CommunicatorTest, AllReduceSumsOverRanksInChunks) {
  Communicator& c = Comm();
  std::vector<float> x(kLarge);
  for (int64_t i = 0; i < kLarge; ++i) x[i] = static_cast<float>((i % 1000) + c.rank());
  ASSERT_TRUE(c.AllReduceSum(x.data(), kLarge).ok());
  const int r = c.size();
  for (int64_t i = 0; i < kLarge; i += 4099) {
    ASSERT_EQ(x[i], static_cast<float>(r * (i % 1000) + r * (r - 1) / 2)) << i;
  }
  double d = 0.5 + c.rank();
  ASSERT_TRUE(c.AllReduceSum(&d, 1).ok());
  EXPECT_EQ(d, 0.5 * r + r * (r - 1) / 2.0);
  double m[2] = {-1.0 * c.rank(), 10.0 + c.rank()};
  ASSERT_TRUE(c.AllReduceMax(m, 2).ok());
  EXPECT_EQ(m[0], 0.0);
  EXPECT_EQ(m[1], 10.0 + (r - 1));
}

TEST(CommunicatorTest, AllGatherPlacesEachRanksPiece) {
  Communicator& c = Comm();
  std::vector<float> send(kLarge), recv(kLarge * c.size(), -1.0f);
  for (int64_t i = 0; i < kLarge; ++i) send[i] = static_cast<float>(c.rank() * 10 + i % 7);
  ASSERT_TRUE(c.AllGather(send.data(), kLarge, recv.data()).ok());
  for (int r = 0; r < c.size(); ++r)
    for (int64_t i = 0; i < kLarge; i += 1021) ASSERT_EQ(recv[r * kLarge + i], static_cast<float>(r * 10 + i % 7));
}

TEST(CommunicatorTest, AllGatherInChunksCoversEveryElementOnce) {
  Communicator& c = Comm();
  const int64_t piece = 1000, chunk = 96;  // 11 chunks, the last one short
  std::vector<int> seen(piece * c.size(), 0);
  std::vector<float> got(piece * c.size(), -1.0f);
  std::vector<float> send(chunk), recv(chunk * c.size());
  absl::Status s = AllGatherInChunks(
      c, piece, chunk, send.data(), recv.data(),
      [&](int64_t off, int64_t len, float* dst) {
        for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<float>(c.rank() * piece + off + i);
      },
      [&](int64_t off, int64_t len, const float* all) {
        for (int r = 0; r < c.size(); ++r) {
          for (int64_t i = 0; i < len; ++i) {
            got[r * piece + off + i] = all[r * len + i];
            ++seen[r * piece + off + i];
          }
        }
      });
  ASSERT_TRUE(s.ok()) << s;
  for (int64_t i = 0; i < piece * c.size(); ++i) {
    ASSERT_EQ(seen[i], 1) << i;
    ASSERT_EQ(got[i], static_cast<float>(i)) << i;
  }
}

}  // namespace
}  // namespace stability::dist
