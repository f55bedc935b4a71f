#include "stability/ops/backend.h"

namespace stability::ops {
namespace {

Backend*& Slot(DeviceType type) {
  static Backend* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(type)];
}

}  // namespace

Backend* GetBackend(Device device) { return Slot(device.type); }
void RegisterBackend(DeviceType type, Backend* backend) { Slot(type) = backend; }

}  // namespace stability::ops
