#include "cli/common.h"

#include <csignal>
#include <cstdio>

namespace stability::cli {
namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

}  // namespace

int Fail(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "stability %s: %s\n", command.c_str(), message.c_str());
  return 2;
}

const std::atomic<bool>* InstallStopHandler() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  return &g_stop;
}

}  // namespace stability::cli
