#include "stability/data/sentencepiece_tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "stability/data/internal/sentencepiece_wrapper.h"

namespace stability::data {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "sp:" + path_; }
  int64_t vocab_size() const override { return sp_.PieceSize(); }
  int32_t eot_id() const override { return sp_.EosId(); }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    std::vector<int> ids;
    if (std::string e = sp_.Encode(std::string(text), &ids); !e.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sentencepiece encode: ", e));
    }
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) {
        return absl::InvalidArgumentError(absl::StrCat("sentencepiece: id ", id, " outside [0, ", vocab_size(), ")"));
      }
    }
    std::string out;
    if (std::string e = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out); !e.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sentencepiece decode: ", e));
    }
    return out;
  }

  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path) {
    auto t = std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer);
    t->path_ = path;
    if (!std::filesystem::is_regular_file(path)) {
      return absl::NotFoundError(absl::StrCat("SentencePiece model ", path,
                                              " not found (make one with `stability prepare --tokenizer=sp_train:N`)"));
    }
    if (std::string e = t->sp_.Load(path); !e.empty()) {
      return absl::DataLossError(absl::StrCat(path, ": not a SentencePiece model: ", e));
    }
    if (t->sp_.EosId() < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": the model has no </s> (eos) piece"));
    return std::unique_ptr<Tokenizer>(std::move(t));
  }

 private:
  std::string path_;
  internal::SentencePieceModel sp_;
};

}  // namespace

absl::Status TrainSentencePiece(const std::vector<std::string>& inputs, const std::string& model_prefix,
                                const SentencePieceTrainOptions& o) {
  if (inputs.empty()) return absl::InvalidArgumentError("TrainSentencePiece: no input files");
  // unk=0, bos=1, eos=2 is SentencePiece's default; we use pad=-1 and eos as end of text.
  const std::string args = absl::StrCat(
      "--input=", absl::StrJoin(inputs, ","), " --model_prefix=", model_prefix, " --vocab_size=", o.vocab_size,
      " --model_type=", o.model_type, " --byte_fallback=true --character_coverage=0.9995",
      // All lines, in order: sampling would make the vocabulary depend on an unseeded RNG.
      " --input_sentence_size=0 --shuffle_input_sentence=false --num_threads=2 --minloglevel=2 --max_sentence_length=16384",
      " --split_digits=true --allow_whitespace_only_pieces=true --remove_extra_whitespaces=false",
      " --normalization_rule_name=identity");
  if (std::string e = internal::SentencePieceTrain(args); !e.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("SentencePiece training failed: ", e));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& model_path) {
  return SentencePieceTokenizer::Load(model_path);
}

}  // namespace stability::data
