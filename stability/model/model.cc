#include "stability/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "stability/base/rng.h"

namespace stability::model {

void Telemetry::Set(const std::string& name, double value) { values_[Slot(name)].second = value; }

size_t Telemetry::Slot(const std::string& name) {
  for (size_t i = 0; i < values_.size(); ++i) {
    if (values_[i].first == name) return i;
  }
  values_.emplace_back(name, std::numeric_limits<double>::quiet_NaN());
  return values_.size() - 1;
}

double Telemetry::Get(const std::string& name) const {
  for (const auto& [n, v] : values_)
    if (n == name) return v;
  return std::numeric_limits<double>::quiet_NaN();
}

namespace {

struct Norm {
  Parameter* g = nullptr;  // nullptr: this norm is switched off
  Parameter* b = nullptr;
  bool on() const { return g != nullptr; }
};

// One zeroed fp32 buffer on `device` and, for each (view, shape), a view of its slot
// (GradientSlot: 64-byte aligned, in order) — the model's gradients, σ-reparam's dW_eff.
Tensor OneBuffer(Device device, const std::vector<std::pair<Tensor*, Shape>>& views) {
  int64_t total = 0;
  for (const auto& [view, shape] : views) total += GradientSlot(NumElements(shape));
  Tensor buffer = Tensor::Zeros({total}, DType::kF32, device);
  int64_t offset = 0;
  for (const auto& [view, shape] : views) {
    *view = buffer.View(offset, shape);
    offset += GradientSlot(NumElements(shape));
  }
  return buffer;
}

// A linear layer's operands rounded to bf16 by its forward and read back by its backward
// (ops::Bf16Operands), where the backend uses them; nothing is kept otherwise. The weight's
// copy is the parameter's own (Parameter::value_bf16, which the optimizer rewrites with each
// update) where the layer multiplies its parameter; a derived weight's (σ-reparam's) is here.
struct KeptOperands {
  Tensor x, w;
  ops::Bf16Operands ptrs;  // null members: nothing kept
  ops::Bf16Operands* Prepare(bool keep, Device device, int64_t x_values, int64_t w_values, Parameter* weight) {
    if (!keep) {
      *this = KeptOperands();
      return nullptr;
    }
    if (x.numel() != x_values) x = Tensor::Empty({x_values}, DType::kBF16, device);
    Tensor& w_copy = weight ? weight->value_bf16 : w;
    if (w_copy.numel() != w_values) {
      w_copy = Tensor::Empty({w_values}, DType::kBF16, device);
      if (weight) weight->value_bf16_current = false;
    }
    ptrs.x = x.data();  // x_rounded stays: the op before may have filled x already
    ptrs.w = w_copy.data();
    return &ptrs;
  }
  // For the layer's own forward, after Prepare: the parameter's copy read as it is where it is
  // current, else rounded into by this forward — current from then on.
  ops::Bf16Operands* ForForward(ops::Bf16Operands* prepared, Parameter* weight) {
    if (prepared == nullptr) return nullptr;
    ptrs.w_rounded = weight != nullptr && weight->value_bf16_current;
    if (weight) weight->value_bf16_current = true;
    return prepared;
  }
  const ops::Bf16Operands* get() const { return ptrs.x ? &ptrs : nullptr; }
  // An op that multiplies no weight of its own (the attention: q, k and v rounded, 3·N·C
  // values): x alone, which its producer or its forward rounds into and its backward reads;
  // prepared before each forward's producers (nothing rounded yet).
  ops::Bf16Operands* PrepareInputs(bool keep, Device device, int64_t x_values) {
    if (!keep) {
      *this = KeptOperands();
      return nullptr;
    }
    if (x.numel() != x_values) x = Tensor::Empty({x_values}, DType::kBF16, device);
    ptrs.x = x.data();
    ptrs.x_rounded = ptrs.dy_rounded = false;
    return &ptrs;
  }
};

struct Linear {
  Parameter* w = nullptr;
  Parameter* b = nullptr;
  Parameter* gain = nullptr;  // σ-reparam only
  Tensor* u = nullptr;
  Tensor* v = nullptr;
  Tensor w_eff, dw_eff;
  Tensor sigma;  // [1], on the model's device
  KeptOperands kept;
  int64_t in = 0, out = 0;
  // The weight the layer computes with: W, or (g/σ)·W under σ-reparam.
  const float* weight() const { return gain ? w_eff.f32() : w->value.f32(); }
  // The parameter the products multiply as it is (its bf16 copy kept with it); none under σ-reparam.
  Parameter* multiplied_parameter() const { return gain ? nullptr : w; }
  float* weight_grad() { return gain ? dw_eff.f32() : w->grad.f32(); }
};

// Saved activations of one norm call.
struct NormActs {
  Tensor y, mean, rstd;
};

struct Layer {
  Norm n1, q_norm, k_norm, v_norm, proj_norm, n2, fc2_norm;
  Linear qkv, proj, fc1, fc2;
  Parameter* ls1 = nullptr;
  Parameter* ls2 = nullptr;
  // Activations of the last Forward (x, the block input, is Impl::stream[l]).
  NormActs a1, qn, kn, vn, pn, a2, fn;
  Tensor qkv_out, probs, attn_lse, att, proj_out, ls1_out, h, fc1_out, act, fc2_out, ls2_out;
  Tensor q_rope, k_rope;  // RoPE's own buffers when there is no q/k norm
  // Attention inputs, after norms and RoPE: the QKV product's column blocks read in place
  // (rows 3·C apart), or the outputs of the norms and RoPE (C apart). Backward writes each
  // gradient the same way: into the QKV gradient, or into a buffer for the norm or RoPE.
  const float* q_att = nullptr;
  const float* k_att = nullptr;
  const float* v_att = nullptr;
  ops::AttentionStrides attn_ld{};
  const Tensor* branch1_in = nullptr;  // what layer scale 1 multiplied
  const Tensor* branch2_in = nullptr;
  KeptOperands attn_kept;  // the attention's q, k, v in bf16, from its forward to its backward
};

ops::AttentionOptions AttentionOptionsFor(const ModelConfig& c) {
  ops::AttentionOptions attn;
  attn.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim()));
  attn.temperature = c.attn_temperature;
  attn.soft_cap = c.attn_soft_cap;
  attn.clip = c.softmax_clip;
  attn.clip_zeta = c.clip_zeta;
  attn.clip_gamma = c.clip_gamma;
  return attn;
}

}  // namespace

