// A plain-C++ facade over libsentencepiece. Debian's sentencepiece headers declare their
// own `absl::string_view`, which clashes with the real Abseil; so only
// sentencepiece_wrapper.cc includes them, and it includes no Abseil header.
// Errors are returned as messages ("" = success).
#ifndef STABILITY_DATA_INTERNAL_SENTENCEPIECE_WRAPPER_H_
#define STABILITY_DATA_INTERNAL_SENTENCEPIECE_WRAPPER_H_

#include <memory>
#include <string>
#include <vector>

namespace stability::data::internal {

std::string SentencePieceTrain(const std::string& args);

class SentencePieceModel {
 public:
  SentencePieceModel();
  ~SentencePieceModel();
  std::string Load(const std::string& path);
  int PieceSize() const;
  int EosId() const;
  std::string Encode(const std::string& text, std::vector<int>* ids) const;
  std::string Decode(const std::vector<int>& ids, std::string* text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stability::data::internal

#endif  // STABILITY_DATA_INTERNAL_SENTENCEPIECE_WRAPPER_H_
