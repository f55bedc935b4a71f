// `prepare`: text files or folders -> train/val token shards (+ prepare.json).
//
// Documents are the input files (folders: their *.txt files, recursively), in sorted path
// order. Each is read as UTF-8; a file that is not valid UTF-8 is read as ISO-8859-1 and
// converted (reported in the summary). Line ends are normalised to "\n" (CRLF and lone
// CR). A document's tokens are split by position: the first (1 − val_fraction) go to
// train, the rest to val, each part preceded by the end-of-text token (as llm.c's scripts
// do per document), so every book is in both splits and no text is in both.
#ifndef STABILITY_DATA_PREPARE_H_
#define STABILITY_DATA_PREPARE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace stability::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // files or folders
  std::string out_dir;
  // gpt2 | gpt2:DIR | bytes | sp:MODEL_FILE | sp_train:VOCAB_SIZE (trains one on the
  // inputs, saved as OUT_DIR/tokenizer.model)
  std::string tokenizer = "gpt2";
  double val_fraction = 0.05;
  int64_t shard_tokens = 100'000'000;
  bool force = false;  // replace shards already in out_dir
  // Called after each document: (documents done, documents, tokens so far).
  std::function<void(int64_t, int64_t, int64_t)> progress;
};

struct PrepareSummary {
  int64_t documents = 0;
  int64_t bytes = 0;
  std::vector<std::string> latin1_converted;
  int64_t train_tokens = 0, val_tokens = 0;
  int64_t train_shards = 0, val_shards = 0;
  std::string tokenizer;  // the spec that loads it again
  int64_t vocab_size = 0;
  nlohmann::json ToJson() const;
};

absl::StatusOr<PrepareSummary> Prepare(const PrepareOptions& options);

// CRLF and lone CR to LF.
std::string NormalizeNewlines(std::string_view text);

}  // namespace stability::data

#endif  // STABILITY_DATA_PREPARE_H_
