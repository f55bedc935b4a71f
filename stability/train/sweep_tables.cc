#include "stability/train/sweep_tables.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "stability/train/checkpoint.h"

namespace stability::train {
namespace {

struct CellResult {
  bool finished = false, diverged = false;
  int64_t diverged_step = 0;
  double val_loss = NAN, loss_at_init = NAN, tokens_per_s = NAN;
};

CellResult ReadCell(const std::string& run) {
  CellResult r;
  std::ifstream in(run + "/summary.json");
  if (!in) return r;
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json s = nlohmann::json::parse(ss.str(), nullptr, false);
  if (!s.is_object()) return r;
  r.finished = true;
  r.diverged = s.value("diverged", false);
  if (r.diverged && s["diverged_step"].is_number()) r.diverged_step = s["diverged_step"].get<int64_t>();
  if (s["final_val_loss"].is_number()) r.val_loss = s["final_val_loss"].get<double>();
  if (s["loss_at_init"].is_number()) r.loss_at_init = s["loss_at_init"].get<double>();
  if (s["tokens_per_s"].is_number()) r.tokens_per_s = s["tokens_per_s"].get<double>();
  return r;
}

struct MeanCi {
  double mean = NAN, half = NAN;
  int n = 0;
};

MeanCi Stats(const std::vector<double>& v) {
  MeanCi m;
  m.n = static_cast<int>(v.size());
  if (v.empty()) return m;
  double s = 0;
  for (double x : v) s += x;
  m.mean = s / v.size();
  if (v.size() < 2) return m;
  double ss = 0;
  for (double x : v) ss += (x - m.mean) * (x - m.mean);
  m.half = StudentT95(m.n - 1) * std::sqrt(ss / (m.n - 1)) / std::sqrt(static_cast<double>(m.n));
  return m;
}

std::string Num(double v, int decimals = 4) { return std::isfinite(v) ? absl::StrFormat("%.*f", decimals, v) : ""; }

std::string Csv(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  const auto quote = [](const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  std::string out;
  std::vector<std::string> h;
  for (const auto& x : header) h.push_back(quote(x));
  absl::StrAppend(&out, absl::StrJoin(h, ","), "\n");
  for (const auto& r : rows) {
    std::vector<std::string> q;
    for (const auto& x : r) q.push_back(quote(x));
    absl::StrAppend(&out, absl::StrJoin(q, ","), "\n");
  }
  return out;
}

std::string Markdown(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  const auto cell = [](std::string s) {
    std::string out;
    for (char c : s) out += c == '|' ? std::string("\\|") : std::string(1, c);
    return out;
  };
  std::string out = "| ";
  for (const auto& h : header) absl::StrAppend(&out, cell(h), " | ");
  out.pop_back();
  absl::StrAppend(&out, "\n|");
  for (size_t i = 0; i < header.size(); ++i) absl::StrAppend(&out, i == 0 ? "---|" : "---:|");
  absl::StrAppend(&out, "\n");
  for (const auto& r : rows) {
    out += "| ";
    for (const auto& x : r) absl::StrAppend(&out, cell(x), " | ");
    out.pop_back();
    out += "\n";
  }
  return out;
}

nlohmann::json AsJson(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json o = nlohmann::json::object();
    for (size_t i = 0; i < header.size(); ++i) o[header[i]] = r[i];
    out.push_back(o);
  }
  return out;
}

}  // namespace

double StudentT95(int dof) {
  static const double t[] = {0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                             2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086};
  if (dof < 1) return NAN;
  if (dof <= 20) return t[dof];
  if (dof <= 30) return 2.042;
  if (dof <= 60) return 2.000;
  return 1.96;
}

absl::StatusOr<SweepResults> ComputeSweepResults(const SweepSpec& sweep, const std::string& dir) {
  // group -> lr -> seed results, in the spec's order of groups.
  std::vector<std::string> groups;
  std::map<std::string, std::map<double, std::vector<CellResult>>> by;
  std::set<double> all_lrs;
  for (const SweepCell& c : sweep.cells) {
    if (!by.count(c.group)) groups.push_back(c.group);
    by[c.group][c.lr].push_back(ReadCell(dir + "/cells/" + c.name));
    all_lrs.insert(c.lr);
  }
  const std::vector<double> lrs(all_lrs.begin(), all_lrs.end());
  const auto lr_name = [](double lr) { return absl::StrFormat("%g", lr); };
  SweepResults out;

  // 1. Divergence.
  std::vector<std::string> h1 = {"method", "converged up to", "first diverged"};
  for (double lr : lrs) h1.push_back("lr " + lr_name(lr));
  std::vector<std::vector<std::string>> r1;
  for (const std::string& g : groups) {
    double up_to = NAN, first = NAN;
    std::vector<std::string> per_lr;
    for (double lr : lrs) {
      auto it = by[g].find(lr);
      if (it == by[g].end()) {
        per_lr.push_back("");
        continue;
      }
      int n = 0, conv = 0, div = 0;
      std::vector<std::string> steps;
      for (const CellResult& r : it->second) {
        ++n;
        if (r.finished && !r.diverged) ++conv;
        if (r.diverged) {
          ++div;
          steps.push_back(absl::StrCat(r.diverged_step));
        }
      }
      if (conv == n && std::isnan(first)) up_to = lr;
      if (div > 0 && std::isnan(first)) first = lr;
      std::string s = absl::StrFormat("%d/%d converged", conv, n);
      if (div > 0) absl::StrAppend(&s, " (diverged at step ", absl::StrJoin(steps, ", "), ")");
      if (conv + div < n) absl::StrAppend(&s, ", ", n - conv - div, " unfinished");
      per_lr.push_back(s);
    }
    std::vector<std::string> row = {g, std::isnan(up_to) ? "—" : lr_name(up_to), std::isnan(first) ? "—" : lr_name(first)};
    row.insert(row.end(), per_lr.begin(), per_lr.end());
    r1.push_back(row);
  }

  // 2. Loss and perplexity.
  const std::vector<std::string> h2 = {"method", "lr", "seeds converged", "final val loss", "± 95%", "val perplexity", "± 95% ppl"};
  std::vector<std::vector<std::string>> r2;
  // 3. Sensitivity inputs.
  const std::vector<std::string> h3 = {"method", "LR sensitivity", "best final val loss", "at lr"};
  std::vector<std::vector<std::string>> r3;
  for (const std::string& g : groups) {
    std::vector<double> clipped;  // per LR: mean over seeds of min(loss, init)
    std::vector<double> clipped_lrs;
    for (double lr : lrs) {
      auto it = by[g].find(lr);
      if (it == by[g].end()) continue;
      std::vector<double> losses, ppls, mins;
      for (const CellResult& r : it->second) {
        if (r.finished && !r.diverged && std::isfinite(r.val_loss)) {
          losses.push_back(r.val_loss);
          ppls.push_back(std::exp(r.val_loss));
        }
        const double init = std::isfinite(r.loss_at_init) ? r.loss_at_init : NAN;
        mins.push_back(r.finished && !r.diverged && std::isfinite(r.val_loss) ? std::min(r.val_loss, init) : init);
      }
      const MeanCi l = Stats(losses), p = Stats(ppls);
      r2.push_back({g, lr_name(lr), absl::StrFormat("%d/%d", l.n, static_cast<int>(it->second.size())), Num(l.mean),
                    Num(l.half), Num(p.mean, 2), Num(p.half, 2)});
      const MeanCi m = Stats(mins);
      clipped.push_back(m.mean);
      clipped_lrs.push_back(lr);
    }
    double best = INFINITY, best_lr = NAN, sum = 0;
    int n = 0;
    for (size_t i = 0; i < clipped.size(); ++i) {
      if (!std::isfinite(clipped[i])) continue;
      sum += clipped[i];
      ++n;
      if (clipped[i] < best) {
        best = clipped[i];
        best_lr = clipped_lrs[i];
      }
    }
    r3.push_back({g, n > 0 ? Num(sum / n - best) : "", n > 0 ? Num(best) : "", std::isnan(best_lr) ? "" : lr_name(best_lr)});
  }

  // 4. Throughput relative to the baseline (or the first method).
  const std::vector<std::string> h4 = {"method", "tokens/s", "relative to " + (by.count("baseline") ? std::string("baseline") : groups.front())};
  std::vector<std::vector<std::string>> r4;
  std::map<std::string, double> mean_tps;
  for (const std::string& g : groups) {
    std::vector<double> v;
    for (const auto& [lr, cells] : by[g])
      for (const CellResult& r : cells)
        if (std::isfinite(r.tokens_per_s) && r.tokens_per_s > 0) v.push_back(r.tokens_per_s);
    mean_tps[g] = Stats(v).mean;
  }
  const double ref = by.count("baseline") ? mean_tps["baseline"] : mean_tps[groups.front()];
  for (const std::string& g : groups) r4.push_back({g, Num(mean_tps[g], 0), Num(mean_tps[g] / ref, 3)});

  out.tables = {{"divergence", AsJson(h1, r1)}, {"loss", AsJson(h2, r2)}, {"sensitivity", AsJson(h3, r3)},
                {"throughput", AsJson(h4, r4)}};
  out.tables["csv"] = {{"divergence", Csv(h1, r1)}, {"loss", Csv(h2, r2)}, {"sensitivity", Csv(h3, r3)},
                       {"throughput", Csv(h4, r4)}};
  out.markdown = absl::StrCat(
      "## Divergence\n\nPer method: the highest learning rate at which every seed converged, and the lowest at which "
      "any diverged.\n\n",
      Markdown(h1, r1),
      "\n## Final validation loss\n\nMean ± 95% interval (Student t) over the seeds that converged.\n\n",
      Markdown(h2, r2),
      "\n## LR sensitivity\n\nWortsman et al. 2023: mean over the LR grid of min(final val loss, loss at init) − "
      "the best on the grid; a diverged seed counts as the loss at initialisation. Lower is better.\n\n",
      Markdown(h3, r3), "\n## Throughput\n\nMean training tokens/s over each method's cells.\n\n", Markdown(h4, r4));
  return out;
}

absl::Status WriteSweepTables(const SweepSpec& sweep, const std::string& dir) {
  absl::StatusOr<SweepResults> r = ComputeSweepResults(sweep, dir);
  if (!r.ok()) return r.status();
  for (const char* t : {"divergence", "loss", "sensitivity", "throughput"}) {
    if (absl::Status s = WriteFileAtomically(absl::StrCat(dir, "/tables/", t, ".csv"), r->tables["csv"][t].get<std::string>());
        !s.ok()) {
      return s;
    }
  }
  return WriteFileAtomically(dir + "/results.md", "# Sweep results\n\n" + r->markdown);
}

}  // namespace stability::train
