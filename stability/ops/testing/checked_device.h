// A stand-in GPU for tests on machines without one: DeviceType::kCuda backed by host
// memory, whose backend runs the CPU's ops but first checks that every pointer it is given
// lies in memory allocated on that device. Code that hands a kernel a host pointer (the
// caller's token ids, say) works on the CPU, where host and device are one, and fails on a
// real GPU with an illegal address — here it fails at once, naming the op and the argument.
// The other way round too: the device's memory is mapped with no access for host code except
// while one of its ops (or a copy) has it open, so host code that reads or writes device memory
// outside a kernel (a loss read straight from a device buffer, say) faults, with a message, as
// it would on a GPU. Each block ends at a guard page: a kernel past the end of its buffer faults.
// New memory is NaN (cudaMalloc's is not zero either): reading what nothing wrote shows.
//
//   ops::testing::CheckedDevice device;  // registers itself for kCuda; unregisters on exit
//   auto model = model::Model::Create(config, seed, device.device());
//   model->Forward(ids, targets);        // throws std::logic_error on a host pointer
//
// The trainer finds it too (train::ResolveDevice takes a registered CUDA backend), so
// `--device=cuda` runs end to end here.
//
// The ops' results are the CPU's, bit for bit. With the fused attention kernel set it keeps
// the CUDA backend's contract for it (AttentionStoresProbs false: nothing T×T on the device,
// the backward recomputes). With Mode::kBf16 the device also keeps what
// the CUDA backend keeps in bf16 (Backend::KeepsBf16Operands, Bf16Operands and their
// `next`/x_rounded hand-over, SavedValueBytes() = 2) and multiplies bf16-rounded operands on the
// CPU: the model's bf16 plumbing runs here — an op that skips its rounding must find its
// operand already rounded, a y left unwritten (telemetry off) must never be read. Not for
// processes that initialise CUDA. It counts its memory (the model's estimate is checked
// against it) and can be given a capacity (out-of-memory errors are tested with it).
#ifndef STABILITY_OPS_TESTING_CHECKED_DEVICE_H_
#define STABILITY_OPS_TESTING_CHECKED_DEVICE_H_

#include <memory>

#include "stability/base/tensor.h"

namespace stability::ops::testing {

class CheckedDevice {
 public:
  enum class Mode { kFp32, kBf16 };
  explicit CheckedDevice(Mode mode = Mode::kFp32);
  ~CheckedDevice();
  Device device() const { return {DeviceType::kCuda, 0}; }
  // Ops checked so far (each checks all its pointer arguments).
  int64_t checked_ops() const;
  // Bytes of device memory alive now, and their peak since the last ResetPeak.
  int64_t bytes_alive() const;
  int64_t peak_bytes() const;
  void ResetPeak();
  // A device of total_bytes: Backend::Memory() reports it, less what is alive, and an
  // allocation past it throws std::bad_alloc, as the CUDA allocator does. 0 (the default):
  // no limit, and Memory() reports nothing (total 0).
  void SetCapacity(int64_t total_bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stability::ops::testing

#endif  // STABILITY_OPS_TESTING_CHECKED_DEVICE_H_
