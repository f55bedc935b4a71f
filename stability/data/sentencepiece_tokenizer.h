// SentencePiece tokenizers through Debian's libsentencepiece: train a small vocabulary
// from text files, then encode and decode with the model file it writes.
#ifndef STABILITY_DATA_SENTENCEPIECE_TOKENIZER_H_
#define STABILITY_DATA_SENTENCEPIECE_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "stability/data/tokenizer.h"

namespace stability::data {

struct SentencePieceTrainOptions {
  int vocab_size = 4096;
  std::string model_type = "bpe";      // bpe | unigram | char | word
};

// Trains on `inputs` (UTF-8 text files) and writes `<model_prefix>.model` and `.vocab`.
// Byte fallback is on, so every input round-trips; </s> (id 2) is the end-of-text token.
// Trained on every line in order, so the same inputs give the same vocabulary.
absl::Status TrainSentencePiece(const std::vector<std::string>& inputs, const std::string& model_prefix,
                                const SentencePieceTrainOptions& options);

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& model_path);

}  // namespace stability::data

#endif  // STABILITY_DATA_SENTENCEPIECE_TOKENIZER_H_
