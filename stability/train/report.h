// `stability report`: one self-contained HTML file (uPlot and the data inlined; no network,
// no server) for a run folder or a sweep folder, with interactive charts: training and
// validation loss per run; the output L2 norm of QKV, Proj, FC1 and FC2 per layer over
// steps for a converged and a diverged run (the paper's figure); the maximum attention
// logit per layer; final validation loss against learning rate per method (log x); and the
// sweep's tables. Every name from the data is inserted as text, never as HTML.
//
// The page marks each chart container data-drawn="yes" once its canvas has non-blank
// pixels and records script errors in <body data-errors>, so a headless browser can check
// it (tests/report).
#ifndef STABILITY_TRAIN_REPORT_H_
#define STABILITY_TRAIN_REPORT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace stability::train {

// The data the page draws, from a run or sweep folder.
absl::StatusOr<nlohmann::json> CollectReportData(const std::string& dir);

absl::Status WriteReport(const std::string& dir, const std::string& out_html, const std::string& uplot_js,
                         const std::string& uplot_css);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_REPORT_H_