struct Model::Impl {
  std::vector<Layer> layers;
  Parameter* wte = nullptr;
  Parameter* wpe = nullptr;
  Parameter* lm_head = nullptr;
  Norm nf;
  int64_t B = 0, T = 0;
  std::vector<Tensor> stream;  // residual stream: input of block l, and stream[L] = output
  NormActs xf;
  Tensor logits, lse, ids, targets;
  KeptOperands head_kept;
  bool have_forward = false;
  bool logits_hold_gradient = false;  // the forward wrote the loss's gradient (dloss = 1) over them
  // Backward scratch.
  Tensor dres, dxf, t1, t2, t3, dq, dk, dv, dqkv, dF1, dF2, dtmp;  // the logits' gradient: in logits
  Tensor dres16;  // a norm backward's output rounded to bf16 for the product it reaches next
  Tensor dx16;    // a product's input gradient in bf16 for the norm backward after it (N1's, N2's)
  Tensor dout16;  // Proj's input gradient in bf16 for the attention's backward (its dout)
  Tensor dw_eff;  // σ-reparam: every Linear::dw_eff a view of it, zeroed at once by Backward
};

Model::Model(ModelConfig config, Device device)
    : config_(std::move(config)), device_(device), backend_(ops::GetBackend(device)), impl_(new Impl) {}
Model::~Model() = default;

