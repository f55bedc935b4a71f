#include "stability/train/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "stability/train/checkpoint.h"
#include "stability/train/metrics.h"
#include "stability/train/sweep.h"
#include "stability/train/sweep_tables.h"

namespace stability::train {
namespace fs = std::filesystem;
namespace {

constexpr int kMaxPoints = 400;

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Five significant digits are plenty for a chart and keep a 180-run report small.
nlohmann::json Num(const nlohmann::json& row, const std::string& key) {
  auto it = row.find(key);
  if (it == row.end() || !it->is_number()) return nlohmann::json();
  if (it->is_number_integer()) return *it;
  return std::strtod(absl::StrFormat("%.5g", it->get<double>()).c_str(), nullptr);
}

// One run's series, at most kMaxPoints per series (every k-th step, k from the planned steps).
absl::StatusOr<nlohmann::json> RunData(const std::string& run, const std::string& name) {
  absl::StatusOr<std::string> config_text = ReadText(run + "/config.json");
  if (!config_text.ok()) return config_text.status();
  const nlohmann::json config = nlohmann::json::parse(*config_text, nullptr, false);
  if (!config.is_object() || !config.contains("model")) return absl::DataLossError(run + "/config.json is not a run config");
  absl::StatusOr<MetricsFile> metrics = ReadMetrics(run + "/metrics.jsonl");
  if (!metrics.ok()) return metrics.status();
  const int64_t layers = config["model"].value("n_layer", int64_t{0});
  const int64_t planned = config["train"].value("steps", int64_t{1});
  const int64_t stride = std::max<int64_t>(1, (planned + kMaxPoints - 1) / kMaxPoints);
  nlohmann::json d = {{"name", name}, {"variant", config["model"].value("variant", "")},
                      {"lr", config["train"].value("lr", 0.0)}, {"seed", config["train"].value("seed", 0)}};
  nlohmann::json steps = nlohmann::json::array(), loss = nlohmann::json::array(), gn = nlohmann::json::array();
  nlohmann::json vsteps = nlohmann::json::array(), vloss = nlohmann::json::array();
  const char* kinds[] = {"qkv", "proj", "fc1", "fc2"};
  nlohmann::json norms = nlohmann::json::object(), logits = nlohmann::json::array();
  for (const char* k : kinds) norms[k] = nlohmann::json::array();
  for (int64_t l = 0; l < layers; ++l) {
    for (const char* k : kinds) norms[k].push_back(nlohmann::json::array());
    logits.push_back(nlohmann::json::array());
  }
  const size_t n = metrics->rows.size();
  for (size_t i = 0; i < n; ++i) {
    const nlohmann::json& row = metrics->rows[i];
    const int64_t step = row.value("step", int64_t{0});
    if (row.contains("val_loss")) {
      vsteps.push_back(step);
      vloss.push_back(Num(row, "val_loss"));
    }
    if (step % stride != 0 && i + 1 != n) continue;
    steps.push_back(step);
    loss.push_back(Num(row, "loss"));
    gn.push_back(Num(row, "grad_norm"));
    for (int64_t l = 0; l < layers; ++l) {
      for (const char* k : kinds) norms[k][l].push_back(Num(row, absl::StrCat("h.", l, ".", k, ".out_norm")));
      logits[l].push_back(Num(row, absl::StrCat("h.", l, ".attn.max_logit")));
    }
  }
  d["steps"] = steps;
  d["loss"] = loss;
  d["grad_norm"] = gn;
  d["val_steps"] = vsteps;
  d["val_loss"] = vloss;
  d["norms"] = norms;
  d["max_logit"] = logits;
  d["layers"] = layers;
  absl::StatusOr<std::string> summary_text = ReadText(run + "/summary.json");
  nlohmann::json summary = summary_text.ok() ? nlohmann::json::parse(*summary_text, nullptr, false) : nlohmann::json();
  d["finished"] = summary.is_object();
  d["diverged"] = summary.is_object() && summary.value("diverged", false);
  d["diverged_step"] = summary.is_object() ? summary["diverged_step"] : nlohmann::json();
  d["final_val_loss"] = summary.is_object() ? summary["final_val_loss"] : nlohmann::json();
  d["loss_at_init"] = summary.is_object() ? summary["loss_at_init"] : nlohmann::json();
  return d;
}

}  // namespace

absl::StatusOr<nlohmann::json> CollectReportData(const std::string& dir) {
  std::error_code ec;
  nlohmann::json data = {{"runs", nlohmann::json::array()}};
  if (fs::exists(dir + "/sweep.json", ec)) {
    absl::StatusOr<nlohmann::json> spec = ReadSweepSpec(dir);
    if (!spec.ok()) return spec.status();
    absl::StatusOr<SweepSpec> sweep = ExpandSweep(*spec);
    if (!sweep.ok()) return sweep.status();
    data["kind"] = "sweep";
    data["title"] = "Sweep " + fs::path(dir).filename().string();
    for (const SweepCell& c : sweep->cells) {
      const std::string run = dir + "/cells/" + c.name;
      if (!fs::exists(run + "/metrics.jsonl", ec)) continue;  // not started yet
      absl::StatusOr<nlohmann::json> r = RunData(run, c.name);
      if (!r.ok()) return r.status();
      (*r)["group"] = c.group;
      data["runs"].push_back(*r);
    }
    absl::StatusOr<SweepResults> results = ComputeSweepResults(*sweep, dir);
    if (!results.ok()) return results.status();
    data["tables"] = results->tables;
    data["tables"].erase("csv");
  } else if (fs::exists(dir + "/config.json", ec)) {
    data["kind"] = "run";
    data["title"] = "Run " + fs::path(dir).filename().string();
    absl::StatusOr<nlohmann::json> r = RunData(dir, fs::path(dir).filename().string());
    if (!r.ok()) return r.status();
    (*r)["group"] = (*r)["variant"];
    data["runs"].push_back(*r);
    data["tables"] = nlohmann::json::object();
  } else {
    return absl::NotFoundError(absl::StrCat(dir, " is neither a run folder (config.json) nor a sweep folder (sweep.json)"));
  }
  if (data["runs"].empty()) return absl::NotFoundError(absl::StrCat(dir, ": no run has metrics yet"));
  return data;
}

namespace {

// The page. {{CSS}}, {{UPLOT}}, {{DATA}} and {{TITLE}} are replaced.
constexpr const char* kPage = R"PAGE(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<style>{{CSS}}</style>
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px} .chart{margin:8px 0 20px}
.note{color:#666;font-size:12px} select{margin:0 12px 0 4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:12px} td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}
</style></head>
<body data-errors="[]">
<h1 id="title"></h1>
<p class="note" id="subtitle"></p>
<div><label>method<select id="group"></select></label><label>layer output<select id="kind">
<option value="qkv">QKV</option><option value="proj">Proj</option><option value="fc1">FC1</option><option value="fc2">FC2</option></select></label></div>
<h2>Training loss</h2><div class="chart" id="c_loss"></div>
<h2>Validation loss</h2><div class="chart" id="c_val"></div>
<h2>Layer output L2 norm per layer: converged vs diverged</h2>
<p class="note" id="norm_note"></p><div class="chart" id="c_norm"></div>
<h2>Maximum attention logit per layer</h2><div class="chart" id="c_logit"></div>
<div id="lr_section"><h2>Final validation loss vs learning rate</h2><p class="note">Mean over the seeds that converged; a method with no point at an LR diverged there.</p><div class="chart" id="c_lr"></div></div>
<div id="tables"></div>
<script>{{UPLOT}}</script>
<script type="application/json" id="data">{{DATA}}</script>
<script>
(function(){
const errors=[];
window.addEventListener('error',e=>{errors.push(String(e.message));document.body.dataset.errors=JSON.stringify(errors);});
const D=JSON.parse(document.getElementById('data').textContent);
const $=id=>document.getElementById(id);
$('title').textContent=D.title;
$('subtitle').textContent=D.runs.length+' run(s); drag on a chart to zoom, double-click to reset, click a legend entry to hide it.';
const palette=['#1f77b4','#d62728','#2ca02c','#ff7f0e','#9467bd','#8c564b','#e377c2','#7f7f7f','#bcbd22','#17becf'];
const groups=[...new Set(D.runs.map(r=>r.group))];
for(const g of ['(all)',...groups]){const o=document.createElement('option');o.value=g;o.textContent=g;$('group').appendChild(o);}
if(groups.length>1)$('group').value=groups[0];
const charts={};
function checkDrawn(id,u){
  const c=u.ctx.canvas;let drawn=false;
  try{const px=u.ctx.getImageData(0,0,c.width,c.height).data;for(let i=3;i<px.length;i+=4){if(px[i]!==0){drawn=true;break;}}}catch(e){errors.push(String(e));}
  $(id).dataset.drawn=drawn?'yes':'no';
  document.body.dataset.chartsDrawn=document.querySelectorAll('.chart[data-drawn="yes"]').length;
}
// Aligns [ [xs, ys], ... ] on the union of their xs (missing points are null).
function align(list){
  const xs=[...new Set(list.flatMap(s=>s[0]))].sort((a,b)=>a-b);const idx=new Map(xs.map((x,i)=>[x,i]));
  const ys=list.map(s=>{const y=new Array(xs.length).fill(null);s[0].forEach((x,i)=>{y[idx.get(x)]=s[1][i];});return y;});
  return [xs,...ys];
}
function draw(id,title,xlabel,ylabel,series,opts={}){
  if(charts[id]){charts[id].destroy();delete charts[id];}
  const el=$(id);
  if(!series.length){el.textContent='(no data)';el.dataset.drawn='empty';return;}
  const data=align(series.map(s=>[s.x,s.y]));
  const u=new uPlot({title:title,width:Math.min(1050,window.innerWidth-60),height:320,
    scales:{x:{time:false,distr:opts.logx?3:1},y:{distr:opts.logy?3:1}},
    hooks:{draw:[u=>checkDrawn(id,u)]},
    axes:[{label:xlabel},{label:ylabel,size:70}],
    series:[{label:xlabel},...series.map((s,i)=>({label:s.label,stroke:s.color||palette[i%palette.length],width:1.5,dash:s.dash,spanGaps:true,points:{show:!!opts.points}}))]},data,el);
  charts[id]=u;
}
function selected(){const g=$('group').value;return D.runs.filter(r=>g==='(all)'||r.group===g);}
// The paper's figure: a converged run at the highest LR that converged and a diverged one at the lowest LR that diverged.
function pair(runs){
  const conv=runs.filter(r=>r.finished&&!r.diverged).sort((a,b)=>b.lr-a.lr);
  const div=runs.filter(r=>r.diverged).sort((a,b)=>a.lr-b.lr);
  const out=[];if(conv.length)out.push(conv[0]);if(div.length)out.push(div[0]);
  if(!out.length&&runs.length)out.push(runs[runs.length-1]);
  return out;
}
function redraw(){
  const runs=selected();
  draw('c_loss','Training loss per step','step','loss (nats, log scale)',runs.map(r=>({label:r.name,x:r.steps,y:r.loss})),{logy:true});
  draw('c_val','Validation loss','step','loss (nats, log scale)',runs.filter(r=>r.val_steps.length).map(r=>({label:r.name,x:r.val_steps,y:r.val_loss})),{points:true,logy:true});
  const p=pair(runs),kind=$('kind').value,kname={qkv:'QKV',proj:'Proj',fc1:'FC1',fc2:'FC2'}[kind];
  $('norm_note').textContent=p.map(r=>r.name+(r.diverged?' (diverged at step '+r.diverged_step+', dashed)':' (converged, solid)')).join('; ');
  const ns=[],ls=[];
  p.forEach((r,j)=>{for(let l=0;l<r.layers;l++){
    const c=palette[l%palette.length],dash=r.diverged?[6,4]:undefined,label=(r.diverged?'diverged ':'converged ')+'layer '+l;
    ns.push({label:label,x:r.steps,y:r.norms[kind][l],color:c,dash:dash});
    ls.push({label:label,x:r.steps,y:r.max_logit[l],color:c,dash:dash});}});
  draw('c_norm',kname+' output L2 norm (mean over tokens) per layer','step','L2 norm (log scale)',ns,{logy:true});
  draw('c_logit','Maximum attention logit q·k/√d per layer (before any cap)','step','logit',ls);
}
function drawLr(){
  if(D.kind!=='sweep'){$('lr_section').style.display='none';return;}
  const lrs=[...new Set(D.runs.map(r=>r.lr))].sort((a,b)=>a-b);
  const series=groups.map(g=>{const y=lrs.map(lr=>{const v=D.runs.filter(r=>r.group===g&&r.lr===lr&&r.finished&&!r.diverged&&r.final_val_loss!=null).map(r=>r.final_val_loss);return v.length?v.reduce((a,b)=>a+b,0)/v.length:null;});return {label:g,x:lrs,y:y};});
  draw('c_lr','Final validation loss vs learning rate','learning rate (log scale)','final val loss (nats)',series,{logx:true,points:true});
}
function tables(){
  const names={divergence:'Divergence',loss:'Final validation loss (mean ± 95% over converged seeds)',sensitivity:'LR sensitivity (Wortsman et al. 2023; lower is better)',throughput:'Throughput (tokens/s) relative to the baseline'};
  for(const [key,title] of Object.entries(names)){
    const rows=(D.tables||{})[key];if(!rows||!rows.length)continue;
    const h=document.createElement('h2');h.textContent=title;$('tables').appendChild(h);
    const t=document.createElement('table'),cols=Object.keys(rows[0]);
    const tr=document.createElement('tr');cols.forEach(c=>{const th=document.createElement('th');th.textContent=c;tr.appendChild(th);});t.appendChild(tr);
    rows.forEach(r=>{const tr=document.createElement('tr');cols.forEach(c=>{const td=document.createElement('td');td.textContent=r[c];tr.appendChild(td);});t.appendChild(tr);});
    $('tables').appendChild(t);
  }
}
$('group').addEventListener('change',redraw);$('kind').addEventListener('change',redraw);
redraw();drawLr();tables();
document.body.dataset.chartsTotal=document.querySelectorAll('.chart').length-(D.kind==='sweep'?0:1);
document.body.dataset.errors=JSON.stringify(errors);
})();
</script></body></html>
)PAGE";

}  // namespace

