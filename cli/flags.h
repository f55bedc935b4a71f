// Flags of one subcommand: `--name=value` (or `--name value`; `--flag` alone means true).
// Every flag is declared with a default and a help line; an unknown or repeated flag is an
// error that names it and lists the known ones, so a typo never runs with a default.
#ifndef STABILITY_CLI_FLAGS_H_
#define STABILITY_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace stability::cli {

struct FlagSpec {
  std::string name;
  std::string default_value;
  std::string help;
};

class Flags {
 public:
  static absl::StatusOr<Flags> Parse(const std::string& command, int argc, char** argv,
                                     const std::vector<FlagSpec>& specs);
  // `stability <command> --help` text.
  static std::string Usage(const std::string& command, const std::vector<FlagSpec>& specs);

  const std::string& Get(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name) const;
  bool help() const { return help_; }

 private:
  std::map<std::string, std::string> values_;
  bool help_ = false;
};

}  // namespace stability::cli

#endif  // STABILITY_CLI_FLAGS_H_
