// FNV-1a 64-bit checksum of a file, for detecting corrupt or half-written checkpoints
// (not an integrity guarantee against tampering).
#ifndef STABILITY_BASE_CHECKSUM_H_
#define STABILITY_BASE_CHECKSUM_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace stability {

// 16 lowercase hex digits.
absl::StatusOr<std::string> FileChecksum(const std::string& path);

}  // namespace stability

#endif  // STABILITY_BASE_CHECKSUM_H_
