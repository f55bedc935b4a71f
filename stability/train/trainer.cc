#include "stability/train/trainer.h"

#include <omp.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "stability/base/paths.h"
#include "stability/base/status.h"
#include "stability/data/loader.h"
#include "stability/data/prepare.h"
#include "stability/dist/communicator.h"
#include "stability/dist/nccl_communicator.h"
#include "stability/model/model.h"
#include "stability/optim/adamw.h"
#include "stability/optim/schedule.h"
#include "stability/train/checkpoint.h"
#include "stability/train/device.h"
#include "stability/train/kernel_profile.h"
#include "stability/train/metrics.h"

namespace stability::train {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int s = static_cast<int>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string FormatCount(double v) {
  if (v >= 1e6) return absl::StrFormat("%.2fM", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1fk", v / 1e3);
  return absl::StrFormat("%.0f", v);
}

// Prepares the bundled corpus into the default data folder if it is not there yet.
absl::StatusOr<std::string> ResolveData(const std::string& data, FILE* progress) {
  if (!data.empty()) return ResolveUserPath(data);
  const std::string dir = DefaultDataDir();
  if (data::ListShards(dir, "train").ok() && data::ListShards(dir, "val").ok()) return dir;
  const BundledData bundled = FindBundledData();
  if (!bundled.corpus_present) {
    return absl::NotFoundError(absl::StrCat("the bundled corpus is not installed at ", bundled.corpus_dir,
                                            "; run `bash tools/setup.sh` or pass --data=DIR"));
  }
  if (progress) std::fprintf(progress, "preparing the bundled corpus into %s (once)\n", dir.c_str());
  data::PrepareOptions o{.inputs = {bundled.corpus_dir}, .out_dir = dir, .tokenizer = "gpt2", .force = true};
  o.progress = [progress](int64_t done, int64_t total, int64_t tokens) {
    if (progress) std::fprintf(progress, "\r  %lld/%lld books, %s tokens", (long long)done, (long long)total,
                               FormatCount(tokens).c_str());
  };
  absl::StatusOr<data::PrepareSummary> s = data::Prepare(o);
  if (progress) std::fprintf(progress, "\n");
  if (!s.ok()) return s.status();
  return dir;
}

std::string DefaultOutDir(const RunConfig& c) {
  return absl::StrFormat("%s/%s-%s-lr%g-seed%d", DefaultRunsDir(), c.model.size, c.model.variant, c.train.lr,
                         c.train.seed);
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat(path, " is not valid JSON"));
  return j;
}

// State of the divergence detector; saved in checkpoints so a resumed run decides the same.
struct Detector {
  double loss_at_init = NAN;
  int64_t above = 0;  // consecutive steps above the threshold
  std::vector<double> recent_loss, recent_grad;  // the last spike_window updates taken
  int64_t skipped = 0;
  nlohmann::json ToJson() const {
    return {{"loss_at_init", loss_at_init}, {"above", above}, {"recent_loss", recent_loss},
            {"recent_grad", recent_grad}, {"skipped", skipped}};
  }
  // `j` was type-checked by ParseCheckpointState.
  void FromJson(const nlohmann::json& j) {
    loss_at_init = j["loss_at_init"].is_number() ? j["loss_at_init"].get<double>() : NAN;
    above = j["above"].get<int64_t>();
    recent_loss = j.value("recent_loss", std::vector<double>{});
    recent_grad = j.value("recent_grad", std::vector<double>{});
    skipped = j.value("skipped", int64_t{0});
  }
  // OLMo-core style skip-step: a loss or gradient norm more than `factor` standard
  // deviations above the mean of the recent window (needs a full window).
  static bool Spike(const std::vector<double>& window, double v, double factor, size_t size) {
    if (factor <= 0 || window.size() < size) return false;
    double mean = 0, var = 0;
    for (double x : window) mean += x;
    mean /= window.size();
    for (double x : window) var += (x - mean) * (x - mean);
    return v > mean + factor * std::sqrt(var / window.size());
  }
  static void Push(std::vector<double>& window, double v, size_t size) {
    window.push_back(v);
    if (window.size() > size) window.erase(window.begin());
  }
};

// --profile_step's report (kernel_profile.h) into <out>/kernel_profile.md.
absl::Status WriteKernelProfile(std::vector<ops::Backend::KernelTime> rows, int64_t step, const std::string& out_dir,
                                FILE* progress) {
  const std::string md = KernelProfileMarkdown(std::move(rows), step);
  const std::string path = out_dir + "/kernel_profile.md";
  STABILITY_RETURN_IF_ERROR(WriteFileAtomically(path, md));
  if (progress) std::fprintf(progress, "kernel profile of step %lld: %s\n", static_cast<long long>(step), path.c_str());
  return absl::OkStatus();
}

}  // namespace

