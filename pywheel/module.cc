// The native half of the Python package `stability` (pybind11): thin bindings over the
// same //stability core the CLI uses. Long calls release the GIL; callbacks re-acquire it.
// absl::Status errors become Python exceptions carrying the library's message:
// InvalidArgument -> ValueError, NotFound -> FileNotFoundError, AlreadyExists ->
// FileExistsError, PermissionDenied -> PermissionError, everything else -> RuntimeError.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "absl/status/status.h"
#include "stability/base/version.h"
#include "stability/data/prepare.h"
#include "stability/data/tokenizer.h"
#include "stability/model/config.h"
#include "stability/model/model.h"
#include "stability/train/device.h"
#include "stability/train/sweep.h"
#include "stability/train/sweep_tables.h"
#include "stability/train/trainer.h"

namespace py = pybind11;
using namespace stability;

namespace {

[[noreturn]] void Throw(const absl::Status& s) {
  const std::string msg(s.message());
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      throw py::value_error(msg);
    case absl::StatusCode::kNotFound: {
      PyErr_SetString(PyExc_FileNotFoundError, msg.c_str());
      throw py::error_already_set();
    }
    case absl::StatusCode::kAlreadyExists: {
      PyErr_SetString(PyExc_FileExistsError, msg.c_str());
      throw py::error_already_set();
    }
    case absl::StatusCode::kPermissionDenied: {
      PyErr_SetString(PyExc_PermissionError, msg.c_str());
      throw py::error_already_set();
    }
    case absl::StatusCode::kDataLoss:
      throw py::value_error(msg);
    default:
      throw std::runtime_error(msg);
  }
}

void Check(const absl::Status& s) {
  if (!s.ok()) Throw(s);
}

template <typename T>
T Value(absl::StatusOr<T> s) {
  if (!s.ok()) Throw(s.status());
  return std::move(*s);
}

nlohmann::json ParseJson(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) throw py::value_error("not valid JSON: " + text.substr(0, 200));
  return j;
}

// {"model": {...}, "train": {...}} with presets resolved, validated.
std::string MakeRunConfig(const std::string& preset, const std::string& variant, const std::string& model_json,
                          const std::string& train_json) {
  train::RunConfig rc;
  rc.model = Value(model::MakeConfig(preset, variant, ParseJson(model_json)));
  Check(train::ApplyTrainJson(ParseJson(train_json), &rc.train));
  return rc.ToJson().dump();
}

std::string ValidateRunConfig(const std::string& json) {
  return Value(train::RunConfigFromJson(ParseJson(json))).ToJson().dump();
}

Tensor TokensFromNumpy(const py::array& a, const char* what) {
  py::array_t<int32_t, py::array::c_style | py::array::forcecast> arr(a);
  if (arr.ndim() != 2) throw py::value_error(std::string(what) + " must be a 2-D array [batch, seq] of token ids");
  Tensor t = Tensor::Empty({arr.shape(0), arr.shape(1)}, DType::kI32);
  std::memcpy(t.data(), arr.data(), t.nbytes());
  return t;
}

// A float32 copy of t, from any device; bf16 (the GPU's bf16 logits) widened exactly.
py::array_t<float> ToNumpy(const Tensor& t) {
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  py::array_t<float> out(shape);
  if (t.dtype() == DType::kBF16) {
    std::vector<uint16_t> half(t.numel());
    t.CopyToHost(half.data());
    float* dst = out.mutable_data();
    for (size_t i = 0; i < half.size(); ++i) {
      const uint32_t bits = static_cast<uint32_t>(half[i]) << 16;
      std::memcpy(dst + i, &bits, 4);
    }
  } else {
    t.CopyToHost(out.mutable_data());
  }
  return out;
}

// The model of a run config on the config's device (auto: a GPU when there is one) with its
// precision and attention kernel; the backend is set to them before each forward, as another
// model or a training run in the process may have changed them.
class PyModel {
 public:
  PyModel(const std::string& run_config_json, uint64_t seed) {
    rc_ = Value(train::RunConfigFromJson(ParseJson(run_config_json)));
    device_ = Value(train::ResolveDevice(rc_.train.device));
    Value(train::ConfigureBackend(device_, rc_.train.precision, rc_.train.attention));
    model_ = Value(model::Model::Create(rc_.model, seed, device_));
  }

  std::string Device() const { return device_.ToString(); }