Parameter* Model::FindParameter(const std::string& name) {
  for (Parameter& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

Tensor Model::logits() const {
  const Tensor& padded = impl_->logits;
  const int64_t v = config_.vocab_size;
  if (!padded.defined() || padded.dim(1) == v) return padded;
  const int64_t n = padded.dim(0), stride = padded.dim(1), bytes = DTypeSize(padded.dtype());
  const Tensor host = padded.To(kCpu);
  Tensor rows = Tensor::Empty({n, v}, padded.dtype());
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(static_cast<char*>(rows.data()) + i * v * bytes,
                static_cast<const char*>(host.data()) + i * stride * bytes, v * bytes);
  }
  return rows.To(padded.device());
}

namespace {

// The σ-reparam'd linear layers of the model, in layer order, as the backend's batched ops take them.
std::vector<ops::Backend::SigmaReparamLayer> SigmaReparamLayers(std::vector<Layer>& layers) {
  std::vector<ops::Backend::SigmaReparamLayer> out;
  for (Layer& y : layers) {
    for (Linear* lin : {&y.qkv, &y.proj, &y.fc1, &y.fc2}) {
      if (!lin->gain) continue;
      out.push_back({lin->w->value.f32(), lin->gain->value.f32(), lin->out, lin->in, lin->u->f32(), lin->v->f32(),
                     lin->sigma.f32(), lin->w_eff.f32(), lin->dw_eff.f32(), lin->w->grad.f32(), lin->gain->grad.f32()});
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> Model::Create(const ModelConfig& config, uint64_t seed, Device device) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (ops::GetBackend(device) == nullptr) {
    return absl::UnavailableError(absl::StrCat("no backend for device ", device.ToString(),
                                               " (CPU is always available; CUDA needs a GPU and a CUDA build)"));
  }
  std::unique_ptr<Model> m(new Model(config, device));
  const ModelConfig& c = m->config_;
  const int64_t C = c.n_embd, F = c.mlp_ratio * C, L = c.n_layer;
  const int64_t qkv_norm_width = c.per_head_norm ? c.head_dim() : C;
  const bool norm_bias = c.norm == ops::NormKind::kLayerNorm && c.bias;
  Rng rng(seed);

  // Creation order is the initialisation order (and the dump's order): keep it stable.
  enum Init { kNormal, kResidual, kZero, kOne, kLayerScale };
  auto add = [&](const std::string& name, Shape shape, Init init, bool decay) {
    Tensor value = Tensor::Empty(shape, DType::kF32, kCpu);
    float* p = value.f32();
    const int64_t n = value.numel();
    switch (init) {
      case kNormal: rng.FillNormal(p, n, c.init_std); break;
      case kResidual: rng.FillNormal(p, n, c.init_std / std::sqrt(2.0 * L)); break;
      case kZero: std::fill(p, p + n, 0.0f); break;
      case kOne: std::fill(p, p + n, 1.0f); break;
      case kLayerScale: std::fill(p, p + n, c.layer_scale_init); break;
    }
    m->params_.push_back({name, value, Tensor(), decay});
  };
  auto add_norm = [&](const std::string& name, int64_t width) {
    add(name + ".weight", {width}, kOne, false);
    if (norm_bias) add(name + ".bias", {width}, kZero, false);
  };
  auto add_linear = [&](const std::string& name, int64_t out, int64_t in, Init init) {
    add(name + ".weight", {out, in}, init, true);
    if (c.bias) add(name + ".bias", {out}, kZero, false);
    if (c.sigma_reparam) {
      add(name + ".sigma_gain", {1}, kOne, false);
      // u starts as a random unit vector; v is computed by the first power-iteration step.
      Tensor u = Tensor::Empty({out});
      double norm = 0;
      for (int64_t i = 0; i < out; ++i) {
        u.f32()[i] = static_cast<float>(rng.Normal());
        norm += double(u.f32()[i]) * u.f32()[i];
      }
      for (int64_t i = 0; i < out; ++i) u.f32()[i] = static_cast<float>(u.f32()[i] / std::sqrt(norm));
      m->buffers_.emplace_back(name + ".sigma_u", u);
      m->buffers_.emplace_back(name + ".sigma_v", Tensor::Zeros({in}));
    }
  };

  add("wte.weight", {c.vocab_size, C}, kNormal, false);
  if (c.position == Position::kLearned) add("wpe.weight", {c.seq_len, C}, kNormal, false);
  for (int64_t l = 0; l < L; ++l) {
    const std::string h = absl::StrCat("h.", l, ".");
    if (c.n1) add_norm(h + "n1", C);
    add_linear(h + "qkv", 3 * C, C, kNormal);
    if (c.qk_norm) {
      add_norm(h + "q_norm", qkv_norm_width);
      add_norm(h + "k_norm", qkv_norm_width);
    }
    if (c.v_norm) add_norm(h + "v_norm", qkv_norm_width);
    add_linear(h + "proj", C, C, kResidual);
    if (c.proj_norm) add_norm(h + "proj_norm", C);
    if (c.layer_scale) add(h + "proj_scale", {C}, kLayerScale, false);
    if (c.n2) add_norm(h + "n2", C);
    add_linear(h + "fc1", F, C, kNormal);
    add_linear(h + "fc2", C, F, kResidual);
    if (c.fc2_norm) add_norm(h + "fc2_norm", C);
    if (c.layer_scale) add(h + "fc2_scale", {C}, kLayerScale, false);
  }
  add_norm("nf", C);
  if (!c.tie_embeddings) add("lm_head.weight", {c.vocab_size, C}, kNormal, true);
  // Initialised on the host (the same values on every device), then moved.
  if (device != kCpu) {
    for (Parameter& p : m->params_) p.value = p.value.To(device);
    for (auto& [name, t] : m->buffers_) t = t.To(device);
  }
  std::vector<std::pair<Tensor*, Shape>> grads;
  for (Parameter& p : m->params_) grads.emplace_back(&p.grad, p.value.shape());
  m->gradients_ = OneBuffer(device, grads);  // GradientBufferFloats(c) floats: the memory estimate's

  // Resolve names to pointers now that params_ no longer grows.
  Impl& impl = *m->impl_;
  auto param = [&](const std::string& name) { return m->FindParameter(name); };
  auto buffer = [&](const std::string& name) -> Tensor* {
    for (auto& [n, t] : m->buffers_)
      if (n == name) return &t;
    return nullptr;
  };
  auto norm = [&](const std::string& name) { return Norm{param(name + ".weight"), param(name + ".bias")}; };
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    Linear lin;
    lin.w = param(name + ".weight");
    lin.b = param(name + ".bias");
    lin.gain = param(name + ".sigma_gain");
    lin.u = buffer(name + ".sigma_u");
    lin.v = buffer(name + ".sigma_v");
    lin.in = in;
    lin.out = out;
    if (lin.gain) {
      lin.w_eff = Tensor::Zeros({out, in}, DType::kF32, device);
      lin.sigma = Tensor::Zeros({1}, DType::kF32, device);
    }
    return lin;
  };
  impl.wte = param("wte.weight");
  impl.wpe = param("wpe.weight");
  impl.lm_head = param("lm_head.weight");
  impl.nf = norm("nf");
  impl.layers.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    const std::string h = absl::StrCat("h.", l, ".");
    Layer& y = impl.layers[l];
    y.n1 = norm(h + "n1");
    y.q_norm = norm(h + "q_norm");
    y.k_norm = norm(h + "k_norm");
    y.v_norm = norm(h + "v_norm");
    y.proj_norm = norm(h + "proj_norm");
    y.n2 = norm(h + "n2");
    y.fc2_norm = norm(h + "fc2_norm");
    y.qkv = linear(h + "qkv", 3 * C, C);
    y.proj = linear(h + "proj", C, C);
    y.fc1 = linear(h + "fc1", F, C);
    y.fc2 = linear(h + "fc2", C, F);
    y.ls1 = param(h + "proj_scale");
    y.ls2 = param(h + "fc2_scale");
  }
  if (c.sigma_reparam) {
    std::vector<std::pair<Tensor*, Shape>> dw_eff;
    for (Layer& y : impl.layers) {
      for (Linear* lin : {&y.qkv, &y.proj, &y.fc1, &y.fc2}) dw_eff.emplace_back(&lin->dw_eff, Shape{lin->out, lin->in});
    }
    impl.dw_eff = OneBuffer(device, dw_eff);
  }
  // One power-iteration step now, so σ is defined even before the first training step.
  if (c.sigma_reparam) m->backend_->SigmaReparamForwardEach(SigmaReparamLayers(impl.layers), true);
  return m;
}

void Model::ZeroGrad() { gradients_.SetZero(); }

namespace {

// Activation buffers live on the model's device and are reused while the shapes stay.
void Alloc(Device device, Tensor& t, const Shape& shape, DType dtype = DType::kF32) {
  if (!t.defined() || t.shape() != shape || t.dtype() != dtype) t = Tensor::Empty(shape, dtype, device);
}

void AllocNorm(Device device, NormActs& a, int64_t rows, int64_t d) {
  Alloc(device, a.y, {rows * d});
  Alloc(device, a.mean, {rows});
  Alloc(device, a.rstd, {rows});
}

// The attention's saved probabilities, nullptr where the backend's kernel stores none.
float* ProbsOf(Layer& y) { return y.probs.defined() ? y.probs.f32() : nullptr; }

// A q/k/v norm's rows, read in place in the QKV product [N, 3·C]: N rows of C (full width)
// or N·H rows of head_dim (per head).
struct QkvNormRows {
  int64_t rows, d;
  ops::RowLayout layout;
};
QkvNormRows QkvNormRowsOf(const ModelConfig& c, int64_t n) {
  const int64_t h = c.per_head_norm ? c.n_head : 1;
  return {n * h, c.n_embd / h, {h, 3 * c.n_embd}};
}
}  // namespace

absl::StatusOr<double> Model::Forward(const Tensor& ids, const Tensor& targets) {
  const ModelConfig& c = config_;
  if (ids.dtype() != DType::kI32 || targets.dtype() != DType::kI32 || ids.rank() != 2 ||
      ids.shape() != targets.shape() || ids.device() != kCpu || targets.device() != kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: ids and targets must both be int32 [B, T] on the CPU, got ", ShapeToString(ids.shape()),
                     " and ", ShapeToString(targets.shape())));
  }
  const int64_t B = ids.dim(0), T = ids.dim(1), N = B * T, C = c.n_embd, V = c.vocab_size;
  const int64_t H = c.n_head, HD = c.head_dim();
  if (T < 1 || B < 1 || T > c.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: sequence length ", T, " must be in [1, seq_len = ",
                                                   c.seq_len, "] and batch ", B, " at least 1"));
  }
  for (int64_t i = 0; i < N; ++i) {
    for (const Tensor* t : {&ids, &targets}) {
      const int32_t id = t->i32()[i];
      if (id < 0 || id >= V) {
        return absl::InvalidArgumentError(absl::StrCat("Forward: ", t == &ids ? "input" : "target", " token ", id,
                                                       " at position ", i, " is outside the vocabulary [0, ", V,
                                                       ") of this model (vocab_size)"));
      }
    }
  }
  Impl& m = *impl_;
  ops::Backend& be = *backend_;
  m.B = B;
  m.T = T;
  // Token ids were checked on the host; the kernels read them on the model's device.
  if (device_ == kCpu) {
    m.ids = ids;
    m.targets = targets;
  } else {  // device buffers reused from step to step
    for (auto [dst, src] : {std::pair{&m.ids, &ids}, std::pair{&m.targets, &targets}}) {
      if (!dst->defined() || dst->shape() != src->shape()) *dst = Tensor::Empty(src->shape(), DType::kI32, device_);
      dst->CopyFromHost(src->data());
    }
  }
  telemetry_.Clear();
  // Norms reduced on the backend and read back together at the end (one synchronisation
  // on a GPU): their telemetry slots, and whether the value read is a square.
  std::vector<std::pair<size_t, bool>> queued;
  be.ReadQueued();  // nothing should be left over; if a failed call left some, drop them
  const bool keep_bf16 = be.KeepsBf16Operands();
  // What the forward saves in the backend's own format: FC1's pre-activation, the logits.
  const DType saved = be.SavedValueBytes() == 2 ? DType::kBF16 : DType::kF32;
  // The bf16 operands of the product that reads an op's output, where the backend keeps
  // them: the op writes its output there directly, and in fp32 only for telemetry (which
  // reads the products' inputs).
  const auto kept_of = [&](Linear& lin) {
    return lin.kept.Prepare(keep_bf16, device_, N * lin.in, lin.out * lin.in, lin.multiplied_parameter());
  };
  const auto fp32_out = [&](Tensor& y, const ops::Bf16Operands* next) {
    return next && !telemetry_on_ ? nullptr : y.f32();
  };
  // x's rows where x_rows says (a QKV block's are read in place), y contiguous; `next`: the
  // op that reads y (nullable; its bf16 rows laid out as x's).
  const auto run_norm = [&](const Norm& n, const float* x, const ops::RowLayout& x_rows, int64_t rows, int64_t d,
                            NormActs& a, ops::Bf16Operands* next = nullptr) {
    AllocNorm(device_, a, rows, d);
    be.NormForward(c.norm, x, x_rows, n.g->value.f32(), n.b ? n.b->value.f32() : nullptr, rows, d, c.norm_eps,
                   fp32_out(a.y, next), a.mean.f32(), a.rstd.f32(), next);
  };
  const ops::RowLayout rows_of_c = ops::RowLayout::Contiguous(C);
  // y = x·wᵀ + b; with `act`, also act = activation(y) (one fused op where the backend can),
  // which `next` multiplies next: where the backend keeps bf16 operands, act goes straight
  // into next's bf16 input and its fp32 copy is written only for telemetry.
  // With `act`, y is the pre-activation the backward reads, in the backend's saved format.
  // y_into (nullable; bf16 only): the op that reads y takes it in bf16 (QKV's output, the
  // attention's kept operands): y goes there, and into y (those values widened) only with
  // y_too; telemetry reads it there.
  const auto run_linear = [&](Linear& lin, const Tensor& x, Tensor& y, const std::string& name, Tensor* act = nullptr,
                              Linear* next = nullptr, ops::Bf16Operands* y_into = nullptr, bool y_too = false) {
    Alloc(device_, y, {N, lin.out}, act ? saved : DType::kF32);
    const float* bias = lin.b ? lin.b->value.f32() : nullptr;
    ops::Bf16Operands* kept = lin.kept.ForForward(kept_of(lin), lin.multiplied_parameter());
    if (act) {
      Alloc(device_, *act, {N, lin.out});
      ops::Bf16Operands* next_kept = next ? kept_of(*next) : nullptr;
      be.LinearActivationForward(c.activation, x.f32(), lin.weight(), bias, N, lin.in, lin.out, y.data(),
                                 fp32_out(*act, next_kept), kept, next_kept);
    } else {
      be.LinearForward(x.f32(), lin.weight(), bias, N, lin.in, lin.out, y_into && !y_too ? nullptr : y.f32(), kept,
                       y_into);
    }
    if (telemetry_on_) {
      if (act || y_into) {  // bf16 values: the backend's saved format where it keeps bf16 operands
        be.QueueMeanRowNormOfSaved(y_into ? y_into->x : y.data(), N, lin.out);
      } else {
        be.QueueMeanRowNorm(y.f32(), N, lin.out);
      }
      queued.emplace_back(telemetry_.Slot(name + ".out_norm"), false);
      be.QueueMeanRowNorm(x.f32(), N, lin.in);
      queued.emplace_back(telemetry_.Slot(name + ".in_norm"), false);
      be.QueueSumSquares(lin.weight(), lin.out * lin.in);
      queued.emplace_back(telemetry_.Slot(name + ".weight_norm"), true);
      if (lin.gain) {
        be.QueueValue(lin.sigma.f32());
        queued.emplace_back(telemetry_.Slot(name + ".sigma"), false);
      }
    }
  };

  // A residual branch's end: out = residual + LS ⊙ Norm(branch); the scale's input is kept.
  // The norm that reads `out` next (when on) runs in the same pass over it, the layer scale
  // too: AddNormForward; its output goes to the product next_kept belongs to.
  const auto add_branch = [&](const Tensor& branch_out, const Norm& norm, NormActs& norm_acts, Parameter* scale,
                              Tensor& scale_out, const Tensor& residual, const Tensor** scale_in, Tensor& out,
                              const Norm& next, NormActs& next_acts, ops::Bf16Operands* next_kept) {
    const Tensor* branch = &branch_out;
    if (norm.on()) {
      run_norm(norm, branch_out.f32(), rows_of_c, N, C, norm_acts);
      branch = &norm_acts.y;
    }
    *scale_in = branch;
    if (next.on()) {
      AllocNorm(device_, next_acts, N, C);
      be.AddNormForward(c.norm, residual.f32(), branch->f32(), scale ? scale->value.f32() : nullptr,
                        next.g->value.f32(), next.b ? next.b->value.f32() : nullptr, N, C, c.norm_eps, out.f32(),
                        fp32_out(next_acts.y, next_kept), next_acts.mean.f32(), next_acts.rstd.f32(), next_kept);
      return;
    }
    if (scale) {
      Alloc(device_, scale_out, {N, C});
      be.ChannelScaleForward(branch->f32(), scale->value.f32(), N, C, scale_out.f32());
      branch = &scale_out;
    }
    be.Add(residual.f32(), branch->f32(), N * C, out.f32());
  };

  // σ-reparam's W_eff of every layer first, in one batched op (the weights do not change
  // within a step).
  if (c.sigma_reparam) be.SigmaReparamForwardEach(SigmaReparamLayers(m.layers), training_);
  m.stream.resize(c.n_layer + 1);
  for (Tensor& t : m.stream) Alloc(device_, t, {N, C});
  be.EmbeddingForward(m.ids.i32(), N, T, m.wte->value.f32(), m.wpe ? m.wpe->value.f32() : nullptr, C,
                      m.stream[0].f32());

  const ops::AttentionOptions attn = AttentionOptionsFor(c);
  const QkvNormRows qkv_norm = QkvNormRowsOf(c, N);
  const bool rope = c.position == Position::kRope;
  Parameter* const head = m.lm_head ? m.lm_head : m.wte;
  const auto head_kept = [&] { return m.head_kept.Prepare(keep_bf16, device_, N * C, V * C, head); };

  for (int64_t l = 0; l < c.n_layer; ++l) {
    Layer& y = m.layers[l];
    const std::string name = absl::StrCat("h.", l, ".");
    const Tensor& x = m.stream[l];
    const Tensor* a1 = &x;
    if (y.n1.on()) {
      if (l == 0) run_norm(y.n1, x.f32(), rows_of_c, N, C, y.a1, kept_of(y.qkv));  // later: in the add before
      a1 = &y.a1.y;
    }
    // The T×T probabilities only where the backend keeps them (not for a fused kernel).
    if (be.AttentionStoresProbs(HD)) {
      Alloc(device_, y.probs, {B, H, T, T});
    } else {
      y.probs = Tensor();  // a fused kernel: nothing T×T
    }
    // The attention's q, k, v in bf16, kept for its backward: where the attention takes them so
    // (the tensor-core kernels) and no RoPE stands between, written by their producers — QKV's
    // product into all three blocks, then each q/k/v norm over its block (the product then
    // writes its fp32 output too, widened from those values: the norms' input, as under
    // autocast) —, else rounded by the attention's forward.
    ops::Bf16Operands* attn_kept = y.attn_kept.PrepareInputs(keep_bf16 && !y.probs.defined(), device_, 3 * N * C);
    const bool into_attention = attn_kept != nullptr && !rope && be.AttentionReadsRoundedInputs(HD, attn);
    const bool qkv_norms = y.q_norm.on() || y.v_norm.on();
    run_linear(y.qkv, *a1, y.qkv_out, name + "qkv", nullptr, nullptr, into_attention ? attn_kept : nullptr,
               /*y_too=*/qkv_norms);
    ops::Bf16Operands norm_into[3];  // the q/k/v norms' outputs into their blocks of attn_kept
    const auto into_block = [&](int i) -> ops::Bf16Operands* {
      if (!into_attention) return nullptr;
      norm_into[i].x = static_cast<char*>(attn_kept->x) + i * C * static_cast<int64_t>(sizeof(uint16_t));
      return &norm_into[i];
    };
    const float* qkv = y.qkv_out.f32();
    y.q_att = qkv;
    y.k_att = qkv + C;
    y.v_att = qkv + 2 * C;
    y.attn_ld = {3 * C, 3 * C, 3 * C, 3 * C, 3 * C, 3 * C};
    // The q/k/v norms read their block in place. RoPE rotates the norm's output in place,
    // which is safe (backward needs the norm's input, not its output), or the block into its
    // own buffer.
    if (y.q_norm.on() || rope) {
      Tensor* qt = &y.qn.y;
      Tensor* kt = &y.kn.y;
      if (y.q_norm.on()) {
        run_norm(y.q_norm, qkv, qkv_norm.layout, qkv_norm.rows, qkv_norm.d, y.qn, into_block(0));
        run_norm(y.k_norm, qkv + C, qkv_norm.layout, qkv_norm.rows, qkv_norm.d, y.kn, into_block(1));
      }
      if (rope) {
        const float* q_in = qkv;
        const float* k_in = qkv + C;
        int64_t in_ld = 3 * C;
        if (y.q_norm.on()) {
          q_in = qt->f32(), k_in = kt->f32(), in_ld = C;
        } else {
          Alloc(device_, y.q_rope, {N, C});
          Alloc(device_, y.k_rope, {N, C});
          qt = &y.q_rope, kt = &y.k_rope;
        }
        be.Rope(q_in, in_ld, qt->f32(), C, B, T, H, HD, c.rope_base, false);
        be.Rope(k_in, in_ld, kt->f32(), C, B, T, H, HD, c.rope_base, false);
      }
      y.q_att = qt->f32();
      y.k_att = kt->f32();
      y.attn_ld.q = y.attn_ld.k = y.attn_ld.dq = y.attn_ld.dk = C;
    }
    if (y.v_norm.on()) {
      run_norm(y.v_norm, qkv + 2 * C, qkv_norm.layout, qkv_norm.rows, qkv_norm.d, y.vn, into_block(2));
      y.v_att = y.vn.y.f32();
      y.attn_ld.v = y.attn_ld.dv = C;
    }
    Alloc(device_, y.attn_lse, {B, H, T});
    Alloc(device_, y.att, {N, C});
    ops::AttentionStats stats;
    // out (which the backward reads) and, where the kernel can, rounded into Proj's operand.
    be.AttentionForward(y.q_att, y.k_att, y.v_att, B, T, H, HD, attn, y.attn_ld, y.att.f32(), ProbsOf(y),
                        y.attn_lse.f32(), telemetry_on_ ? &stats : nullptr, attn_kept, kept_of(y.proj));
    if (telemetry_on_) {
      telemetry_.Set(name + "attn.max_logit", stats.max_logit);
      telemetry_.Set(name + "attn.entropy", stats.entropy_sum / static_cast<double>(B * H * T));
    }
    run_linear(y.proj, y.att, y.proj_out, name + "proj");
    Alloc(device_, y.h, {N, C});
    add_branch(y.proj_out, y.proj_norm, y.pn, y.ls1, y.ls1_out, x, &y.branch1_in, y.h, y.n2, y.a2, kept_of(y.fc1));

    const Tensor& a2 = y.n2.on() ? y.a2.y : y.h;
    run_linear(y.fc1, a2, y.fc1_out, name + "fc1", &y.act, &y.fc2);
    run_linear(y.fc2, y.act, y.fc2_out, name + "fc2");
    const bool last = l + 1 == c.n_layer;
    add_branch(y.fc2_out, y.fc2_norm, y.fn, y.ls2, y.ls2_out, y.h, &y.branch2_in, m.stream[l + 1],
               last ? m.nf : m.layers[l + 1].n1, last ? m.xf : m.layers[l + 1].a1,
               last ? head_kept() : kept_of(m.layers[l + 1].qkv));
  }
  if (c.n_layer == 0) run_norm(m.nf, m.stream[0].f32(), rows_of_c, N, C, m.xf, head_kept());  // else in the last add
  // The logits in the backend's storage (fp32, or bf16 where the products are bf16).
  Alloc(device_, m.logits, {N, be.LogitsRowStride(V)}, saved);
  Alloc(device_, m.lse, {N});
  ops::CrossEntropyStats ce;
  m.logits_hold_gradient = be.CrossEntropyLinearForward(m.xf.y.f32(), head->value.f32(), m.targets.i32(), N, C, V,
                                                        {c.logit_soft_cap, c.z_loss}, m.logits.data(), m.lse.f32(), &ce,
                                                        m.head_kept.ForForward(head_kept(), head),
                                                        /*with_gradient=*/training_ && !keep_logits_);
  telemetry_.Set("loss", ce.loss);
  telemetry_.Set("ce_loss", ce.ce_loss);
  telemetry_.Set("logits.max", ce.max_logit);
  telemetry_.Set("logits.mean_log_z", ce.mean_lse);
  const std::vector<double> values = be.ReadQueued();
  for (size_t i = 0; i < queued.size(); ++i) {
    telemetry_.SetAt(queued[i].first, queued[i].second ? std::sqrt(values[i]) : values[i]);
  }
  m.have_forward = true;
  return ce.loss;
}

