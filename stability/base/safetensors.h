// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the
// raw little-endian tensor bytes. Used for debug dumps and checkpoints, so any tool that
// reads safetensors (Python's safetensors, PyTorch, numpy) reads ours.
//
// Writing is atomic: a temporary file in the same folder, fsync, rename. Reading checks
// every size and offset against the file before allocating, and names what is wrong.
#ifndef STABILITY_BASE_SAFETENSORS_H_
#define STABILITY_BASE_SAFETENSORS_H_

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "stability/base/tensor.h"

namespace stability {

struct SafetensorsFile {
  std::vector<std::pair<std::string, Tensor>> tensors;  // in file order
  std::map<std::string, std::string> metadata;

  // The tensor called `name`, or NotFound naming the file's tensors count.
  absl::StatusOr<Tensor> Get(const std::string& name) const;
};

// CPU tensors of dtype F32, F64, I32 or BF16; names unique and not "__metadata__".
absl::Status WriteSafetensors(const std::string& path, const SafetensorsFile& file);

// Largest JSON header accepted (a hostile header length is an error, not an allocation).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

}  // namespace stability

#endif  // STABILITY_BASE_SAFETENSORS_H_
