// The flags that describe one run, shared by `train` and `sweep`: --preset, --variant,
// --config, every TrainConfig field and every model switch. One table, one parser.
#ifndef STABILITY_CLI_RUN_FLAGS_H_
#define STABILITY_CLI_RUN_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cli/flags.h"
#include "stability/train/train_config.h"

namespace stability::cli {

std::vector<FlagSpec> RunFlagSpecs();

// The model switches and training fields given explicitly on the command line, as JSON
// objects {"model": {...}, "train": {...}} (values typed as each field expects).
nlohmann::json ExplicitRunFlags(const Flags& flags, int argc, char** argv);

// The RunConfig from --config (if given), then --preset/--variant, then the flags that
// were actually given on the command line (argv), in that order of precedence.
absl::StatusOr<train::RunConfig> RunConfigFromFlags(const Flags& flags, int argc, char** argv);

}  // namespace stability::cli

#endif  // STABILITY_CLI_RUN_FLAGS_H_