absl::Status Model::Backward(float dloss) {
  Impl& m = *impl_;
  if (!m.have_forward) {
    return absl::FailedPreconditionError(
        "Backward needs a Forward first (one Backward a Forward: it overwrites the logits with their gradient)");
  }
  m.have_forward = false;
  const ModelConfig& c = config_;
  ops::Backend& be = *backend_;
  const int64_t B = m.B, T = m.T, N = B * T, C = c.n_embd, F = c.mlp_ratio * C, V = c.vocab_size;
  const int64_t H = c.n_head, HD = c.head_dim();
  const QkvNormRows qkv_norm = QkvNormRowsOf(c, N);
  const bool rope = c.position == Position::kRope;
  const ops::AttentionOptions attn = AttentionOptionsFor(c);
  for (Tensor* t : {&m.dres, &m.dxf, &m.t1, &m.t2, &m.t3, &m.dq, &m.dk, &m.dv}) Alloc(device_, *t, {N, C});
  Alloc(device_, m.dqkv, {N, 3 * C});
  Alloc(device_, m.dF1, {N, F});
  Alloc(device_, m.dF2, {N, F});
  Alloc(device_, m.dtmp, {N, C});
  if (c.sigma_reparam) m.dw_eff.SetZero();  // each layer's dW_eff is accumulated onto (LinearBackward)

  // Where the backend keeps bf16 operands, a norm's backward whose output a product reads
  // next as its dy (Proj's, FC2's) also writes it rounded to bf16 for that product, which then
  // rounds nothing (NormBackward's `next`). One buffer serves them all: each is read before
  // the next norm backward writes it. gradient_for: that product's Bf16Operands, pointed at it.
  // The other way, a product whose input gradient the add-norm before it reads (QKV → N1,
  // FC1 → N2) writes it in bf16 only, as autocast's bf16 product returns it (Bf16Operands::dx,
  // AddNormBackward's `from`): dx_for points the product at m.dx16 and undoes it after the norm;
  // Proj's, which the tensor-core attention reads in bf16 as its dout, at m.dout16.
  if (be.KeepsBf16Operands()) {
    Alloc(device_, m.dres16, {N, C}, DType::kBF16);
    Alloc(device_, m.dx16, {N, C}, DType::kBF16);
    Alloc(device_, m.dout16, {N, C}, DType::kBF16);
  } else {
    m.dres16 = Tensor();
    m.dx16 = Tensor();
    m.dout16 = Tensor();
  }
  const auto gradient_for = [&](Linear& lin) -> ops::Bf16Operands* {
    if (!m.dres16.defined() || lin.kept.get() == nullptr) return nullptr;
    lin.kept.ptrs.dy = m.dres16.data();
    return &lin.kept.ptrs;
  };
  const auto dx_for = [&](Linear& lin, bool norm_reads_it) -> const ops::Bf16Operands* {
    if (!m.dx16.defined() || lin.kept.get() == nullptr) return nullptr;
    lin.kept.ptrs.dx = norm_reads_it ? m.dx16.data() : nullptr;
    return norm_reads_it ? &lin.kept.ptrs : nullptr;
  };
  // Whether a branch's product reads the residual stream's gradient as it is (no layer scale
  // and no norm after the product in between; else the last of those hands it on).
  const auto mlp_reads_dres = [](const Layer& y) { return !y.ls2 && !y.fc2_norm.on(); };
  const auto attention_reads_dres = [](const Layer& y) { return !y.ls1 && !y.proj_norm.on(); };
  // dx laid out as x.
  const auto norm_back = [&](const Norm& n, const float* x, const ops::RowLayout& x_rows, const NormActs& a,
                             const float* dy, int64_t rows, int64_t d, float* dx, ops::Bf16Operands* next = nullptr) {
    be.NormBackward(c.norm, x, x_rows, n.g->value.f32(), a.mean.f32(), a.rstd.f32(), dy, rows, d, dx, n.g->grad.f32(),
                    n.b ? n.b->grad.f32() : nullptr, next);
  };
  const ops::RowLayout rows_of_c = ops::RowLayout::Contiguous(C);
  // The norm after a residual add: its input gradient joins the residual's in dres.
  const auto add_norm_back = [&](const Norm& n, const Tensor& sum, const NormActs& a, const float* dy,
                                 const ops::Bf16Operands* from, ops::Bf16Operands* next) {
    be.AddNormBackward(c.norm, sum.f32(), n.g->value.f32(), a.mean.f32(), a.rstd.f32(), dy, N, C, m.dres.f32(),
                       n.g->grad.f32(), n.b ? n.b->grad.f32() : nullptr, from, next);
  };
  const auto gradients_of = [&](Linear& lin, const Tensor& x) {
    return ops::Backend::LinearGradients{x.f32(), lin.weight(), lin.kept.get(), lin.weight_grad(),
                                         lin.b ? lin.b->grad.f32() : nullptr};
  };
  const auto linear_back = [&](Linear& lin, const Tensor& x, const float* dy, float* dx) {
    const ops::Backend::LinearGradients l = gradients_of(lin, x);
    be.LinearBackward(l.x, l.w, dy, N, lin.in, lin.out, dx, l.dw, l.db, l.kept);
  };

  Parameter* head = m.lm_head ? m.lm_head : m.wte;
  be.CrossEntropyLinearBackward(m.logits.data(), m.targets.i32(), m.lse.f32(), N, V, {c.logit_soft_cap, c.z_loss},
                                dloss, m.xf.y.f32(), head->value.f32(), C, m.logits.data(), m.dxf.f32(),
                                head->grad.f32(), m.head_kept.get(), m.logits_hold_gradient);
  const auto mlp_next = [&](int64_t l) {  // the product reading dres as the MLP branch of layer l starts
    return l >= 0 && mlp_reads_dres(m.layers[l]) ? gradient_for(m.layers[l].fc2) : nullptr;
  };
  norm_back(m.nf, m.stream[c.n_layer].f32(), rows_of_c, m.xf, m.dxf.f32(), N, C, m.dres.f32(), mlp_next(c.n_layer - 1));

  for (int64_t l = c.n_layer - 1; l >= 0; --l) {
    Layer& y = m.layers[l];
    // MLP branch: dres holds d(block output); it is also d(h) through the residual.
    const float* g = m.dres.f32();
    if (y.ls2) {
      be.ChannelScaleBackward(y.branch2_in->f32(), y.ls2->value.f32(), g, N, C, m.t1.f32(), y.ls2->grad.f32(),
                              y.fc2_norm.on() ? nullptr : gradient_for(y.fc2));
      g = m.t1.f32();
    }
    if (y.fc2_norm.on()) {
      norm_back(y.fc2_norm, y.fc2_out.f32(), rows_of_c, y.fn, g, N, C, m.t2.f32(), gradient_for(y.fc2));
      g = m.t2.f32();
    }
    const Tensor& a2 = y.n2.on() ? y.a2.y : y.h;
    const ops::Bf16Operands* fc1_dx = dx_for(y.fc1, y.n2.on());
    be.MlpBackward(c.activation, gradients_of(y.fc1, a2), gradients_of(y.fc2, y.act), y.fc1_out.data(), g, N, C, F, C,
                   m.dF1.f32(), m.dF2.f32(), m.t3.f32());
    y.fc2.kept.ptrs.dy_rounded = false;
    if (y.n2.on()) {
      add_norm_back(y.n2, y.h, y.a2, m.t3.f32(), fc1_dx, attention_reads_dres(y) ? gradient_for(y.proj) : nullptr);
      dx_for(y.fc1, false);
    } else {
      be.AddInPlace(m.dres.f32(), m.t3.f32(), N * C);
    }

    // Attention branch: dres now holds d(h), also d(x) through the residual.
    g = m.dres.f32();
    if (y.ls1) {
      be.ChannelScaleBackward(y.branch1_in->f32(), y.ls1->value.f32(), g, N, C, m.t1.f32(), y.ls1->grad.f32(),
                              y.proj_norm.on() ? nullptr : gradient_for(y.proj));
      g = m.t1.f32();
    }
    if (y.proj_norm.on()) {
      norm_back(y.proj_norm, y.proj_out.f32(), rows_of_c, y.pn, g, N, C, m.t2.f32(), gradient_for(y.proj));
      g = m.t2.f32();
    }
    // The attention's dout in bf16 alone where its forward ran the tensor-core kernels (they
    // rounded q, k, v into its kept operands), which read it so.
    ops::Bf16Operands& attn_kept = y.attn_kept.ptrs;
    const bool dout_in_bf16 = m.dout16.defined() && y.attn_kept.get() != nullptr && attn_kept.x_rounded &&
                              y.proj.kept.get() != nullptr && be.AttentionReadsRoundedInputs(HD, attn);
    if (dout_in_bf16) y.proj.kept.ptrs.dx = attn_kept.dy = m.dout16.data();
    linear_back(y.proj, y.att, g, m.t3.f32());
    y.proj.kept.ptrs.dy_rounded = false;
    y.proj.kept.ptrs.dx = nullptr;
    attn_kept.dy_rounded = dout_in_bf16;
    const Tensor& x = m.stream[l];
    const Tensor& a1 = y.n1.on() ? y.a1.y : x;
    const ops::Bf16Operands* qkv_dx = dx_for(y.qkv, y.n1.on());
    // Each gradient straight into its QKV block, or (before a norm or RoPE) into m.dq/dk/dv.
    float* dqkv = m.dqkv.f32();
    if (!rope) {  // the attention, the q/k/v norms and QKV: one op
      const auto qkv_norm_of = [&](const Norm& n, const NormActs& a) {
        return ops::Backend::QkvNorm{n.g->value.f32(), a.mean.f32(), a.rstd.f32(), n.g->grad.f32(),
                                     n.b ? n.b->grad.f32() : nullptr};
      };
      ops::Backend::QkvNorm qn, kn, vn;
      ops::Backend::QkvNorms norms{c.norm, qkv_norm.rows, qkv_norm.d, qkv_norm.layout};
      if (y.q_norm.on())
        qn = qkv_norm_of(y.q_norm, y.qn), kn = qkv_norm_of(y.k_norm, y.kn), norms.q = &qn, norms.k = &kn;
      if (y.v_norm.on()) vn = qkv_norm_of(y.v_norm, y.vn), norms.v = &vn;
      // Without N1, QKV's input gradient joins the residual stream's in dres directly.
      be.AttentionQkvBackward(y.qkv_out.f32(), y.q_att, y.k_att, y.v_att, y.attn_ld, y.att.f32(), ProbsOf(y),
                              y.attn_lse.f32(), m.t3.f32(), B, T, H, HD, attn, y.attn_kept.get(), norms,
                              gradients_of(y.qkv, a1), m.dq.f32(), m.dk.f32(), m.dv.f32(), dqkv,
                              y.n1.on() ? m.dtmp.f32() : m.dres.f32(), !y.n1.on());
    } else {  // RoPE between them: op by op
      const bool v_in_place = y.attn_ld.dv == 3 * C;
      be.AttentionBackward(y.q_att, y.k_att, y.v_att, y.att.f32(), ProbsOf(y), y.attn_lse.f32(), m.t3.f32(), B, T, H,
                           HD, attn, y.attn_ld, y.attn_kept.get(), m.dq.f32(), m.dk.f32(),
                           v_in_place ? dqkv + 2 * C : m.dv.f32());
      const bool last = !y.q_norm.on();  // RoPE's input gradients end in their QKV blocks, or the norms' do
      be.Rope(m.dq.f32(), C, last ? dqkv : m.dq.f32(), last ? 3 * C : C, B, T, H, HD, c.rope_base, true);
      be.Rope(m.dk.f32(), C, last ? dqkv + C : m.dk.f32(), last ? 3 * C : C, B, T, H, HD, c.rope_base, true);
      const float* qkv = y.qkv_out.f32();
      if (y.q_norm.on()) {
        norm_back(y.q_norm, qkv, qkv_norm.layout, y.qn, m.dq.f32(), qkv_norm.rows, qkv_norm.d, dqkv);
        norm_back(y.k_norm, qkv + C, qkv_norm.layout, y.kn, m.dk.f32(), qkv_norm.rows, qkv_norm.d, dqkv + C);
      }
      if (!v_in_place) {
        norm_back(y.v_norm, qkv + 2 * C, qkv_norm.layout, y.vn, m.dv.f32(), qkv_norm.rows, qkv_norm.d, dqkv + 2 * C);
      }
      linear_back(y.qkv, a1, dqkv, m.dtmp.f32());
      if (!y.n1.on()) be.AddInPlace(m.dres.f32(), m.dtmp.f32(), N * C);
    }
    attn_kept.dy_rounded = false;
    if (y.n1.on()) {
      add_norm_back(y.n1, x, y.a1, m.dtmp.f32(), qkv_dx, mlp_next(l - 1));
      dx_for(y.qkv, false);
    }
  }
  be.EmbeddingBackward(m.ids.i32(), N, T, m.dres.f32(), C, m.wte->grad.f32(), m.wpe ? m.wpe->grad.f32() : nullptr);
  // σ-reparam: every layer's dW_eff → dW and dg, in one batched op.
  if (c.sigma_reparam) be.SigmaReparamBackwardEach(SigmaReparamLayers(m.layers));
  return absl::OkStatus();
}

double Model::ComputeGradNorms() {
  backend_->ReadQueued();  // drop leftovers of a failed call, if any
  std::vector<std::pair<const float*, int64_t>> grads;
  for (const Parameter& p : params_) grads.emplace_back(p.grad.f32(), p.grad.numel());
  backend_->QueueSumSquaresOfEach(grads);
  const std::vector<double> squares = backend_->ReadQueued();  // one synchronisation on a GPU
  double total = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    telemetry_.Set("grad_norm." + params_[i].name, std::sqrt(squares[i]));
    total += squares[i];
  }
  telemetry_.Set("grad_norm", std::sqrt(total));
  return std::sqrt(total);
}

}  // namespace stability::model
