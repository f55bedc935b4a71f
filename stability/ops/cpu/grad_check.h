// Finite-difference gradient checks for the CPU kernels' hand-written backward passes.
//
// For inputs x and a forward f, the scalar L = Σ_i f(x)_i · r_i with fixed random r; the
// analytic gradient is the op's backward with dout = r; the numeric one is the central
// difference (L(x + h·e_j) − L(x − h·e_j)) / 2h for every element j, L summed in double.
// With h = 1e-2 and O(1) values, fp32 rounding of f contributes ~5e-5 and truncation
// O(h²) ~1e-4, so |analytic − numeric| ≤ 1e-3·max(|a|, |n|) + 3e-4 holds for a correct
// backward and fails for a wrong one (a missing term is O(1)).
#ifndef STABILITY_OPS_CPU_GRAD_CHECK_H_
#define STABILITY_OPS_CPU_GRAD_CHECK_H_

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "stability/base/rng.h"

namespace stability::ops::cpu {

inline std::vector<float> RandomVector(size_t n, uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.Normal()) * scale;
  return v;
}

struct GradInput {
  std::string name;
  std::vector<float>* value;
  const std::vector<float>* analytic;  // d L / d value, from the backward
};

// `forward` recomputes the output from the current input values.
inline void ExpectGradientsMatch(const std::function<std::vector<float>()>& forward,
                                 const std::vector<float>& weights, const std::vector<GradInput>& inputs,
                                 float h = 1e-2f) {
  const auto loss = [&] {
    const std::vector<float> out = forward();
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += static_cast<double>(out[i]) * weights[i];
    return l;
  };
  for (const GradInput& in : inputs) {
    ASSERT_EQ(in.value->size(), in.analytic->size()) << in.name;
    int bad = 0;
    for (size_t j = 0; j < in.value->size(); ++j) {
      const float saved = (*in.value)[j];
      (*in.value)[j] = saved + h;
      const double lp = loss();
      (*in.value)[j] = saved - h;
      const double lm = loss();
      (*in.value)[j] = saved;
      const double numeric = (lp - lm) / (2.0 * h);
      const double analytic = (*in.analytic)[j];
      const double tol = 1e-3 * std::max(std::fabs(numeric), std::fabs(analytic)) + 3e-4;
      if (std::fabs(numeric - analytic) > tol && ++bad <= 5) {
        ADD_FAILURE() << in.name << "[" << j << "]: analytic " << analytic << " vs numeric " << numeric;
      }
    }
    EXPECT_EQ(bad, 0) << in.name << ": " << bad << " of " << in.value->size() << " elements differ";
  }
}

}  // namespace stability::ops::cpu

#endif  // STABILITY_OPS_CPU_GRAD_CHECK_H_
