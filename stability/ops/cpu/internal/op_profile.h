// The CPU backend's kernel profile (Backend::StartKernelProfile, the trainer's
// --profile_step): each op's wall time on the thread that runs the model, exclusive of the
// ops and matrix products it calls, summed by name. Ops open a scope:
//
//   void CpuBackend::NormForward(...) { OpScope scope("NormForward"); ... }
//   OpScope scope(OpProfile::Get().on() ? absl::StrFormat("sgemm %d×%d×%d", m, n, k) : "");
//
// Scopes inside an OpenMP parallel region (the attention's per-head products) are not
// timed: their time is their op's. Off, a scope is one branch.
#ifndef STABILITY_OPS_CPU_INTERNAL_OP_PROFILE_H_
#define STABILITY_OPS_CPU_INTERNAL_OP_PROFILE_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace stability::ops::cpu::internal {

class OpProfile {
 public:
  struct Row {
    std::string name;
    int64_t calls = 0;
    double ms = 0;
  };
  // The name of the row of wall time between the ops (the model's own host work).
  static constexpr const char* kOutside = "(outside the ops: the model's host work)";

  static OpProfile& Get();
  bool on() const { return on_; }
  void Start();
  // The rows in order of first call, then kOutside: the wall time since Start not in an op.
  std::vector<Row> Stop();
  void Enter(const std::string& name);
  void Exit();
  // The clock, in milliseconds (steady_clock's by default); a test sets its own.
  void SetClockForTesting(double (*now_ms)()) { now_ms_ = now_ms ? now_ms : SteadyMs; }

 private:
  static double SteadyMs() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  struct Frame {
    size_t row;
    double start_ms;
    double inner_ms = 0;  // time of the scopes inside it
  };
  double (*now_ms_)() = SteadyMs;
  bool on_ = false;
  double started_ms_ = 0;
  std::vector<Frame> stack_;
  std::vector<Row> rows_;
  std::map<std::string, size_t> row_of_;
};

class OpScope {
 public:
  explicit OpScope(const char* name) : timed_(Timed()) {
    if (timed_) OpProfile::Get().Enter(name);
  }
  explicit OpScope(const std::string& name) : timed_(Timed()) {
    if (timed_) OpProfile::Get().Enter(name);
  }
  ~OpScope() {
    if (timed_) OpProfile::Get().Exit();
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  static bool Timed();  // on, and not inside a parallel region
  const bool timed_;
};

}  // namespace stability::ops::cpu::internal

#endif  // STABILITY_OPS_CPU_INTERNAL_OP_PROFILE_H_