std::string DefaultDataDir() { return FindBundledData().root + "/data/gutenberg-gpt2"; }

namespace {
absl::StatusOr<nlohmann::json> RunTrainingOrThrow(RunConfig config, const TrainOptions& options);

// Telemetry that is a maximum over tokens (reduced across ranks by max, not by mean).
bool IsMaxTelemetry(const std::string& name) {
  return name.ends_with("max_logit") || name == "logits.max";
}
}  // namespace

// Out of memory (host or GPU) and device errors surface as exceptions from the allocators
// and kernels; here they become errors for the CLI and the Python API.
absl::StatusOr<nlohmann::json> RunTraining(RunConfig config, const TrainOptions& options) {
  try {
    return RunTrainingOrThrow(std::move(config), options);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "out of memory (a GPU allocation failure also printed the size asked for and the memory free): lower "
        "--batch or --seq, use --grad_accum, or a smaller --preset");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training stopped: ", e.what()));
  }
}

namespace {

absl::StatusOr<nlohmann::json> RunTrainingOrThrow(RunConfig config, const TrainOptions& options) {
  TrainConfig& tc = config.train;
  const model::ModelConfig& mc = config.model;
  STABILITY_RETURN_IF_ERROR(mc.Validate());
  STABILITY_RETURN_IF_ERROR(tc.Validate());
  std::unique_ptr<dist::Communicator> single;
  dist::Communicator* comm = options.comm;
  if (comm == nullptr) {
    single = dist::MakeSingleProcessCommunicator();
    comm = single.get();
  }
  const bool root = comm->is_root();
  const int world = comm->size();
  FILE* out = root ? options.progress : nullptr;
  // Output folder: never overwrite a run unless resuming it.
  tc.out = tc.out.empty() ? DefaultOutDir(config) : ResolveUserPath(tc.out);
  const std::string ckpt_dir = tc.out + "/checkpoints";
  std::error_code ec;
  const bool has_config = fs::exists(tc.out + "/config.json", ec);
  const bool finished = fs::exists(tc.out + "/summary.json", ec);
  if (options.resume) {
    if (!has_config) return absl::NotFoundError(absl::StrCat("--resume: ", tc.out, " holds no run (no config.json)"));
    // The run continues with its own configuration; only where it stops may change.
    STABILITY_ASSIGN_OR_RETURN(nlohmann::json saved, ReadJsonFile(tc.out + "/config.json"));
    STABILITY_ASSIGN_OR_RETURN(RunConfig saved_config, RunConfigFromJson(saved));
    const std::string keep_out = tc.out;
    const int64_t steps = tc.steps;
    config = saved_config;
    tc.out = keep_out;
    if (steps > tc.steps) tc.steps = steps;  // allow extending a run
  } else if (finished) {
    return absl::AlreadyExistsError(absl::StrCat(tc.out, " holds a finished run; choose another --out"));
  } else if (has_config) {
    return absl::AlreadyExistsError(absl::StrCat(tc.out, " holds an unfinished run; pass --resume to continue it ",
                                                 "or choose another --out"));
  }
  // The device (a resumed run keeps its own) before anything is written: a missing GPU
  // fails here. GPU ranks take the GPU of their local rank (--device=cuda or auto) and
  // reduce device buffers over NCCL, bootstrapped through `comm`; host values (losses,
  // votes) still go over comm.
  std::string device_flag = tc.device;
  if (world > 1 && (device_flag == "cuda" || device_flag == "auto")) {
    const std::string local = absl::StrCat("cuda:", dist::LauncherLocalRank());
    if (device_flag == "cuda" || ResolveDevice(local).ok()) device_flag = local;
  }
  STABILITY_ASSIGN_OR_RETURN(const Device device, ResolveDevice(device_flag));
  std::unique_ptr<dist::Communicator> nccl;
  dist::Communicator* dcomm = comm;  // for buffers in the device's memory
  if (device != kCpu && world > 1) {
    STABILITY_ASSIGN_OR_RETURN(nccl, dist::MakeNcclCommunicator(comm, device.index));
    dcomm = nccl.get();
  }
  STABILITY_ASSIGN_OR_RETURN(const bool fused, ConfigureBackend(device, tc.precision, tc.attention));
  if (out && device != kCpu) {
    std::fprintf(out, "device: %s, %s matrix products, %s attention%s\n", device.ToString().c_str(),
                 tc.precision.c_str(), fused ? "fused" : "gemm", nccl ? ", gradients over NCCL" : "");
  }

  const int64_t seq = tc.seq > 0 ? tc.seq : mc.seq_len;
  if (seq > mc.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("--seq=", seq, " exceeds the model's seq_len = ", mc.seq_len));
  }
  // Whether it fits on the GPU, with the precision and attention kernel set (they decide what
  // is kept), before anything is written.
  STABILITY_ASSIGN_OR_RETURN(const std::string memory, CheckFits(device, mc, tc.batch, seq));
  if (out && !memory.empty()) std::fprintf(out, "memory: %s\n", memory.c_str());

