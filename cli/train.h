// `stability train` and `stability prepare`.
#ifndef STABILITY_CLI_TRAIN_H_
#define STABILITY_CLI_TRAIN_H_

namespace stability::cli {

int RunTrain(int argc, char** argv);
int RunPrepare(int argc, char** argv);

}  // namespace stability::cli

#endif  // STABILITY_CLI_TRAIN_H_
