#include "stability/data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace stability::data {

absl::Status WriteShard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size) {
  const int version = vocab_size <= 65536 ? 1 : 2;
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = version;
  if (tokens.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", tokens.size(), " tokens exceed one shard's int32 count"));
  }
  header[2] = static_cast<int32_t>(tokens.size());
  std::vector<char> body;
  if (version == 1) {
    std::vector<uint16_t> t(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("token ", tokens[i], " at ", i, " outside vocab ", vocab_size));
      }
      t[i] = static_cast<uint16_t>(tokens[i]);
    }
    body.assign(reinterpret_cast<const char*>(t.data()), reinterpret_cast<const char*>(t.data() + t.size()));
  } else {
    body.assign(reinterpret_cast<const char*>(tokens.data()), reinterpret_cast<const char*>(tokens.data() + tokens.size()));
  }
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return absl::UnavailableError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  bool ok = std::fwrite(header, sizeof(header), 1, f) == 1 &&
            (body.empty() || std::fwrite(body.data(), body.size(), 1, f) == 1) && std::fflush(f) == 0 &&
            ::fsync(::fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    return absl::UnavailableError(absl::StrCat("writing shard ", path, ": ", err));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Shard>> Shard::Open(const std::string& path) {
  const auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat("token shard ", path, ": ", why,
                                            " (expected llm.c's .bin layout: re-create it with `stability prepare`)"));
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open token shard ", path, ": ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::NotFoundError(absl::StrCat("cannot stat ", path));
  }
  const int64_t file_size = st.st_size;
  int32_t header[kShardHeaderInts];
  if (file_size < static_cast<int64_t>(sizeof(header)) || ::pread(fd, header, sizeof(header), 0) != sizeof(header)) {
    ::close(fd);
    return bad(absl::StrCat("file of ", file_size, " bytes is shorter than the 1024-byte header"));
  }
  if (header[0] != kShardMagic) {
    ::close(fd);
    return bad(absl::StrCat("wrong magic ", header[0], ", expected ", kShardMagic));
  }
  if (header[1] != 1 && header[1] != 2) {
    ::close(fd);
    return bad(absl::StrCat("unsupported version ", header[1], " (1: uint16 tokens, 2: uint32 tokens)"));
  }
  const int64_t count = header[2];
  const int64_t token_bytes = header[1] == 1 ? 2 : 4;
  if (count < 0 || static_cast<int64_t>(sizeof(header)) + count * token_bytes != file_size) {
    ::close(fd);
    return bad(absl::StrCat("header says ", count, " tokens (", sizeof(header) + count * token_bytes,
                            " bytes) but the file has ", file_size, " bytes; truncated or corrupt?"));
  }
  std::unique_ptr<Shard> s(new Shard);
  s->path_ = path;
  s->version_ = header[1];
  s->count_ = count;
  s->map_bytes_ = static_cast<size_t>(file_size);
  s->map_ = ::mmap(nullptr, s->map_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (s->map_ == MAP_FAILED) {
    s->map_ = nullptr;
    return absl::UnavailableError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(errno)));
  }
  s->tokens_ = static_cast<const char*>(s->map_) + sizeof(header);
  return s;
}

Shard::~Shard() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
}

}  // namespace stability::data
