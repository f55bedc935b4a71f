// Small UTF-8 helpers shared by the tokenizers and `prepare`.
#ifndef STABILITY_DATA_UTF8_H_
#define STABILITY_DATA_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace stability::data {

// Byte offset of the first invalid UTF-8 sequence (overlong, surrogate, > U+10FFFF,
// truncated), or npos when `text` is valid.
size_t FindInvalidUtf8(std::string_view text);

// Decodes the code point at text[i] (valid UTF-8 assumed); sets *len to its byte length.
char32_t DecodeUtf8(std::string_view text, size_t i, int* len);

void AppendUtf8(char32_t cp, std::string* out);

// ISO-8859-1 bytes to UTF-8 (every byte is the code point of the same value).
std::string Latin1ToUtf8(std::string_view text);

}  // namespace stability::data

#endif  // STABILITY_DATA_UTF8_H_
