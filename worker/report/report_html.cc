#include "worker/report/report_html.h"

namespace quantd::report {
namespace {

// The data sits in a <script> element: "<" is escaped so no node name can
// close it early, which JSON allows inside strings as \u003c.
std::string EmbeddableJson(const nlohmann::json& data) {
  std::string text = data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string escaped;
  escaped.reserve(text.size());
  for (char c : text) {
    if (c == '<') {
      escaped += "\\u003c";
    } else if (c == '>') {
      escaped += "\\u003e";
    } else if (c == '&') {
      escaped += "\\u0026";
    } else {
      escaped += c;
    }
  }
  return escaped;
}

const char* const kHead = R"HTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>quantd quantization debug report</title>
<style>
body { font-family: sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.worst td { background: #fde8e8; }
pre { background: #f4f4f4; padding: 8px; }
.legend span { display: inline-block; margin-right: 16px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }
svg text { font-size: 11px; fill: #333; }
</style>
</head>
<body>
<h1>Quantization debug report</h1>
<p id="overview"></p>
<h2>Model outputs</h2>
<table id="output-table"><thead><tr><th>Output</th><th>Mean cosine similarity</th><th>Mean relative error</th><th>Rounds</th></tr></thead><tbody></tbody></table>
<h2 id="layer-heading">Cosine similarity per quantized layer</h2>
<div id="layer-chart"></div>
<table id="layer-table"><thead><tr><th>Node</th><th>Type</th><th>Mean cosine</th><th>Rounds</th></tr></thead><tbody></tbody></table>
<h2>Worst layers</h2>
<div>Keeping these in float: <pre id="skip-line"></pre></div>
<p class="legend"><span><i class="swatch" style="background:#2b6cb0"></i>Origin</span><span><i class="swatch" style="background:#dd6b20"></i>Dequant</span></p>
<div id="histograms"></div>
<script type="application/json" id="report-data">)HTML";

const char* const kTail = R"HTML(</script>
<script>
(function () {
  var NS = 'http://www.w3.org/2000/svg';
  var data = JSON.parse(document.getElementById('report-data').textContent);
  function svg(tag, attrs, parent) {
    var el = document.createElementNS(NS, tag);
    for (var k in attrs) el.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(el);
    return el;
  }
  function text(parent, x, y, value, anchor) {
    var t = svg('text', {x: x, y: y, 'text-anchor': anchor || 'start'}, parent);
    t.textContent = value;
    return t;
  }
  function cell(row, value, numeric) {
    var td = document.createElement('td');
    td.textContent = value;
    if (numeric) td.className = 'num';
    row.appendChild(td);
  }
  function fmt(v) { return v === null || v === undefined ? 'n/a' : Number(v).toFixed(6); }

  document.getElementById('overview').textContent = data.quant_type + ', ' + data.rounds +
      ' calibration round(s), ' + data.layers.length + ' quantized layer(s). Schema ' + data.schema + '.';

  document.getElementById('layer-heading').textContent = data.layer_cosine_basis === 'weight'
      ? 'Weight cosine similarity per quantized layer (no calibration data, so no activations)'
      : 'Output cosine similarity per quantized layer, mean over rounds';
  var outputs = {};
  data.output_summary.forEach(function (r) {
    var o = outputs[r.output] || (outputs[r.output] = {cos: 0, err: 0, n: 0});
    o.cos += r.cosine_similarity || 0; o.err += r.mean_relative_error || 0; o.n += 1;
  });
  var outBody = document.querySelector('#output-table tbody');
  Object.keys(outputs).forEach(function (name) {
    var o = outputs[name], row = document.createElement('tr');
    cell(row, name); cell(row, fmt(o.cos / o.n), true); cell(row, fmt(o.err / o.n), true); cell(row, o.n, true);
    outBody.appendChild(row);
  });

  var worst = {};
  data.worst_layers.forEach(function (w) { worst[w.node] = true; });
  var lowest = 1;
  data.layers.forEach(function (l) { lowest = Math.min(lowest, l.mean_cosine); });
  // Quantized layers usually sit within 1e-4 of 1; the axis starts just
  // below the lowest one so their differences stay visible.
  var floor = Math.max(0, 1 - 1.25 * (1 - Math.min(lowest, 1 - 1e-6)));
  var barH = 18, left = 220, width = 460;
  var chart = svg('svg', {id: 'layer-cosine-chart', width: left + width + 80, height: data.layers.length * barH + 30},
                  document.getElementById('layer-chart'));
  data.layers.forEach(function (l, i) {
    var y = 20 + i * barH;
    var w = Math.max(1, (l.mean_cosine - floor) / (1 - floor || 1) * width);
    text(chart, left - 6, y + 12, l.node, 'end');
    var bar = svg('rect', {x: left, y: y + 2, width: w, height: barH - 4, 'class': 'cos-bar',
                           fill: worst[l.node] ? '#c53030' : '#2b6cb0'}, chart);
    bar.setAttribute('data-node', l.node);
    text(chart, left + w + 4, y + 12, fmt(l.mean_cosine));
  });
  text(chart, left, 12, 'cosine axis from ' + floor.toFixed(6) + ' to 1');

  var body = document.querySelector('#layer-table tbody');
  data.layers.forEach(function (l) {
    var row = document.createElement('tr');
    if (worst[l.node]) row.className = 'worst';
    cell(row, l.node); cell(row, l.node_type); cell(row, fmt(l.mean_cosine), true); cell(row, l.rounds, true);
    body.appendChild(row);
  });

  document.getElementById('skip-line').textContent = data.suggested_skip_quant_node || '(nothing to suggest)';

  var holder = document.getElementById('histograms');
  data.worst_layers.forEach(function (w) {
    var title = document.createElement('h3');
    title.textContent = w.node + ' (' + w.node_type + '), mean ' + data.layer_cosine_basis + ' cosine ' +
        fmt(w.mean_cosine);
    holder.appendChild(title);
    var h = w.histogram;
    if (!h) { var note = document.createElement('p'); note.textContent = 'no activations (no calibration data)';
              holder.appendChild(note); return; }
    var W = 520, H = 180, pad = 30;
    var plot = svg('svg', {width: W + 2 * pad, height: H + 2 * pad, 'class': 'histogram'}, holder);
    plot.setAttribute('data-node', w.node);
    // Counts on a log scale: ReLU outputs put most of their mass in the
    // zero bin, which would flatten everything else.
    var peak = 1;
    h.origin.concat(h.dequant).forEach(function (c) { peak = Math.max(peak, Math.log(1 + c)); });
    var bins = h.origin.length, bw = W / bins;
    [['origin', '#2b6cb0'], ['dequant', '#dd6b20']].forEach(function (series) {
      var d = 'M' + pad + ' ' + (pad + H);
      h[series[0]].forEach(function (c, i) {
        var y = pad + H - Math.log(1 + c) / peak * H;
        d += ' L' + (pad + i * bw) + ' ' + y + ' L' + (pad + (i + 1) * bw) + ' ' + y;
      });
      d += ' L' + (pad + W) + ' ' + (pad + H);
      svg('path', {d: d, fill: series[1], 'fill-opacity': 0.25, stroke: series[1], 'class': 'hist-' + series[0]}, plot);
    });
    svg('line', {x1: pad, y1: pad + H, x2: pad + W, y2: pad + H, stroke: '#333'}, plot);
    text(plot, pad, pad + H + 16, Number(h.lo).toPrecision(4));
    text(plot, pad + W, pad + H + 16, Number(h.hi).toPrecision(4), 'end');
    text(plot, pad + W / 2, pad + H + 16, h.tensor + ' (count, log scale)', 'middle');
  });
  document.body.setAttribute('data-rendered', 'true');
})();
</script>
</body>
</html>
)HTML";

}  // namespace

std::string RenderReportHtml(const nlohmann::json& page) {
  return kHead + EmbeddableJson(page) + kTail;
}

}  // namespace quantd::report
