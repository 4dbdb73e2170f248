// report.html: one self-contained page (no network, no external scripts,
// fonts or styles). The report data travels inside it as JSON and inline
// JavaScript draws the per-layer cosine chart and table and one histogram
// per worst layer as SVG, so the page works from a file:// URL or an
// artifact store alike.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace quantd::report {

// `page` holds quant_type, rounds, layers, worst_layers (with histograms),
// output_summary and suggested_skip_quant_node as report.json spells them.
std::string RenderReportHtml(const nlohmann::json& page);

}  // namespace quantd::report
