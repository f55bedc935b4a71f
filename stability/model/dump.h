// The debug dump: one safetensors file with everything needed to check this model
// against another implementation (tests/reference/gpt_reference.py does, in PyTorch):
//
//   <param name>          every parameter, e.g. "h.0.qkv.weight" [3C, C]
//   <buffer name>         σ-reparam vectors "h.0.qkv.sigma_u" / "sigma_v" (after the step)
//   input_ids, targets    int32 [B, T]; targets are the inputs shifted by one
//   logits                [B, T, V] fp32
//   loss                  F64 []
//   grad.<param name>     d loss / d param, fp32
//   telemetry.<name>      F64 [], every telemetry value (README: Telemetry)
//   __metadata__          config (JSON), seed, batch, seq, format = "stability-dump-v1"
//
// Token ids come from Rng(seed + 1); parameters from Rng(seed) (Model::Create).
#ifndef STABILITY_MODEL_DUMP_H_
#define STABILITY_MODEL_DUMP_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "stability/model/config.h"

namespace stability::model {

absl::Status WriteDebugDump(const ModelConfig& config, uint64_t seed, int64_t batch, int64_t seq,
                            const std::string& path);

}  // namespace stability::model

#endif  // STABILITY_MODEL_DUMP_H_
