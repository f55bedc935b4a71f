#include "stability/model/dump.h"

#include "absl/strings/str_cat.h"
#include "stability/base/rng.h"
#include "stability/base/safetensors.h"
#include "stability/base/status.h"
#include "stability/model/model.h"

namespace stability::model {

absl::Status WriteDebugDump(const ModelConfig& config, uint64_t seed, int64_t batch, int64_t seq,
                            const std::string& path) {
  if (batch < 1 || seq < 1 || seq > config.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("dump: --batch=", batch, " must be >= 1 and --seq=", seq,
                                                   " in [1, seq_len = ", config.seq_len, "]"));
  }
  STABILITY_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Create(config, seed));
  Tensor ids = Tensor::Empty({batch, seq}, DType::kI32), targets = Tensor::Empty({batch, seq}, DType::kI32);
  Rng rng(seed + 1);
  for (int64_t b = 0; b < batch; ++b) {
    int32_t prev = static_cast<int32_t>(rng.Below(config.vocab_size));
    for (int64_t t = 0; t < seq; ++t) {
      const int32_t next = static_cast<int32_t>(rng.Below(config.vocab_size));
      ids.i32()[b * seq + t] = prev;
      targets.i32()[b * seq + t] = next;
      prev = next;
    }
  }
  STABILITY_ASSIGN_OR_RETURN(double loss, model->Forward(ids, targets));
  const Tensor logits = model->logits().Clone();  // Backward overwrites them with their gradient
  model->ZeroGrad();
  STABILITY_RETURN_IF_ERROR(model->Backward());
  model->ComputeGradNorms();

  SafetensorsFile file;
  for (const Parameter& p : model->parameters()) file.tensors.emplace_back(p.name, p.value);
  for (const auto& [name, t] : model->buffers()) file.tensors.emplace_back(name, t);
  file.tensors.emplace_back("input_ids", ids);
  file.tensors.emplace_back("targets", targets);
  file.tensors.emplace_back("logits", logits.Reshaped({batch, seq, config.vocab_size}));
  const auto scalar = [](double v) {
    Tensor t = Tensor::Empty({}, DType::kF64);
    *static_cast<double*>(t.data()) = v;
    return t;
  };
  file.tensors.emplace_back("loss", scalar(loss));
  for (const Parameter& p : model->parameters()) file.tensors.emplace_back("grad." + p.name, p.grad);
  for (const auto& [name, v] : model->telemetry().values()) file.tensors.emplace_back("telemetry." + name, scalar(v));
  file.metadata["format"] = "stability-dump-v1";
  file.metadata["config"] = config.ToJson().dump();
  file.metadata["seed"] = absl::StrCat(seed);
  file.metadata["batch"] = absl::StrCat(batch);
  file.metadata["seq"] = absl::StrCat(seq);
  return WriteSafetensors(path, file);
}

}  // namespace stability::model
