// `stability info`: version, backends, threads, GEMM library, bundled data.
#ifndef STABILITY_CLI_INFO_H_
#define STABILITY_CLI_INFO_H_

namespace stability::cli {

int RunInfo(int argc, char** argv);

}  // namespace stability::cli

#endif  // STABILITY_CLI_INFO_H_
