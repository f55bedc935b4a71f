// `stability dump`: the debug dump of stability/model/dump.h, from presets and overrides.
#ifndef STABILITY_CLI_DUMP_H_
#define STABILITY_CLI_DUMP_H_

namespace stability::cli {

int RunDump(int argc, char** argv);

}  // namespace stability::cli

#endif  // STABILITY_CLI_DUMP_H_
