// What every subcommand shares: the error line and exit status, and Ctrl-C / SIGTERM
// handling that asks the running work to checkpoint and stop.
#ifndef STABILITY_CLI_COMMON_H_
#define STABILITY_CLI_COMMON_H_

#include <atomic>
#include <string>

namespace stability::cli {

// Prints "stability <command>: <message>" to stderr and returns the exit status 2.
int Fail(const std::string& command, const std::string& message);

// Installs SIGINT/SIGTERM handlers; the returned flag turns true on either.
const std::atomic<bool>* InstallStopHandler();

}  // namespace stability::cli

#endif  // STABILITY_CLI_COMMON_H_
