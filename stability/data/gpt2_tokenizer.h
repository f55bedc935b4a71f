// GPT-2 byte-level BPE (Radford et al. 2019), as OpenAI's encoder.py and tiktoken's "gpt2":
//
// 1. Pre-tokenise UTF-8 text with the pattern
//      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//    (a hand-written scanner over code points; ICU gives the Unicode classes).
// 2. Map each piece's bytes to printable unicode characters (bytes_to_unicode).
// 3. Merge adjacent symbols by the rank of the pair in vocab.bpe, lowest first.
// 4. Look the resulting symbols up in encoder.json.
#ifndef STABILITY_DATA_GPT2_TOKENIZER_H_
#define STABILITY_DATA_GPT2_TOKENIZER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "stability/data/tokenizer.h"

namespace stability::data {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGpt2Tokenizer(const std::string& encoder_json_path,
                                                             const std::string& vocab_bpe_path);

// Step 1 alone, for tests: the pieces of `text` (must be valid UTF-8).
std::vector<std::string_view> Gpt2PreTokenize(std::string_view text);

}  // namespace stability::data

#endif  // STABILITY_DATA_GPT2_TOKENIZER_H_
