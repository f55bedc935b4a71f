#include "stability/base/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "stability/base/status.h"

namespace stability {
namespace {

using nlohmann::json;

absl::StatusOr<DType> ParseDType(const std::string& s) {
  if (s == "F32") return DType::kF32;
  if (s == "F64") return DType::kF64;
  if (s == "I32") return DType::kI32;
  if (s == "BF16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype \"", s, "\" (supported: F32, F64, I32, BF16)"));
}

absl::Status WriteAll(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) return absl::UnavailableError(absl::StrCat("writing ", path, ": ", std::strerror(errno)));
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tensor> SafetensorsFile::Get(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  return absl::NotFoundError(absl::StrCat("no tensor named \"", name, "\" (the file has ", tensors.size(), " tensors)"));
}

absl::Status WriteSafetensors(const std::string& path, const SafetensorsFile& file) {
  json header = json::object();
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    if (name == "__metadata__" || !names.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors: duplicate or reserved tensor name \"", name, "\""));
    }
    if (t.device().type != DeviceType::kCpu) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors: tensor \"", name, "\" is not on the CPU"));
    }
    header[name] = {{"dtype", DTypeName(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  if (!file.metadata.empty()) header["__metadata__"] = file.metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  const uint64_t header_len = text.size();

  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  absl::Status s = WriteAll(fd, &header_len, 8, tmp);  // x86-64 is little-endian
  if (s.ok()) s = WriteAll(fd, text.data(), text.size(), tmp);
  for (const auto& [name, t] : file.tensors) {
    if (s.ok()) s = WriteAll(fd, t.data(), t.nbytes(), tmp);
  }
  if (s.ok() && ::fsync(fd) != 0) s = absl::UnavailableError(absl::StrCat("fsync ", tmp, ": ", std::strerror(errno)));
  ::close(fd);
  if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    s = absl::UnavailableError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  if (!s.ok()) std::remove(tmp.c_str());
  return s;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::error_code ec;
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot stat ", path, ": ", ec.message()));
  const auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(path, ": not a valid safetensors file: ", why));
  };
  uint64_t header_len = 0;
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(&header_len), 8)) return bad("shorter than 8 bytes");
  if (header_len > kMaxSafetensorsHeaderBytes || header_len > file_size - 8) {
    return bad(absl::StrCat("header length ", header_len, " exceeds the file (", file_size, " bytes) or the ",
                            kMaxSafetensorsHeaderBytes, "-byte limit"));
  }
  std::string text(header_len, '\0');
  if (!in.read(text.data(), header_len)) return bad("truncated header");
  json header = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!header.is_object()) return bad("header is not a JSON object");
  const uint64_t data_size = file_size - 8 - header_len;

  SafetensorsFile out;
  struct Entry { std::string name; DType dtype; Shape shape; uint64_t begin, end; };
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) return bad("__metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) return bad(absl::StrCat("metadata \"", m.key(), "\" is not a string"));
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const json& e = it.value();
    const std::string where = absl::StrCat("tensor \"", it.key(), "\": ");
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets") ||
        !e["dtype"].is_string() || !e["shape"].is_array() || !e["data_offsets"].is_array() ||
        e["data_offsets"].size() != 2 || !e["data_offsets"][0].is_number_unsigned() ||
        !e["data_offsets"][1].is_number_unsigned()) {
      return bad(where + "needs dtype (string), shape (array) and data_offsets ([begin, end])");
    }
    absl::StatusOr<DType> dtype = ParseDType(e["dtype"].get<std::string>());
    if (!dtype.ok()) return bad(where + std::string(dtype.status().message()));
    Shape shape;
    uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      if (!d.is_number_unsigned()) return bad(where + "shape entries must be non-negative integers");
      const uint64_t v = d.get<uint64_t>();
      if (v != 0 && numel > data_size / v) return bad(where + "shape is larger than the file");
      numel *= v;
      shape.push_back(static_cast<int64_t>(v));
    }
    const uint64_t begin = e["data_offsets"][0].get<uint64_t>(), end = e["data_offsets"][1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return bad(absl::StrCat(where, "data_offsets [", begin, ", ", end, "] outside the data (", data_size, " bytes)"));
    }
    if (end - begin != numel * DTypeSize(*dtype)) {
      return bad(absl::StrCat(where, "data_offsets span ", end - begin, " bytes but shape ", ShapeToString(shape),
                              " of ", DTypeName(*dtype), " needs ", numel * DTypeSize(*dtype)));
    }
    entries.push_back({it.key(), *dtype, shape, begin, end});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].begin < entries[i - 1].end) {
      return bad(absl::StrCat("tensors \"", entries[i - 1].name, "\" and \"", entries[i].name, "\" overlap"));
    }
  }
  for (const Entry& e : entries) {
    Tensor t = Tensor::Empty(e.shape, e.dtype);
    in.seekg(static_cast<std::streamoff>(8 + header_len + e.begin));
    if (!in.read(static_cast<char*>(t.data()), static_cast<std::streamsize>(e.end - e.begin))) {
      return bad(absl::StrCat("tensor \"", e.name, "\": truncated data"));
    }
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace stability
