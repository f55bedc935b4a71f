// Tensor: a shape, a dtype, a device and shared, 64-byte aligned storage. Row-major and
// contiguous always; a Tensor is a handle (copies share storage, Clone() copies data).
//
//   Tensor x = Tensor::Zeros({B * T, C});          // fp32 on the CPU
//   float* p = x.f32();
//   Tensor ids = Tensor::Empty({B, T}, DType::kI32);
//
// Storage for a device comes from the allocator registered for it: the CPU one is built
// in; the CUDA backend registers its own (base does not know about CUDA).
#ifndef STABILITY_BASE_TENSOR_H_
#define STABILITY_BASE_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace stability {

enum class DType { kF32, kF64, kI32, kBF16 };
size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);  // safetensors spelling: "F32", "F64", "I32", "BF16"

enum class DeviceType { kCpu, kCuda };
struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;
  bool operator==(const Device&) const = default;
  std::string ToString() const;  // "cpu", "cuda:0"
};
inline constexpr Device kCpu{};

using Shape = std::vector<int64_t>;
int64_t NumElements(const Shape& shape);
std::string ShapeToString(const Shape& shape);  // "[2, 3]"

// Raw memory of one device. Implementations must return 64-byte aligned blocks.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual void Zero(void* ptr, size_t bytes) = 0;
  // Copies between this device's memory and host memory (synchronous).
  virtual void CopyFromHost(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
};
// Registers the allocator used for `type` (a backend calls this once at start-up; a test
// may put a counting one in front of the CPU's) and returns the one it replaces. Tensors
// keep the allocator that made them, so it must outlive them.
Allocator* RegisterAllocator(DeviceType type, Allocator* allocator);

class Tensor {
 public:
  Tensor() = default;
  static Tensor Empty(const Shape& shape, DType dtype = DType::kF32, Device device = kCpu);
  static Tensor Zeros(const Shape& shape, DType dtype = DType::kF32, Device device = kCpu);

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i < 0 ? shape_.size() + i : i]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return NumElements(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return numel() * DTypeSize(dtype_); }
  bool defined() const { return storage_ != nullptr; }

  void* data() { return storage_.get(); }
  const void* data() const { return storage_.get(); }
  float* f32() { return static_cast<float*>(data()); }
  const float* f32() const { return static_cast<const float*>(data()); }
  int32_t* i32() { return static_cast<int32_t*>(data()); }
  const int32_t* i32() const { return static_cast<const int32_t*>(data()); }

  void SetZero();
  Tensor Clone() const;  // same device, new storage, same bytes
  // A copy on `device` (a GPU tensor's values reach the host with To(kCpu)).
  Tensor To(Device device) const;
  // All nbytes() from / to host memory.
  void CopyFromHost(const void* host_src);
  void CopyToHost(void* host_dst) const;
  // Same storage, another shape with the same number of elements.
  Tensor Reshaped(const Shape& shape) const;
  // Elements [offset, offset + NumElements(shape)) of this tensor as `shape`: a view that
  // shares (and keeps alive) the whole storage, so that many tensors can be one buffer (the
  // model's gradients: zeroed and all-reduced at once). Aligned as the storage is only where
  // offset · DTypeSize is a multiple of 64.
  Tensor View(int64_t offset, const Shape& shape) const;

 private:
  Shape shape_;
  DType dtype_ = DType::kF32;
  Device device_;
  std::shared_ptr<void> storage_;
};

}  // namespace stability

#endif  // STABILITY_BASE_TENSOR_H_
