// `stability sweep` and `stability report`.
#ifndef STABILITY_CLI_SWEEP_H_
#define STABILITY_CLI_SWEEP_H_

namespace stability::cli {

int RunSweepCommand(int argc, char** argv);
int RunReportCommand(int argc, char** argv);

}  // namespace stability::cli

#endif  // STABILITY_CLI_SWEEP_H_