absl::Status WriteReport(const std::string& dir, const std::string& out_html, const std::string& uplot_js,
                         const std::string& uplot_css) {
  absl::StatusOr<nlohmann::json> data = CollectReportData(dir);
  if (!data.ok()) return data.status();
  absl::StatusOr<std::string> js = ReadText(uplot_js), css = ReadText(uplot_css);
  if (!js.ok() || !css.ok()) return absl::NotFoundError(absl::StrCat("chart library missing: ", uplot_js, " (run tools/setup.sh)"));
  // JSON inside <script type="application/json">: only "</" could end the element early.
  const std::string json = absl::StrReplaceAll(
      data->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), {{"</", "<\\/"}});
  std::string title;
  for (char c : (*data)["title"].get<std::string>()) {
    if (c == '<') title += "&lt;";
    else if (c == '&') title += "&amp;";
    else title += c;
  }
  std::string page = kPage;
  // Replace the data last: the library and the data may contain "{{" themselves.
  const auto replace = [&page](const std::string& key, const std::string& value) {
    const size_t at = page.find(key);
    if (at != std::string::npos) page.replace(at, key.size(), value);
  };
  replace("{{TITLE}}", title);
  replace("{{CSS}}", *css);
  const size_t data_at = page.find("{{DATA}}");
  page.replace(data_at, 8, json);
  const size_t uplot_at = page.find("{{UPLOT}}");
  page.replace(uplot_at, 9, *js);
  return WriteFileAtomically(out_html, page);
}

}  // namespace stability::train
