#include "stability/base/tensor.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace stability {
namespace {

class CpuAllocator final : public Allocator {
 public:
  void* Allocate(size_t bytes) override {
    // aligned_alloc needs a multiple of the alignment; 0 bytes still gets a valid block.
    const size_t rounded = (bytes + 63) / 64 * 64 + 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void Free(void* ptr) override { std::free(ptr); }
  void Zero(void* ptr, size_t bytes) override { std::memset(ptr, 0, bytes); }
  void CopyFromHost(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void CopyToHost(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
};

Allocator*& AllocatorSlot(DeviceType type) {
  static CpuAllocator cpu;
  static Allocator* slots[2] = {&cpu, nullptr};
  return slots[static_cast<int>(type)];
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kI32: return 4;
    case DType::kBF16: return 2;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF64: return "F64";
    case DType::kI32: return "I32";
    case DType::kBF16: return "BF16";
  }
  return "?";
}

std::string Device::ToString() const {
  return type == DeviceType::kCpu ? "cpu" : absl::StrCat("cuda:", index);
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const Shape& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

Allocator* RegisterAllocator(DeviceType type, Allocator* allocator) {
  Allocator* previous = AllocatorSlot(type);
  AllocatorSlot(type) = allocator;
  return previous;
}

Tensor Tensor::Empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("Tensor::Empty: negative dimension in " + ShapeToString(shape));
  }
  Allocator* allocator = AllocatorSlot(device.type);
  if (allocator == nullptr) {
    throw std::runtime_error("no allocator registered for device " + device.ToString() +
                             " (is its backend linked in?)");
  }
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::shared_ptr<void>(allocator->Allocate(t.nbytes()),
                                     [allocator](void* p) { allocator->Free(p); });
  return t;
}

Tensor Tensor::Zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = Empty(shape, dtype, device);
  t.SetZero();
  return t;
}

void Tensor::SetZero() {
  if (defined()) AllocatorSlot(device_.type)->Zero(data(), nbytes());
}

Tensor Tensor::Clone() const { return To(device_); }

Tensor Tensor::To(Device device) const {
  if (device_.type != DeviceType::kCpu && device.type != DeviceType::kCpu) return To(kCpu).To(device);
  Tensor t = Empty(shape_, dtype_, device);
  if (device.type == DeviceType::kCpu) {
    CopyToHost(t.data());
  } else {
    t.CopyFromHost(data());
  }
  return t;
}

void Tensor::CopyFromHost(const void* host_src) {
  if (defined()) AllocatorSlot(device_.type)->CopyFromHost(data(), host_src, nbytes());
}

void Tensor::CopyToHost(void* host_dst) const {
  if (defined()) AllocatorSlot(device_.type)->CopyToHost(host_dst, data(), nbytes());
}

Tensor Tensor::Reshaped(const Shape& shape) const {
  if (NumElements(shape) != numel()) {
    throw std::invalid_argument(absl::StrCat("Tensor::Reshaped: ", ShapeToString(shape_), " has ",
                                             numel(), " elements, ", ShapeToString(shape), " needs ",
                                             NumElements(shape)));
  }
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::View(int64_t offset, const Shape& shape) const {
  if (offset < 0 || offset + NumElements(shape) > numel()) {
    throw std::invalid_argument(absl::StrCat("Tensor::View: elements [", offset, ", ", offset + NumElements(shape),
                                             ") as ", ShapeToString(shape), " are not inside ", ShapeToString(shape_),
                                             " (", numel(), " elements)"));
  }
  Tensor t = *this;
  t.shape_ = shape;
  t.storage_ = std::shared_ptr<void>(storage_, static_cast<char*>(storage_.get()) + offset * DTypeSize(dtype_));
  return t;
}

}  // namespace stability
