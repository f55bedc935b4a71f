// A table of a struct's fields for JSON round trips with precise errors, so every config
// (model, training, sweep) reads and writes itself the same way:
//
//   const JsonFields<Cfg>& Fields() {
//     static const JsonFields<Cfg> f = {STABILITY_JSON_FIELD(Cfg, lr), ...};
//     return f; }
//   json j = ToJson(cfg, Fields());
//   absl::Status s = FromJson(j, Fields(), &cfg, "training config");
//
// Enums are fields too (STABILITY_JSON_ENUM with a name table). FlagValueToJson turns a
// command-line string into the JSON value a field expects ("3" -> 3, "true" -> true).
#ifndef STABILITY_BASE_JSON_FIELDS_H_
#define STABILITY_BASE_JSON_FIELDS_H_

#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace stability {

template <typename S>
struct JsonField {
  const char* name;
  std::function<nlohmann::json(const S&)> get;
  std::function<absl::Status(const nlohmann::json&, S&)> set;
};

template <typename S>
using JsonFields = std::vector<JsonField<S>>;

template <typename T>
absl::Status ReadJsonScalar(const char* name, const nlohmann::json& j, T& out) {
  const bool ok = std::is_same_v<T, bool>       ? j.is_boolean()
                  : std::is_integral_v<T>       ? j.is_number_integer()
                  : std::is_floating_point_v<T> ? j.is_number()
                                                : j.is_string();
  if (!ok) {
    const char* want = std::is_same_v<T, bool>       ? "true or false"
                       : std::is_integral_v<T>       ? "an integer"
                       : std::is_floating_point_v<T> ? "a number"
                                                     : "a string";
    return absl::InvalidArgumentError(absl::StrCat("field \"", name, "\" must be ", want, ", got ", j.dump()));
  }
  out = j.get<T>();
  return absl::OkStatus();
}

template <typename E>
std::string EnumToName(const std::map<std::string, E>& names, E value) {
  for (const auto& [n, v] : names)
    if (v == value) return n;
  return "?";
}

template <typename E>
absl::Status ReadJsonEnum(const char* name, const nlohmann::json& j, const std::map<std::string, E>& names, E& out) {
  if (j.is_string()) {
    auto it = names.find(j.get<std::string>());
    if (it != names.end()) {
      out = it->second;
      return absl::OkStatus();
    }
  }
  std::vector<std::string> keys;
  for (const auto& [n, v] : names) keys.push_back(n);
  return absl::InvalidArgumentError(
      absl::StrCat("field \"", name, "\" must be one of ", absl::StrJoin(keys, ", "), ", got ", j.dump()));
}

#define STABILITY_JSON_FIELD(S, f)                                                   \
  ::stability::JsonField<S> {                                                        \
    #f, [](const S& s) { return ::nlohmann::json(s.f); },                            \
        [](const ::nlohmann::json& j, S& s) { return ::stability::ReadJsonScalar(#f, j, s.f); } \
  }
#define STABILITY_JSON_ENUM(S, f, names)                                                    \
  ::stability::JsonField<S> {                                                               \
    #f, [](const S& s) { return ::nlohmann::json(::stability::EnumToName(names, s.f)); },   \
        [](const ::nlohmann::json& j, S& s) { return ::stability::ReadJsonEnum(#f, j, names, s.f); } \
  }

template <typename S>
nlohmann::json ToJson(const S& s, const JsonFields<S>& fields) {
  nlohmann::json j = nlohmann::json::object();
  for (const JsonField<S>& f : fields) j[f.name] = f.get(s);
  return j;
}

template <typename S>
bool HasField(const JsonFields<S>& fields, const std::string& name) {
  for (const JsonField<S>& f : fields)
    if (name == f.name) return true;
  return false;
}

template <typename S>
std::vector<std::string> FieldNames(const JsonFields<S>& fields) {
  std::vector<std::string> names;
  for (const JsonField<S>& f : fields) names.push_back(f.name);
  return names;
}

// Sets the fields present in `j` (an object); `what` names the config in errors.
template <typename S>
absl::Status FromJson(const nlohmann::json& j, const JsonFields<S>& fields, S* s, const std::string& what) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(what, " must be a JSON object, got ", j.dump()));
  for (auto it = j.begin(); it != j.end(); ++it) {
    const JsonField<S>* field = nullptr;
    for (const JsonField<S>& f : fields)
      if (it.key() == f.name) field = &f;
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown ", what, " field \"", it.key(),
                                                     "\"; known fields: ", absl::StrJoin(FieldNames(fields), ", ")));
    }
    if (absl::Status st = field->set(it.value(), *s); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(what, " ", st.message()));
    }
  }
  return absl::OkStatus();
}

// "3" -> 3, "0.5" -> 0.5, "true" -> true, anything else -> the string itself.
inline nlohmann::json FlagValueToJson(const std::string& value) {
  nlohmann::json j = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || j.is_object() || j.is_array() || j.is_null()) return value;
  return j;
}

}  // namespace stability

#endif  // STABILITY_BASE_JSON_FIELDS_H_
