#include "stability/base/checksum.h"

#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace stability {

absl::StatusOr<std::string> FileChecksum(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  uint64_t h = 14695981039346656037ull;
  std::vector<unsigned char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
    for (size_t i = 0; i < n; ++i) {
      h ^= buf[i];
      h *= 1099511628211ull;
    }
  }
  const bool err = std::ferror(f);
  std::fclose(f);
  if (err) return absl::DataLossError(absl::StrCat("error reading ", path));
  return absl::StrFormat("%016x", h);
}

}  // namespace stability