  // Every rank has checked the folder; only now may rank 0 change it.
  STABILITY_RETURN_IF_ERROR(comm->Barrier());
  if (root) fs::create_directories(tc.out, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create the run folder ", tc.out, ": ", ec.message()));
  STABILITY_RETURN_IF_ERROR(comm->Barrier());
  if (::access(tc.out.c_str(), W_OK) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("the run folder ", tc.out, " is not writable"));
  }

  if (tc.threads > 0) omp_set_num_threads(static_cast<int>(tc.threads));
  std::string data_dir;
  if (root) {  // may prepare the bundled corpus, once
    STABILITY_ASSIGN_OR_RETURN(data_dir, ResolveData(tc.data, out));
  }
  STABILITY_RETURN_IF_ERROR(comm->Barrier());
  if (!root) {
    STABILITY_ASSIGN_OR_RETURN(data_dir, ResolveData(tc.data, nullptr));
  }
  STABILITY_ASSIGN_OR_RETURN(std::vector<std::string> train_shards, data::ListShards(data_dir, "train"));
  STABILITY_ASSIGN_OR_RETURN(std::vector<std::string> val_shards, data::ListShards(data_dir, "val"));
  STABILITY_ASSIGN_OR_RETURN(
      std::unique_ptr<data::DataLoader> train_loader,
      data::DataLoader::Open(train_shards, {.batch = tc.batch, .seq = seq, .shuffle = true, .seed = tc.seed,
                                            .rank = comm->rank(), .world = world, .vocab_size = mc.vocab_size}));
  STABILITY_ASSIGN_OR_RETURN(
      std::unique_ptr<data::DataLoader> val_loader,
      data::DataLoader::Open(val_shards, {.batch = tc.batch, .seq = seq, .shuffle = false, .rank = comm->rank(),
                                          .world = world, .vocab_size = mc.vocab_size}));