  py::tuple Forward(const py::array& ids, const py::array& targets) {
    Tensor i = TokensFromNumpy(ids, "ids"), t = TokensFromNumpy(targets, "targets");
    Value(train::ConfigureBackend(device_, rc_.train.precision, rc_.train.attention));
    double loss;
    {
      py::gil_scoped_release release;
      absl::StatusOr<double> l = model_->Forward(i, t);
      if (!l.ok()) {
        py::gil_scoped_acquire acquire;
        Throw(l.status());
      }
      loss = *l;
    }
    py::array_t<float> logits = ToNumpy(model_->logits());
    logits.resize({i.dim(0), i.dim(1), model_->config().vocab_size});
    return py::make_tuple(loss, logits, Telemetry());
  }

  py::dict Backward(float dloss) {
    {
      py::gil_scoped_release release;
      model_->ZeroGrad();
      absl::Status s = model_->Backward(dloss);
      if (!s.ok()) {
        py::gil_scoped_acquire acquire;
        Throw(s);
      }
      model_->ComputeGradNorms();
    }
    py::dict grads;
    for (const Parameter& p : model_->parameters()) grads[py::str(p.name)] = ToNumpy(p.grad);
    return grads;
  }

  py::dict Telemetry() const {
    py::dict d;
    for (const auto& [name, v] : model_->telemetry().values()) d[py::str(name)] = v;
    return d;
  }

  py::dict Parameters() const {
    py::dict d;
    for (const Parameter& p : model_->parameters()) d[py::str(p.name)] = ToNumpy(p.value);
    return d;
  }

  py::dict Buffers() {
    py::dict d;
    for (const auto& [name, t] : model_->buffers()) d[py::str(name)] = ToNumpy(t);
    return d;
  }

  void SetParameter(const std::string& name, const py::array& value) {
    Parameter* p = model_->FindParameter(name);
    if (p == nullptr) throw py::key_error("no parameter named " + name);
    py::array_t<float, py::array::c_style | py::array::forcecast> arr(value);
    Shape shape(arr.shape(), arr.shape() + arr.ndim());
    if (shape != p->value.shape()) {
      throw py::value_error("parameter " + name + " has shape " + ShapeToString(p->value.shape()) + ", got " +
                            ShapeToString(shape));
    }
    p->CopyValueFromHost(arr.data());  // the next forward rounds its bf16 copy again
  }

  std::vector<std::string> ParameterNames() const {
    std::vector<std::string> names;
    for (const Parameter& p : model_->parameters()) names.push_back(p.name);
    return names;
  }

  void SetTraining(bool on) { model_->set_training(on); }

 private:
  train::RunConfig rc_;
  stability::Device device_;
  std::unique_ptr<model::Model> model_;
};

