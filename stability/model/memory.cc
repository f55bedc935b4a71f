#include "stability/model/memory.h"

#include "absl/strings/str_format.h"

namespace stability::model {

// Each term is a buffer of model.cc (Forward's per-layer activations, Backward's scratch).
TrainingMemory EstimateTrainingMemory(const ModelConfig& c, int64_t batch, int64_t seq, const ops::Backend& be) {
  const int64_t N = batch * seq, C = c.n_embd, F = c.mlp_ratio * C, H = c.n_head, V = c.vocab_size;
  const int64_t L = c.n_layer, P = ParameterCount(c);
  const int64_t stats = c.per_head_norm ? 2 * H : 2;  // a q/k/v norm's mean and rstd, per token
  const bool probs = be.AttentionStoresProbs(c.head_dim());
  const int64_t weights = 4 * C * C + 2 * C * F;  // QKV, Proj, FC1, FC2 of one layer
  TrainingMemory m;

  // σ-reparam: each layer's W_eff, dW_eff (slots of one buffer, as the gradients'), σ, u and v.
  const int64_t dw_eff = GradientSlot(3 * C * C) + GradientSlot(C * C) + 2 * GradientSlot(C * F);
  m.parameters =
      4 * (P + GradientBufferFloats(c) + (c.sigma_reparam ? L * (weights + dw_eff + 4 + 2 * (4 * C + F)) : 0));
  m.optimizer = 4 * 2 * P;

  // Forward, per layer and token (floats): a norm keeps y, mean and rstd (C + 2).
  int64_t layer = 3 * C + H + C + C + C + F + C + C;  // qkv, lse, att, proj, h, act, fc2, stream (+ FC1's, below)
  if (c.n1) layer += C + 2;
  if (c.n2) layer += C + 2;
  if (c.qk_norm) layer += 2 * (C + stats);
  if (c.v_norm) layer += C + stats;
  if (c.position == Position::kRope && !c.qk_norm) layer += 2 * C;  // RoPE's q and k
  if (c.proj_norm) layer += C + 2;
  if (c.fc2_norm) layer += C + 2;
  if (c.layer_scale && !c.n2) layer += C;                  // LS1's output, when no norm takes the add
  int64_t forward = L * layer * N + (C + C + 2 + 1) * N;   // + stream[0], the final norm, lse
  if (c.layer_scale && !c.n1) forward += (L - 1) * C * N;  // LS2's output before a block without N1
  if (probs) forward += L * batch * H * seq * seq;
  const int64_t backward = (12 * C + 2 * F) * N;         // dres, dxf, t1–t3, dq, dk, dv, dqkv, dF1, dF2, dtmp
  // + the token ids and targets, and FC1's pre-activation in the backend's saved format
  m.activations = 4 * (forward + backward) + 4 * 2 * N + L * N * F * be.SavedValueBytes();
  m.logits = be.SavedValueBytes() * N * be.LogitsRowStride(V);  // the logits (their gradient in place)

  // The products' kept operands (the weights' copies the parameters keep among them), the norm
  // backwards' bf16 gradient for the product after, the products' for the norm before and
  // Proj's for the attention; the fused attention's q, k and v (its kept operands).
  if (be.KeepsBf16Operands()) {
    m.bf16 = 2 * (L * ((3 * C + F) * N + weights) + N * C + V * C + 3 * N * C);
    if (!probs) m.bf16 += 2 * L * 3 * N * C;
  }
  // The GEMM attention's backward tile (and the clipped probabilities) are the backend's
  // scratch, as large as the probabilities; plus workspaces and partial sums.
  if (probs) m.scratch = 4 * (c.softmax_clip ? 2 : 1) * batch * H * seq * seq;
  if (be.device().type != DeviceType::kCpu) m.scratch += int64_t{256} << 20;
  return m;
}

std::string TrainingMemory::ToString() const {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  return absl::StrFormat(
      "%.1f GiB: activations %.1f, logits %.1f, parameters and gradients %.1f, AdamW moments "
      "%.1f, bf16 operands %.1f, scratch %.1f",
      total() / kGiB, activations / kGiB, logits / kGiB, parameters / kGiB, optimizer / kGiB, bf16 / kGiB,
      scratch / kGiB);
}

}  // namespace stability::model
