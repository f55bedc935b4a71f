#include "stability/base/rng.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace stability {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

Rng::Rng(uint64_t seed) {
  for (uint64_t& w : s_) w = SplitMix64(seed);
}

uint64_t Rng::NextU64() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

double Rng::Uniform() { return (NextU64() >> 11) * 0x1.0p-53; }

namespace {
double BoxMuller(double u1, double u2) { return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2); }
}  // namespace

double Rng::Normal() {
  // Box–Muller, one value per call (the second is dropped: simpler state to checkpoint).
  double u1 = Uniform();
  while (u1 <= 0.0) u1 = Uniform();
  const double u2 = Uniform();
  return BoxMuller(u1, u2);
}

void Rng::FillNormal(float* out, int64_t n, double scale) {
  constexpr int64_t kChunk = 1 << 16;
  std::vector<double> u(2 * std::min(n, kChunk));
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t m = std::min(kChunk, n - i0);
    for (int64_t i = 0; i < m; ++i) {  // Normal()'s draws, in its order
      double u1 = Uniform();
      while (u1 <= 0.0) u1 = Uniform();
      u[2 * i] = u1;
      u[2 * i + 1] = Uniform();
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) out[i0 + i] = static_cast<float>(BoxMuller(u[2 * i], u[2 * i + 1]) * scale);
  }
}

uint64_t Rng::Below(uint64_t bound) {
  // Lemire's rejection method.
  const uint64_t threshold = -bound % bound;
  for (;;) {
    const uint64_t r = NextU64();
    if (r >= threshold) return r % bound;
  }
}

}  // namespace stability
