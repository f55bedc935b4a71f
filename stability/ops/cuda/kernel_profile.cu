#include <map>

#include "stability/ops/cuda/internal/common.cuh"
#include "stability/ops/cuda/internal/kernel_profile.cuh"

namespace stability::ops::cuda::internal {

KernelProfile& Profile() {
  static KernelProfile profile;
  return profile;
}

void KernelProfile::Start() {
  if (events_.empty()) {
    events_.resize(kMaxMarks + 1);
    for (cudaEvent_t& e : events_) Check(cudaEventCreate(&e), "cudaEventCreate (kernel profile)");
  }
  names_.clear();
  dropped_ = 0;
  Check(cudaEventRecord(events_[0]), "cudaEventRecord (kernel profile)");
  on_ = true;
}

void KernelProfile::Mark(const std::string& name) {
  if (!on_) return;
  if (names_.size() == kMaxMarks) {
    ++dropped_;
    return;
  }
  Check(cudaEventRecord(events_[names_.size() + 1]), "cudaEventRecord (kernel profile)");
  names_.push_back(name);
}

std::vector<Backend::KernelTime> KernelProfile::Stop() {
  on_ = false;
  std::vector<Backend::KernelTime> rows;
  if (names_.empty()) return rows;
  Check(cudaEventSynchronize(events_[names_.size()]), "cudaEventSynchronize (kernel profile)");
  std::map<std::string, size_t> row_of;
  for (size_t i = 0; i < names_.size(); ++i) {
    float ms = 0;
    Check(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]), "cudaEventElapsedTime (kernel profile)");
    auto [it, added] = row_of.emplace(names_[i], rows.size());
    if (added) rows.push_back({names_[i], 0, 0.0});
    rows[it->second].calls += 1;
    rows[it->second].ms += ms;
  }
  if (dropped_ > 0) rows.push_back({"(launches past the profile's capacity, not timed)", dropped_, 0.0});
  names_.clear();  // a profile is read once: a second Stop has nothing
  dropped_ = 0;
  return rows;
}

}  // namespace stability::ops::cuda::internal
