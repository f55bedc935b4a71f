// The stand-in GPU itself: what it catches (a host pointer handed to a kernel; host code
// touching device memory outside a kernel), what it counts, and that copies work.
#include "stability/ops/testing/checked_device.h"

#include <cmath>
#include <new>
#include <stdexcept>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "stability/ops/backend.h"

namespace stability::ops::testing {
namespace {

using ::testing::HasSubstr;

TEST(CheckedDeviceTest, AHostPointerHandedToAKernelThrowsNamingTheOpAndArgument) {
  CheckedDevice device;
  Backend& be = *GetBackend(device.device());
  Tensor x = Tensor::Zeros({8}, DType::kF32, device.device());
  std::vector<float> host(8, 1.0f);
  try {
    be.Add(x.f32(), host.data(), 8, x.f32());
    FAIL() << "a host pointer was accepted";
  } catch (const std::logic_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("Add: `a` is not memory of the device"));
  }
  EXPECT_GT(device.checked_ops(), 0);
}

TEST(CheckedDeviceTest, CopiesAndKernelsReachDeviceMemory) {
  CheckedDevice device;
  Backend& be = *GetBackend(device.device());
  const std::vector<float> a = {1, 2, 3}, b = {10, 20, 30};
  Tensor ta = Tensor::Empty({3}, DType::kF32, device.device()), tb = Tensor::Empty({3}, DType::kF32, device.device());
  ta.CopyFromHost(a.data());
  tb.CopyFromHost(b.data());
  be.AddInPlace(ta.f32(), tb.f32(), 3);
  const Tensor back = ta.To(kCpu);
  EXPECT_EQ(std::vector<float>(back.f32(), back.f32() + 3), (std::vector<float>{11, 22, 33}));
}

// cudaMalloc's memory is not zero: neither is the stand-in's (NaN), so a kernel that reads
// what nothing wrote shows it.
TEST(CheckedDeviceTest, NewMemoryIsNaNUntilWritten) {
  CheckedDevice device;
  const Tensor empty = Tensor::Empty({5}, DType::kF32, device.device()).To(kCpu);
  for (int64_t i = 0; i < 5; ++i) EXPECT_TRUE(std::isnan(empty.f32()[i])) << i;
  const Tensor zeros = Tensor::Zeros({5}, DType::kF32, device.device()).To(kCpu);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(zeros.f32()[i], 0.0f) << i;
}

// On a GPU, host code dereferencing a device pointer is an illegal access; here it faults too,
// with a message, outside a kernel (the CPU runs ops on the same memory only inside them).
TEST(CheckedDeviceDeathTest, HostCodeTouchingDeviceMemoryFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        CheckedDevice device;
        Tensor x = Tensor::Zeros({4}, DType::kF32, device.device());
        volatile float v = x.f32()[0];
        (void)v;
      },
      "host code read or wrote the stand-in GPU's memory outside a kernel");
}

// A kernel that runs past the end of its buffer (a size computed wrong) faults at the guard page.
TEST(CheckedDeviceDeathTest, AKernelPastTheEndOfItsBufferFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        CheckedDevice device;
        Tensor x = Tensor::Zeros({100}, DType::kF32, device.device());  // 400 bytes: 416 to the guard page
        GetBackend(device.device())->Scale(x.f32(), 200, 2.0f);
      },
      "ran past the end of its buffer");
}

TEST(CheckedDeviceTest, CountsItsMemoryAndRefusesPastItsCapacity) {
  CheckedDevice device;
  EXPECT_EQ(GetBackend(device.device())->Memory().total_bytes, 0) << "no capacity: nothing reported";
  const int64_t before = device.bytes_alive();
  device.ResetPeak();
  {
    Tensor x = Tensor::Empty({1000}, DType::kF32, device.device());
    EXPECT_EQ(device.bytes_alive(), before + 4000);
  }
  EXPECT_EQ(device.bytes_alive(), before);
  EXPECT_EQ(device.peak_bytes(), before + 4000);
  device.SetCapacity(before + 10000);
  const DeviceMemory m = GetBackend(device.device())->Memory();
  EXPECT_EQ(m.total_bytes, before + 10000);
  EXPECT_EQ(m.free_bytes, 10000);
  Tensor fits = Tensor::Empty({2000}, DType::kF32, device.device());
  EXPECT_THROW(Tensor::Empty({1000}, DType::kF32, device.device()), std::bad_alloc);
}

}  // namespace
}  // namespace stability::ops::testing