  STABILITY_ASSIGN_OR_RETURN(std::unique_ptr<model::Model> model, model::Model::Create(mc, tc.seed, device));
  model->set_keep_logits(false);  // the loss is all a step reads: its gradient may be computed with it
  // ZeRO-1: rank r keeps the moments of piece r of the flattened parameters and updates
  // that piece; the pieces are all-gathered after each update.
  const bool zero1 = tc.zero == 1 && world > 1;
  const int64_t flat = optim::FlatSize(model->parameters());
  const int64_t piece = zero1 ? (flat + world - 1) / world : flat;
  const optim::FlatRange shard = zero1 ? optim::ShardOf(flat, comm->rank(), world) : optim::FlatRange{0, flat};
  optim::AdamW opt(&model->parameters(),
                   {.beta1 = tc.beta1, .beta2 = tc.beta2, .eps = tc.eps, .weight_decay = tc.weight_decay,
                    .decay_all = tc.decay_all},
                   shard);
  // ZeRO-1 staging in the device's memory (NCCL needs GPU buffers), bounded by the chunk.
  constexpr int64_t kGatherChunk = 1 << 20;  // floats per all-gather
  Tensor gather_send, gather_recv;
  if (zero1) {
    gather_send = Tensor::Empty({std::min(piece, kGatherChunk)}, DType::kF32, device);
    gather_recv = Tensor::Empty({std::min(piece, kGatherChunk) * world}, DType::kF32, device);
  }
  ops::Backend* const dev_backend = ops::GetBackend(device);
  const auto gather_parameters = [&]() -> absl::Status {
    std::vector<Parameter>& params = model->parameters();
    return dist::AllGatherInChunks(
        *dcomm, piece, kGatherChunk, gather_send.f32(), gather_recv.f32(),
        [&](int64_t off, int64_t len, float* dst) {
          const int64_t lo = std::min(shard.begin + off, shard.end), hi = std::min(shard.begin + off + len, shard.end);
          optim::PackValues(params, {lo, hi}, dst);  // past the shard's end: padding, never read
        },
        [&](int64_t off, int64_t len, const float* all) {
          for (int r = 0; r < world; ++r) {
            const int64_t lo = std::min(r * piece + off, flat), hi = std::min(r * piece + off + len, flat);
            optim::UnpackValues(&params, {lo, hi}, all + r * len);
          }
        });
  };
  // The moments of every rank for a checkpoint (collective; rank 0 gets host tensors).
  const auto optimizer_state = [&]() -> absl::StatusOr<std::vector<std::pair<std::string, Tensor>>> {
    if (!zero1) return root ? opt.StateTensors() : std::vector<std::pair<std::string, Tensor>>{};
    Tensor m = Tensor::Zeros({piece}, DType::kF32, device), v = Tensor::Zeros({piece}, DType::kF32, device);
    opt.PackMoments(m.f32(), v.f32());
    std::vector<float> all_m(root ? piece * world : 0), all_v(root ? piece * world : 0), chunk_host;
    for (auto [mine, all] : {std::pair{&m, &all_m}, std::pair{&v, &all_v}}) {
      STABILITY_RETURN_IF_ERROR(dist::AllGatherInChunks(
          *dcomm, piece, kGatherChunk, gather_send.f32(), gather_recv.f32(),
          [&](int64_t off, int64_t len, float* dst) { dev_backend->Copy(mine->f32() + off, len, dst); },
          [&](int64_t off, int64_t len, const float*) {
            if (!root) return;
            chunk_host.resize(gather_recv.numel());
            gather_recv.CopyToHost(chunk_host.data());
            for (int r = 0; r < world; ++r)
              std::copy(chunk_host.begin() + r * len, chunk_host.begin() + (r + 1) * len, all->data() + r * piece + off);
          }));
    }
    if (!root) return std::vector<std::pair<std::string, Tensor>>{};
    return opt.StateTensorsFromFlat(all_m.data(), all_v.data());
  };
  optim::Schedule schedule{.lr = tc.lr, .min_lr = tc.min_lr, .warmup = tc.warmup, .total = tc.steps};
  STABILITY_RETURN_IF_ERROR(optim::ParseDecay(tc.schedule, &schedule.decay));
  STABILITY_RETURN_IF_ERROR(schedule.Validate());