// Runs training with the GIL released; `callback(row_json) -> bool` is called with the GIL
// held after every step and may stop the run. A pending KeyboardInterrupt also stops it
// (after a checkpoint) and is re-raised.
std::string Train(const std::string& run_config_json, bool resume, int64_t stop_after, py::object callback) {
  train::RunConfig rc = Value(train::RunConfigFromJson(ParseJson(run_config_json)));
  bool interrupted = false;
  std::string callback_error;
  train::TrainOptions options{.resume = resume, .stop_after = stop_after};
  options.on_step = [&](const nlohmann::json& row) {
    py::gil_scoped_acquire acquire;
    if (PyErr_CheckSignals() != 0) {
      PyErr_Clear();
      interrupted = true;
      return false;
    }
    if (callback.is_none()) return true;
    try {
      py::object r = callback(row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return r.is_none() || r.cast<bool>();
    } catch (py::error_already_set& e) {
      callback_error = e.what();
      return false;
    }
  };
  absl::StatusOr<nlohmann::json> summary;
  {
    py::gil_scoped_release release;
    summary = train::RunTraining(rc, options);
  }
  if (!summary.ok()) Throw(summary.status());
  if (interrupted) {
    PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  }
  if (!callback_error.empty()) throw std::runtime_error("the step callback raised: " + callback_error);
  return summary->dump();
}

py::dict RunSweep(const std::string& spec_json, const std::string& out, int jobs, int threads,
                  const std::string& executable) {
  const train::SweepSpec sweep = Value(train::ExpandSweep(ParseJson(spec_json)));
  absl::StatusOr<train::SweepOutcome> o;
  {
    py::gil_scoped_release release;
    o = train::RunSweep(sweep, out, {.executable = executable, .jobs = jobs, .threads_per_job = threads});
  }
  if (!o.ok()) Throw(o.status());
  py::dict d;
  d["cells"] = o->cells;
  d["finished"] = o->finished;
  d["failed"] = o->failed;
  d["failures"] = o->failures;
  return d;
}

std::string SweepResults(const std::string& dir) {
  const nlohmann::json spec = Value(train::ReadSweepSpec(dir));
  const train::SweepSpec sweep = Value(train::ExpandSweep(spec));
  const train::SweepResults r = Value(train::ComputeSweepResults(sweep, dir));
  nlohmann::json out = {{"tables", r.tables}, {"markdown", r.markdown}, {"spec", spec}, {"cells", nlohmann::json::array()}};
  out["tables"].erase("csv");
  for (const train::SweepCell& c : sweep.cells) {
    out["cells"].push_back({{"name", c.name}, {"method", c.method}, {"group", c.group}, {"lr", c.lr}, {"seed", c.seed}});
  }
  return out.dump();
}

class PyTokenizer {
 public:
  explicit PyTokenizer(const std::string& spec) : t_(Value(data::LoadTokenizer(spec))) {}
  py::array_t<int32_t> Encode(const std::string& text) const {
    std::vector<int32_t> ids;
    {
      py::gil_scoped_release release;
      absl::StatusOr<std::vector<int32_t>> r = t_->Encode(text);
      if (!r.ok()) {
        py::gil_scoped_acquire acquire;
        Throw(r.status());
      }
      ids = std::move(*r);
    }
    py::array_t<int32_t> out(static_cast<py::ssize_t>(ids.size()));
    std::memcpy(out.mutable_data(), ids.data(), ids.size() * sizeof(int32_t));
    return out;
  }
  std::string Decode(const std::vector<int32_t>& ids) const { return Value(t_->Decode(ids)); }
  int64_t vocab_size() const { return t_->vocab_size(); }
  int32_t eot_id() const { return t_->eot_id(); }
  std::string name() const { return t_->name(); }

 private:
  std::unique_ptr<data::Tokenizer> t_;
};

std::string Prepare(const std::vector<std::string>& inputs, const std::string& out, const std::string& tokenizer,
                    double val_fraction, int64_t shard_tokens, bool force, py::object progress) {
  data::PrepareOptions o{.inputs = inputs, .out_dir = out, .tokenizer = tokenizer, .val_fraction = val_fraction,
                         .shard_tokens = shard_tokens, .force = force};
  if (!progress.is_none()) {
    o.progress = [&progress](int64_t done, int64_t total, int64_t tokens) {
      py::gil_scoped_acquire acquire;
      progress(done, total, tokens);
    };
  }
  absl::StatusOr<data::PrepareSummary> s;
  {
    py::gil_scoped_release release;
    s = data::Prepare(o);
  }
  if (!s.ok()) Throw(s.status());
  return s->ToJson().dump();
}

}  // namespace

PYBIND11_MODULE(_stability, m) {
  m.doc() = "Native core of the stability workbench (use the `stability` package, not this module).";
  m.attr("__version__") = kVersion;
  m.def("size_presets", &model::SizePresetNames);
  m.def("variant_presets", &model::VariantPresetNames);
  m.def("model_field_names", &model::ModelConfigFieldNames);
  m.def("train_field_names", &train::TrainConfigFieldNames);
  m.def("make_run_config", &MakeRunConfig, py::arg("preset"), py::arg("variant"), py::arg("model_json"),
        py::arg("train_json"));
  m.def("validate_run_config", &ValidateRunConfig);
  m.def("parameter_count", [](const std::string& json) {
    return model::ParameterCount(Value(train::RunConfigFromJson(ParseJson(json))).model);
  });
  m.def("default_data_dir", &train::DefaultDataDir);
  py::class_<PyModel>(m, "Model")
      .def(py::init<const std::string&, uint64_t>(), py::arg("run_config_json"), py::arg("seed"))
      .def("forward", &PyModel::Forward, py::arg("ids"), py::arg("targets"))
      .def("backward", &PyModel::Backward, py::arg("dloss") = 1.0f)
      .def("telemetry", &PyModel::Telemetry)
      .def("parameters", &PyModel::Parameters)
      .def("buffers", &PyModel::Buffers)
      .def("set_parameter", &PyModel::SetParameter)
      .def("parameter_names", &PyModel::ParameterNames)
      .def("set_training", &PyModel::SetTraining)
      .def_property_readonly("device", &PyModel::Device);
  m.def("train", &Train, py::arg("run_config_json"), py::arg("resume"), py::arg("stop_after"), py::arg("callback"));
  m.def("run_sweep", &RunSweep);
  m.def("sweep_results", &SweepResults);
  py::class_<PyTokenizer>(m, "Tokenizer")
      .def(py::init<const std::string&>())
      .def("encode", &PyTokenizer::Encode)
      .def("decode", &PyTokenizer::Decode)
      .def_property_readonly("vocab_size", &PyTokenizer::vocab_size)
      .def_property_readonly("eot_id", &PyTokenizer::eot_id)
      .def_property_readonly("name", &PyTokenizer::name);
  m.def("prepare", &Prepare);
}
