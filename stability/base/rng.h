// Rng: xoshiro256** seeded by splitmix64, with Box–Muller normals. Fully specified here
// (std::normal_distribution is not), so the same seed gives the same numbers on every
// compiler and platform; the state is four words, saved and restored by checkpoints.
#ifndef STABILITY_BASE_RNG_H_
#define STABILITY_BASE_RNG_H_

#include <array>
#include <cstdint>

namespace stability {

class Rng {
 public:
  explicit Rng(uint64_t seed);

  uint64_t NextU64();
  double Uniform();               // [0, 1), 53 random bits
  double Normal();                // N(0, 1)
  // out[i] = float(Normal() · scale) for i in [0, n): the same numbers and final state as n
  // calls, the draws in order on this thread and Box–Muller's log/sqrt/cos on all cores
  // (the cost of initialising a large model: ~30 ns a value on one core).
  void FillNormal(float* out, int64_t n, double scale);
  uint64_t Below(uint64_t bound);  // uniform in [0, bound), bound > 0, unbiased

  std::array<uint64_t, 4> state() const { return s_; }
  void set_state(const std::array<uint64_t, 4>& s) { s_ = s; }

 private:
  std::array<uint64_t, 4> s_;
};

}  // namespace stability

#endif  // STABILITY_BASE_RNG_H_
