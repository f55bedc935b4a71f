#include "stability/base/tensor.h"

#include <stdexcept>
#include <string>

#include "gtest/gtest.h"

namespace stability {
namespace {

TEST(TensorTest, ZerosAreZeroAndReshapedSharesStorage) {
  Tensor t = Tensor::Zeros({2, 3});
  for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.f32()[i], 0.0f);
  Tensor r = t.Reshaped({3, 2});
  r.f32()[5] = 7.0f;
  EXPECT_EQ(t.f32()[5], 7.0f);
  EXPECT_THROW(t.Reshaped({4, 2}), std::invalid_argument);
}

// Views are ranges of one buffer: writes through either side are seen by the other, zeroing
// the buffer zeroes every view, and a view keeps the buffer alive after the buffer's handle.
TEST(TensorTest, ViewsAreRangesOfOneBuffer) {
  Tensor buffer = Tensor::Zeros({40});
  Tensor a = buffer.View(0, {2, 8}), b = buffer.View(16, {3});
  EXPECT_EQ(a.shape(), (Shape{2, 8}));
  EXPECT_EQ(b.numel(), 3);
  EXPECT_EQ(b.f32(), buffer.f32() + 16);
  b.f32()[2] = 5.0f;
  EXPECT_EQ(buffer.f32()[18], 5.0f);
  buffer.f32()[1] = 3.0f;
  EXPECT_EQ(a.f32()[1], 3.0f);
  buffer.SetZero();
  EXPECT_EQ(b.f32()[2], 0.0f);
  EXPECT_EQ(a.f32()[1], 0.0f);
  b.f32()[0] = 9.0f;
  buffer = Tensor();  // the last handle on the whole buffer gone: the view still reads it
  EXPECT_EQ(b.f32()[0], 9.0f);
  EXPECT_EQ(b.View(1, {2}).f32(), b.f32() + 1);  // a view of a view: offsets add
}

TEST(TensorTest, ViewOutsideTheTensorNamesBoth) {
  Tensor buffer = Tensor::Zeros({10}, DType::kBF16);
  EXPECT_EQ(static_cast<char*>(buffer.View(4, {2}).data()) - static_cast<char*>(buffer.data()), 8);
  try {
    buffer.View(8, {3});
    FAIL() << "a view past the end was made";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[8, 11) as [3] are not inside [10]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(buffer.View(-1, {1}), std::invalid_argument);
}

}  // namespace
}  // namespace stability
