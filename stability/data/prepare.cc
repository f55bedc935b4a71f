#include "stability/data/prepare.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "stability/data/sentencepiece_tokenizer.h"
#include "stability/data/shard.h"
#include "stability/data/tokenizer.h"
#include "stability/data/utf8.h"

namespace stability::data {
namespace fs = std::filesystem;

std::string NormalizeNewlines(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

nlohmann::json PrepareSummary::ToJson() const {
  return {{"documents", documents},       {"bytes", bytes},           {"latin1_converted", latin1_converted},
          {"train_tokens", train_tokens}, {"val_tokens", val_tokens}, {"train_shards", train_shards},
          {"val_shards", val_shards},     {"tokenizer", tokenizer},   {"vocab_size", vocab_size}};
}

namespace {

absl::StatusOr<std::vector<std::string>> CollectFiles(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& in : inputs) {
    std::error_code ec;
    if (fs::is_regular_file(in, ec)) {
      files.push_back(in);
    } else if (fs::is_directory(in, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(in, ec))
        if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path().string());
    } else {
      return absl::NotFoundError(absl::StrCat("prepare: input ", in, " is neither a file nor a folder"));
    }
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  if (files.empty()) return absl::NotFoundError("prepare: no input files (folders contribute their *.txt files)");
  return files;
}

absl::StatusOr<std::string> ReadDocument(const std::string& path, bool* converted) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("prepare: cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  *converted = FindInvalidUtf8(text) != std::string::npos;
  if (*converted) text = Latin1ToUtf8(text);
  return NormalizeNewlines(text);
}

// Buffers one split's tokens and writes a shard whenever shard_tokens are reached.
class ShardWriter {
 public:
  ShardWriter(std::string dir, std::string split, int64_t shard_tokens, int64_t vocab)
      : dir_(std::move(dir)), split_(std::move(split)), shard_tokens_(shard_tokens), vocab_(vocab) {}
  absl::Status Add(int32_t eot, const std::vector<int32_t>& ids, size_t begin, size_t end) {
    buffer_.push_back(eot);
    buffer_.insert(buffer_.end(), ids.begin() + begin, ids.begin() + end);
    total_ += 1 + static_cast<int64_t>(end - begin);
    while (static_cast<int64_t>(buffer_.size()) >= shard_tokens_) {
      std::vector<int32_t> rest(buffer_.begin() + shard_tokens_, buffer_.end());
      buffer_.resize(shard_tokens_);
      if (absl::Status s = Flush(); !s.ok()) return s;
      buffer_ = std::move(rest);
    }
    return absl::OkStatus();
  }
  absl::Status Flush() {
    if (buffer_.empty()) return absl::OkStatus();
    const std::string path = absl::StrFormat("%s/%s_%06d.bin", dir_, split_, shards_++);
    absl::Status s = WriteShard(path, buffer_, vocab_);
    buffer_.clear();
    return s;
  }
  int64_t total() const { return total_; }
  int64_t shards() const { return shards_; }

 private:
  std::string dir_, split_;
  int64_t shard_tokens_, vocab_;
  std::vector<int32_t> buffer_;
  int64_t total_ = 0;
  int shards_ = 0;
};

}  // namespace

absl::StatusOr<PrepareSummary> Prepare(const PrepareOptions& o) {
  if (!(o.val_fraction > 0 && o.val_fraction < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("prepare: --val_fraction=", o.val_fraction, " must be in (0, 1)"));
  }
  if (o.shard_tokens < 1024) return absl::InvalidArgumentError("prepare: --shard_tokens must be at least 1024");
  if (o.out_dir.empty()) return absl::InvalidArgumentError("prepare: --out=DIR is required");
  absl::StatusOr<std::vector<std::string>> files = CollectFiles(o.inputs);
  if (!files.ok()) return files.status();

  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("prepare: cannot create ", o.out_dir, ": ", ec.message()));
  std::vector<fs::path> existing;
  for (const auto& e : fs::directory_iterator(o.out_dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.path().extension() == ".bin" && (n.rfind("train_", 0) == 0 || n.rfind("val_", 0) == 0)) existing.push_back(e.path());
  }
  if (!existing.empty() && !o.force) {
    return absl::AlreadyExistsError(absl::StrCat("prepare: ", o.out_dir, " already holds shards (",
                                                 existing.front().filename().string(),
                                                 ", ...); choose another --out or pass --force to replace them"));
  }
  for (const fs::path& p : existing) fs::remove(p, ec);

  PrepareSummary summary;
  std::string spec = o.tokenizer;
  if (spec.rfind("sp_train:", 0) == 0) {
    int vocab = 0;
    if (!absl::SimpleAtoi(spec.substr(9), &vocab) || vocab < 260) {
      return absl::InvalidArgumentError(absl::StrCat("prepare: --tokenizer=", spec, ": give sp_train:VOCAB_SIZE, at least 260"));
    }
    // SentencePiece trains from files: give it the normalised UTF-8 texts.
    const fs::path tmp = fs::path(o.out_dir) / "sp_train_input";
    fs::create_directories(tmp, ec);
    std::vector<std::string> normalised;
    for (size_t i = 0; i < files->size(); ++i) {
      bool converted;
      absl::StatusOr<std::string> text = ReadDocument((*files)[i], &converted);
      if (!text.ok()) return text.status();
      const std::string p = (tmp / absl::StrCat(i, ".txt")).string();
      std::ofstream(p, std::ios::binary) << *text;
      normalised.push_back(p);
    }
    SentencePieceTrainOptions sp;
    sp.vocab_size = vocab;
    const std::string prefix = (fs::absolute(o.out_dir) / "tokenizer").string();
    absl::Status s = TrainSentencePiece(normalised, prefix, sp);
    fs::remove_all(tmp, ec);
    if (!s.ok()) return s;
    spec = "sp:" + prefix + ".model";
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(spec);
  if (!tok.ok()) return tok.status();
  summary.tokenizer = (*tok)->name();
  summary.vocab_size = (*tok)->vocab_size();

  ShardWriter train(o.out_dir, "train", o.shard_tokens, summary.vocab_size);
  ShardWriter val(o.out_dir, "val", o.shard_tokens, summary.vocab_size);
  for (size_t i = 0; i < files->size(); ++i) {
    bool converted;
    absl::StatusOr<std::string> text = ReadDocument((*files)[i], &converted);
    if (!text.ok()) return text.status();
    if (converted) summary.latin1_converted.push_back((*files)[i]);
    absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(*text);
    if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat((*files)[i], ": ", ids.status().message()));
    const size_t cut = static_cast<size_t>(static_cast<double>(ids->size()) * (1.0 - o.val_fraction));
    if (absl::Status s = train.Add((*tok)->eot_id(), *ids, 0, cut); !s.ok()) return s;
    if (absl::Status s = val.Add((*tok)->eot_id(), *ids, cut, ids->size()); !s.ok()) return s;
    summary.documents++;
    summary.bytes += static_cast<int64_t>(text->size());
    if (o.progress) o.progress(i + 1, files->size(), train.total() + val.total());
  }
  if (absl::Status s = train.Flush(); !s.ok()) return s;
  if (absl::Status s = val.Flush(); !s.ok()) return s;
  summary.train_tokens = train.total();
  summary.val_tokens = val.total();
  summary.train_shards = train.shards();
  summary.val_shards = val.shards();
  std::ofstream(fs::path(o.out_dir) / "prepare.json") << summary.ToJson().dump(2) << "\n";
  return summary;
}

}  // namespace stability::data