  Detector detector;
  int64_t start = 0;
  double best_val = INFINITY, last_val = NAN;
  double prior_wall = 0;
  // A run killed before its first checkpoint resumes from the start.
  absl::StatusOr<std::string> latest = FindLatestCheckpoint(ckpt_dir);
  if (options.resume && latest.ok()) {
    STABILITY_ASSIGN_OR_RETURN(Checkpoint ckpt, LoadCheckpoint(*latest));
    for (Parameter& p : model->parameters()) {
      STABILITY_ASSIGN_OR_RETURN(Tensor t, ckpt.tensors.Get(p.name));
      if (t.shape() != p.value.shape()) {
        return absl::DataLossError(absl::StrCat("checkpoint ", ckpt.path, ": ", p.name, " has shape ",
                                                ShapeToString(t.shape()), ", the model needs ", ShapeToString(p.value.shape())));
      }
      p.CopyValueFromHost(t.data());
    }
    for (auto& [name, buf] : model->buffers()) {
      STABILITY_ASSIGN_OR_RETURN(Tensor t, ckpt.tensors.Get(name));
      if (t.numel() != buf.numel()) return absl::DataLossError(absl::StrCat("checkpoint ", ckpt.path, ": bad ", name));
      buf.CopyFromHost(t.data());
    }
    const CheckpointState& st = ckpt.parsed;
    if (st.world_size != world) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint ", ckpt.path, " was written by a run of ", st.world_size, " rank(s); resume it with the same ",
          "number (mpirun -np ", st.world_size, "), this run has ", world));
    }
    STABILITY_RETURN_IF_ERROR(opt.LoadState(ckpt.tensors.tensors, st.optimizer_step));
    STABILITY_RETURN_IF_ERROR(train_loader->set_position({st.data_epoch, st.data_next}));
    detector.FromJson(st.detector);
    best_val = std::isnan(st.best_val_loss) ? INFINITY : st.best_val_loss;
    prior_wall = st.wall_time_s;
    start = st.step;
    if (start > tc.steps) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", ckpt.path, " is at step ", start,
                                                     ", beyond --steps=", tc.steps));
    }
    if (out) std::fprintf(out, "resuming %s from step %lld\n", tc.out.c_str(), (long long)start);
  } else if (options.resume && out) {
    std::fprintf(out, "no checkpoint in %s yet: starting it from step 0\n", tc.out.c_str());
  }
  // Checkpoints hold parameters, buffers and two Adam moments: refuse to start a run whose
  // checkpoints cannot fit, rather than fail hours in. --keep_checkpoints=0 writes none (an
  // 830M benchmark run would write ~10 GB at its end).
  const bool checkpoints = tc.keep_checkpoints > 0;
  if (root && checkpoints) {
    struct statvfs fs_info;
    if (::statvfs(tc.out.c_str(), &fs_info) == 0) {
      const double free_bytes = static_cast<double>(fs_info.f_bavail) * fs_info.f_frsize;
      const double need = 3.0 * 4.0 * model::ParameterCount(mc) * (tc.keep_checkpoints + 1) + (1 << 20);
      if (free_bytes < need) {
        return absl::ResourceExhaustedError(absl::StrFormat(
            "not enough disk space in %s: checkpoints need about %.1f MB (%d kept + 1 being written), %.1f MB free; "
            "free space, lower --keep_checkpoints or choose another --out",
            tc.out, need / 1e6, tc.keep_checkpoints, free_bytes / 1e6));
      }
    }
  }
  std::optional<MetricsWriter> metrics;
  if (root) {
    STABILITY_RETURN_IF_ERROR(WriteFileAtomically(tc.out + "/config.json", config.ToJson().dump(2) + "\n"));
    STABILITY_ASSIGN_OR_RETURN(MetricsWriter m, MetricsWriter::Open(tc.out + "/metrics.jsonl", options.resume ? start : 0));
    metrics.emplace(std::move(m));
  }

  const auto checkpoint = [&](int64_t step, double wall) -> absl::Status {
    STABILITY_ASSIGN_OR_RETURN(auto moments, optimizer_state());  // every rank takes part
    if (!root) return absl::OkStatus();
    SafetensorsFile f;  // host copies of what lives on the device
    const auto host = [](const Tensor& t) { return t.device() == kCpu ? t : t.To(kCpu); };
    for (const Parameter& p : model->parameters()) f.tensors.emplace_back(p.name, host(p.value));
    for (const auto& [name, t] : model->buffers()) f.tensors.emplace_back(name, host(t));
    for (auto& [name, t] : moments) f.tensors.emplace_back(name, host(t));
    const data::LoaderPosition pos = train_loader->position();
    nlohmann::json state = {{"optimizer_step", opt.step()},
                            {"data", {{"epoch", pos.epoch}, {"next", pos.next}}},
                            {"detector", detector.ToJson()},
                            {"best_val_loss", std::isfinite(best_val) ? nlohmann::json(best_val) : nlohmann::json()},
                            {"wall_time_s", wall},
                            {"world_size", world},
                            {"config", config.ToJson()}};
    return WriteCheckpoint(ckpt_dir, step, f, state, tc.keep_checkpoints);
  };
  const auto evaluate = [&]() -> absl::StatusOr<double> {
    model->set_training(false);
    model->set_telemetry(false);
    STABILITY_RETURN_IF_ERROR(val_loader->set_position({0, 0}));
    Tensor ids, targets;
    double sum = 0;
    const int64_t batches = std::min(tc.eval_batches, val_loader->batches_per_epoch());
    for (int64_t b = 0; b < batches; ++b) {
      STABILITY_RETURN_IF_ERROR(val_loader->Next(&ids, &targets));
      STABILITY_ASSIGN_OR_RETURN(double l, model->Forward(ids, targets));
      sum += l;
    }
    STABILITY_RETURN_IF_ERROR(comm->AllReduceSum(&sum, 1));
    model->set_training(true);
    model->set_telemetry(true);
    return sum / (batches * world);
  };

  const int64_t tokens_per_step = tc.batch * seq * tc.grad_accum * world;
  const auto t0 = Clock::now();
  auto last = t0;
  std::string diverged_reason;
  int64_t diverged_step = 0, step = start;
  bool stopped = false;
  double last_loss = NAN, tokens_per_s = 0;
  Tensor ids, targets;
  ops::Backend* backend = ops::GetBackend(device);
  const auto backend_scale = [backend](Tensor& t, float s) { backend->Scale(t.f32(), t.numel(), s); };
  while (step < tc.steps) {
    const bool telemetry = (step + 1) % tc.telemetry_interval == 0 || step + 1 == tc.steps;
    const bool profile = step + 1 == tc.profile_step && root && backend->StartKernelProfile();
    if (step + 1 == tc.profile_step && root && !profile && out) {
      std::fprintf(out, "--profile_step: the %s backend has no kernel profile\n", backend->name());
    }
    model->set_telemetry(telemetry);
    model->ZeroGrad();
    double loss = 0;
    nlohmann::json row;
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      STABILITY_RETURN_IF_ERROR(train_loader->Next(&ids, &targets));
      STABILITY_ASSIGN_OR_RETURN(double l, model->Forward(ids, targets));
      loss += l / tc.grad_accum;
      if (micro == tc.grad_accum - 1 && telemetry) {
        for (const auto& [name, v] : model->telemetry().values()) row[name] = v;
      }
      STABILITY_RETURN_IF_ERROR(model->Backward(1.0f / static_cast<float>(tc.grad_accum)));
    }
    if (world > 1 && telemetry) {  // every rank's telemetry: maxima by max, the rest averaged
      std::vector<double> mean_values, max_values;
      for (const auto& [name, v] : model->telemetry().values()) (IsMaxTelemetry(name) ? max_values : mean_values).push_back(v);
      STABILITY_RETURN_IF_ERROR(comm->AllReduceSum(mean_values.data(), static_cast<int64_t>(mean_values.size())));
      STABILITY_RETURN_IF_ERROR(comm->AllReduceMax(max_values.data(), static_cast<int64_t>(max_values.size())));
      size_t i_mean = 0, i_max = 0;
      for (const auto& [name, v] : model->telemetry().values()) {
        row[name] = IsMaxTelemetry(name) ? max_values[i_max++] : mean_values[i_mean++] / world;
      }
    }
    if (world > 1) {  // data parallelism: average the gradients and the loss over ranks
      Tensor& grads = model->gradients();  // every parameter's gradient: one call, one scale
      STABILITY_RETURN_IF_ERROR(dcomm->AllReduceSum(grads.f32(), grads.numel()));
      backend_scale(grads, 1.0f / static_cast<float>(world));
      STABILITY_RETURN_IF_ERROR(comm->AllReduceSum(&loss, 1));
      loss /= world;
    }
    if (telemetry) {
      model->ComputeGradNorms();
      for (const auto& [name, v] : model->telemetry().values())
        if (name.rfind("grad_norm", 0) == 0) row[name] = v;
    }
    const double lr = schedule.At(step);
    double grad_norm;
    bool skip = false;
    if (tc.spike_skip_factor > 0) {  // decide before the update, so a spike never lands
      grad_norm = opt.GradNorm();
      const size_t w = static_cast<size_t>(tc.spike_window);
      skip = std::isfinite(loss) && std::isfinite(grad_norm) &&
             (Detector::Spike(detector.recent_loss, loss, tc.spike_skip_factor, w) ||
              Detector::Spike(detector.recent_grad, grad_norm, tc.spike_skip_factor, w));
      if (skip) {
        ++detector.skipped;  // parameters and Adam moments stay as they are
      } else {
        opt.Step(lr, tc.clip);
        if (zero1) STABILITY_RETURN_IF_ERROR(gather_parameters());
        Detector::Push(detector.recent_loss, loss, w);
        Detector::Push(detector.recent_grad, grad_norm, w);
      }
    } else {
      grad_norm = opt.Step(lr, tc.clip);
      if (zero1) STABILITY_RETURN_IF_ERROR(gather_parameters());
    }
    if (profile) STABILITY_RETURN_IF_ERROR(WriteKernelProfile(backend->StopKernelProfile(), step + 1, tc.out, out));
    ++step;
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    tokens_per_s = tokens_per_step / std::max(dt, 1e-9);
    const double elapsed = std::chrono::duration<double>(now - t0).count();
    last_loss = loss;
    row["step"] = step;
    row["lr"] = lr;
    row["loss"] = loss;
    row["grad_norm"] = grad_norm;
    row["tokens_per_s"] = tokens_per_s;
    row["elapsed_s"] = prior_wall + elapsed;
    if (tc.spike_skip_factor > 0) row["skipped"] = skip;
    if (std::isnan(detector.loss_at_init)) detector.loss_at_init = loss;

    // Divergence.
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      diverged_reason = !std::isfinite(loss) ? "non-finite loss" : "non-finite gradient norm";
    } else if (tc.divergence_factor > 0 && step > tc.warmup && loss > tc.divergence_factor * detector.loss_at_init) {
      if (++detector.above >= tc.divergence_patience) {
        diverged_reason = absl::StrFormat("loss above %g x the loss at initialisation (%.4f) for %d steps",
                                          tc.divergence_factor, detector.loss_at_init, tc.divergence_patience);
      }
    } else {
      detector.above = 0;
    }
    const bool is_last = step == tc.steps || !diverged_reason.empty();
    if (diverged_reason.empty() && ((tc.eval_interval > 0 && step % tc.eval_interval == 0) || is_last)) {
      STABILITY_ASSIGN_OR_RETURN(last_val, evaluate());
      best_val = std::min(best_val, last_val);
      row["val_loss"] = last_val;
      row["val_ppl"] = std::exp(last_val);
    }
    if (metrics) STABILITY_RETURN_IF_ERROR(metrics->Write(row));
    if (!diverged_reason.empty()) diverged_step = step;
    // A live line on a terminal; one line per ~5% of the run in a log file.
    const bool tty = out && ::isatty(::fileno(out));
    if (out && (tty || row.contains("val_loss") || is_last || step % std::max<int64_t>(1, tc.steps / 20) == 0)) {
      const double eta = (tc.steps - step) * dt;
      std::fprintf(out, "%sstep %lld/%lld | loss %.4f | lr %.2e | %s tok/s | ETA %s%s   ", tty ? "\r" : "", (long long)step,
                   (long long)tc.steps, loss, lr, FormatCount(tokens_per_s).c_str(), FormatDuration(eta).c_str(),
                   row.contains("val_loss") ? absl::StrFormat(" | val %.4f", last_val).c_str() : "");
      if (!tty || row.contains("val_loss") || is_last) std::fprintf(out, "\n");
      std::fflush(out);
    }
    double stop_votes = ((options.stop_requested && options.stop_requested->load()) ||
                         (options.on_step && !options.on_step(row)))
                            ? 1.0
                            : 0.0;
    STABILITY_RETURN_IF_ERROR(comm->AllReduceSum(&stop_votes, 1));  // every rank stops at the same step
    const bool stop_now = (options.stop_after > 0 && step >= options.stop_after) || stop_votes > 0;
    if (checkpoints && (is_last || stop_now || (tc.checkpoint_interval > 0 && step % tc.checkpoint_interval == 0))) {
      STABILITY_RETURN_IF_ERROR(checkpoint(step, prior_wall + elapsed));
    }
    if (!diverged_reason.empty()) break;
    if (stop_now && !is_last) {
      stopped = true;
      break;
    }
  }
  const double wall = prior_wall + std::chrono::duration<double>(Clock::now() - t0).count();
  const int64_t done_here = step - start;
  nlohmann::json summary = {
      {"steps", step},
      {"finished", !stopped},
      {"diverged", !diverged_reason.empty()},
      {"diverged_step", diverged_reason.empty() ? nlohmann::json() : nlohmann::json(diverged_step)},
      {"diverged_reason", diverged_reason.empty() ? nlohmann::json() : nlohmann::json(diverged_reason)},
      {"final_train_loss", std::isfinite(last_loss) ? nlohmann::json(last_loss) : nlohmann::json()},
      {"final_val_loss", std::isfinite(last_val) ? nlohmann::json(last_val) : nlohmann::json()},
      {"final_val_ppl", std::isfinite(last_val) ? nlohmann::json(std::exp(last_val)) : nlohmann::json()},
      {"best_val_loss", std::isfinite(best_val) ? nlohmann::json(best_val) : nlohmann::json()},
      {"best_val_ppl", std::isfinite(best_val) ? nlohmann::json(std::exp(best_val)) : nlohmann::json()},
      {"loss_at_init", detector.loss_at_init},
      {"skipped_steps", detector.skipped},
      {"wall_time_s", wall},
      {"tokens_per_s", done_here > 0 ? done_here * tokens_per_step / std::max(wall - prior_wall, 1e-9) : 0.0},
      {"parameters", model::ParameterCount(mc)},
      {"tokens_per_step", tokens_per_step},
      {"run", tc.out},
      {"ranks", world},
      {"device", device.ToString()},
      {"precision", tc.precision},
      {"zero", zero1 ? 1 : 0},
      {"optimizer_state_bytes_per_rank", opt.state_bytes()},
  };
  STABILITY_RETURN_IF_ERROR(comm->Barrier());
  if (!stopped && root) {
    STABILITY_RETURN_IF_ERROR(WriteFileAtomically(tc.out + "/summary.json", summary.dump(2) + "\n"));
  }
  return summary;
}

}  // namespace

}  // namespace stability::train
