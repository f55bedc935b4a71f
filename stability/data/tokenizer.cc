#include "stability/data/tokenizer.h"

#include "absl/strings/str_cat.h"
#include "stability/base/paths.h"
#include "stability/data/gpt2_tokenizer.h"
#include "stability/data/sentencepiece_tokenizer.h"

namespace stability::data {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "bytes"; }
  int64_t vocab_size() const override { return 257; }
  int32_t eot_id() const override { return 256; }
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id > 256) return absl::InvalidArgumentError(absl::StrCat("bytes tokenizer: id ", id, " outside [0, 257)"));
      if (id < 256) out.push_back(static_cast<char>(id));
    }
    return out;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> MakeByteTokenizer() { return std::make_unique<ByteTokenizer>(); }

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& spec) {
  if (spec == "bytes") return MakeByteTokenizer();
  if (spec == "gpt2") {
    const BundledData d = FindBundledData();
    return LoadGpt2Tokenizer(d.gpt2_encoder, d.gpt2_merges);
  }
  if (spec.rfind("gpt2:", 0) == 0) {
    const std::string dir = spec.substr(5);
    return LoadGpt2Tokenizer(dir + "/encoder.json", dir + "/vocab.bpe");
  }
  if (spec.rfind("sp:", 0) == 0) return LoadSentencePieceTokenizer(spec.substr(3));
  return absl::InvalidArgumentError(absl::StrCat("unknown tokenizer \"", spec,
                                                 "\"; use gpt2, gpt2:DIR, bytes or sp:MODEL_FILE"));
}

}  // namespace stability::data
