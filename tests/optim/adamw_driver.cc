// Runs our AdamW + schedule on parameters and per-step gradients from a safetensors file,
// for adamw_parity_test.py to compare with torch.optim.AdamW. Input tensors: "p.<name>",
// "g.<step>.<name>"; metadata: steps, lr, min_lr, warmup, decay, beta1, beta2, eps,
// weight_decay, clip, and "decay_params" (comma-separated names that get weight decay).
// Output: "p.<name>" after every step, "lr" [steps] and "grad_norm" [steps].
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "stability/base/safetensors.h"
#include "stability/ops/cpu/cpu_backend.h"
#include "stability/optim/adamw.h"
#include "stability/optim/schedule.h"

using namespace stability;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: adamw_driver IN.safetensors OUT.safetensors\n");
    return 2;
  }
  auto in = ReadSafetensors(argv[1]);
  if (!in.ok()) {
    std::fprintf(stderr, "%s\n", std::string(in.status().message()).c_str());
    return 1;
  }
  const auto num = [&](const std::string& k) {
    double v = 0;
    (void)absl::SimpleAtod(in->metadata.at(k), &v);
    return v;
  };
  const std::vector<std::string> decay_names = absl::StrSplit(in->metadata.at("decay_params"), ',');
  std::vector<Parameter> params;
  for (const auto& [name, t] : in->tensors) {
    if (name.rfind("p.", 0) != 0) continue;
    const std::string n = name.substr(2);
    bool decay = false;
    for (const auto& d : decay_names) decay |= d == n;
    params.push_back({n, t.Clone(), Tensor::Zeros(t.shape()), decay});
  }
  optim::Schedule schedule{.lr = num("lr"), .min_lr = num("min_lr"), .warmup = static_cast<int64_t>(num("warmup")),
                           .total = static_cast<int64_t>(num("steps"))};
  if (!optim::ParseDecay(in->metadata.at("decay"), &schedule.decay).ok()) return 1;
  optim::AdamW opt(&params, {.beta1 = num("beta1"), .beta2 = num("beta2"), .eps = num("eps"),
                             .weight_decay = num("weight_decay")});
  const int64_t steps = schedule.total;
  Tensor lrs = Tensor::Empty({steps}, DType::kF64), norms = Tensor::Empty({steps}, DType::kF64);
  for (int64_t s = 0; s < steps; ++s) {
    for (Parameter& p : params) {
      const Tensor g = *in->Get("g." + std::to_string(s) + "." + p.name);
      std::memcpy(p.grad.data(), g.data(), g.nbytes());
    }
    const double lr = schedule.At(s);
    static_cast<double*>(lrs.data())[s] = lr;
    static_cast<double*>(norms.data())[s] = opt.Step(lr, num("clip"));
  }
  SafetensorsFile out;
  for (const Parameter& p : params) out.tensors.emplace_back("p." + p.name, p.value);
  out.tensors.emplace_back("lr", lrs);
  out.tensors.emplace_back("grad_norm", norms);
  return WriteSafetensors(argv[2], out).ok() ? 0 : 1;
}
