#include "stability/ops/cuda/device_query.h"

#include "gtest/gtest.h"

namespace stability::cuda {
namespace {

TEST(DeviceQueryTest, ReportsDevicesOrWhyNone) {
  const CudaInfo info = QueryCuda();
  const std::string line = DescribeCuda(info);
  EXPECT_FALSE(line.empty());
#ifdef STABILITY_HAS_CUDA
  EXPECT_TRUE(info.compiled);
  EXPECT_GE(info.runtime_version, 12000) << line;
#else
  EXPECT_FALSE(info.compiled);
#endif
  if (info.devices.empty()) {
    EXPECT_FALSE(info.unavailable_reason.empty());
    EXPECT_NE(line.find(info.unavailable_reason), std::string::npos) << line;
    GTEST_SKIP() << "no GPU: " << line;
  }
  for (const CudaDevice& d : info.devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GT(d.total_memory_bytes, 0);
    EXPECT_GE(d.compute_major, 8) << "kernels are compiled for sm_80 and sm_90a";
    EXPECT_TRUE(d.kernel_ran) << "test kernel did not run on " << d.name;
  }
}

TEST(DeviceQueryTest, DescribesFakeInfo) {
  CudaInfo info;
  info.compiled = true;
  info.runtime_version = 13000;
  info.unavailable_reason = "cudaGetDeviceCount: error 35";
  EXPECT_EQ(DescribeCuda(info), "CUDA 13.0 runtime: no GPU (cudaGetDeviceCount: error 35)");
  info.devices.push_back({0, "NVIDIA H100", 9, 0, int64_t{80} << 30, 132, true});
  EXPECT_EQ(DescribeCuda(info), "CUDA 13.0 runtime: 1 GPU: [0] NVIDIA H100 (sm_90, 80.0 GiB, 132 SMs)");
}

}  // namespace
}  // namespace stability::cuda
