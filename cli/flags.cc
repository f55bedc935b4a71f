#include "cli/flags.h"

#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace stability::cli {

absl::StatusOr<Flags> Flags::Parse(const std::string& command, int argc, char** argv,
                                   const std::vector<FlagSpec>& specs) {
  Flags flags;
  for (const FlagSpec& s : specs) flags.values_[s.name] = s.default_value;
  std::set<std::string> seen;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      flags.help_ = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("stability ", command, ": unexpected argument '", arg,
                                                     "' (flags look like --name=value)"));
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool has_value = eq != std::string::npos;
    if (has_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (!flags.values_.count(name)) {
      std::vector<std::string> known;
      for (const FlagSpec& s : specs) known.push_back("--" + s.name);
      return absl::InvalidArgumentError(absl::StrCat("stability ", command, ": unknown flag --", name,
                                                     "; known flags: ", absl::StrJoin(known, " ")));
    }
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(absl::StrCat("stability ", command, ": flag --", name, " given twice"));
    }
    if (!has_value) {
      // "--name value", unless the next token is another flag: then a boolean "true".
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
        value = argv[++i];
      } else {
        value = "true";
      }
    }
    flags.values_[name] = value;
  }
  return flags;
}

std::string Flags::Usage(const std::string& command, const std::vector<FlagSpec>& specs) {
  std::string out = absl::StrCat("usage: stability ", command, " [flags]\n\nflags:\n");
  for (const FlagSpec& s : specs) {
    absl::StrAppend(&out, "  --", s.name, s.default_value.empty() ? "" : "=" + s.default_value, "\n      ", s.help,
                    "\n");
  }
  return out;
}

const std::string& Flags::Get(const std::string& name) const { return values_.at(name); }

absl::StatusOr<int64_t> Flags::GetInt(const std::string& name) const {
  int64_t v = 0;
  if (!absl::SimpleAtoi(Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, "=", Get(name), " is not an integer"));
  }
  return v;
}

}  // namespace stability::cli
