#include "stability/ops/cpu/internal/op_profile.h"

#include <omp.h>

namespace stability::ops::cpu::internal {

OpProfile& OpProfile::Get() {
  static OpProfile profile;
  return profile;
}

void OpProfile::Start() {
  stack_.clear();
  rows_.clear();
  row_of_.clear();
  started_ms_ = now_ms_();
  on_ = true;
}

std::vector<OpProfile::Row> OpProfile::Stop() {
  on_ = false;
  const double wall = now_ms_() - started_ms_;
  double in_ops = 0;
  for (const Row& r : rows_) in_ops += r.ms;
  std::vector<Row> rows = std::move(rows_);
  rows.push_back({kOutside, 0, wall > in_ops ? wall - in_ops : 0.0});
  rows_.clear();
  row_of_.clear();
  return rows;
}

void OpProfile::Enter(const std::string& name) {
  auto [it, added] = row_of_.emplace(name, rows_.size());
  if (added) rows_.push_back({name, 0, 0.0});
  stack_.push_back({it->second, now_ms_(), 0.0});
}

void OpProfile::Exit() {
  const Frame f = stack_.back();
  stack_.pop_back();
  const double ms = now_ms_() - f.start_ms;
  if (!stack_.empty()) stack_.back().inner_ms += ms;
  rows_[f.row].calls += 1;
  rows_[f.row].ms += ms - f.inner_ms;
}

bool OpScope::Timed() { return OpProfile::Get().on() && omp_get_level() == 0; }

}  // namespace stability::ops::cpu::internal
