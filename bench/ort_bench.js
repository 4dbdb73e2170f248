#!/usr/bin/env node
'use strict';
/*
 * ONNX Runtime side of the quantd throughput benchmark.
 *
 *   node bench/ort_bench.js --model M.onnx --batch B [--threads T]
 *                           [--warmup W] [--iters N] [--min-seconds S]
 *
 * Feeds every float input a deterministic pseudo-random tensor (the same
 * generator as quantd_bench, so both sides see identical values), with the
 * first dynamic dimension set to B. Prints one JSON line:
 *   ms_per_batch     median wall time of one session.run over the timed runs
 *   mean_ms          mean of the same runs
 *   rss_node_kb      maxRSS of the bare node process (before loading ORT)
 *   rss_baseline_kb  maxRSS after loading the ORT add-on, before the session
 *                    exists: the fixed cost of the runtime, which the report
 *                    subtracts from the peak
 *   rss_peak_kb      maxRSS at the end
 *   checksum         sum of every output element after the last run
 *
 * Session settings match tests/peer/ort_eval.js: CPU provider, graph
 * optimisation 'all', sequential execution, intra-op threads T (default 1).
 */

const path = require('path');
const fs = require('fs');

const rssNodeKb = process.resourceUsage().maxRSS;

function parseArgs(argv) {
  const opts = {threads: 1, warmup: 0, iters: 0, 'min-seconds': 1.0};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument '${arg}'`);
    const name = arg.slice(2);
    const value = argv[++i];
    if (name === 'model') opts.model = value;
    else if (name === 'min-seconds') opts[name] = parseFloat(value);
    else if (['batch', 'threads', 'warmup', 'iters'].includes(name)) opts[name] = parseInt(value, 10);
    else throw new Error(`unknown option '${arg}'`);
  }
  if (!opts.model || !(opts.batch >= 1) || !(opts.threads >= 1)) {
    throw new Error('usage: ort_bench.js --model M.onnx --batch B [--threads T] [--warmup W] [--iters N]');
  }
  return opts;
}

// 32-bit LCG (Numerical Recipes constants); value = top 24 bits / 2^24, in
// [0, 1). quantd_bench implements the identical sequence.
function fillRandom(buf, seed) {
  let x = seed >>> 0;
  for (let i = 0; i < buf.length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    buf[i] = (x >>> 8) / 16777216;
  }
}

function median(values) {
  const s = values.slice().sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(opts.model)) throw new Error(`model file not found: ${opts.model}`);
  const peerDir = path.join(__dirname, '..', 'tests', 'peer');
  const ort = require(require.resolve('onnxruntime-node', {paths: [peerDir]}));
  const rssBaselineKb = process.resourceUsage().maxRSS;

  const session = await ort.InferenceSession.create(path.resolve(opts.model), {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: opts.threads,
    interOpNumThreads: opts.threads,
    logSeverityLevel: 3,
  });

  const feeds = {};
  session.inputNames.forEach((name, index) => {
    const meta = session.inputMetadata[index];
    if (!meta || !meta.isTensor || meta.type !== 'float32') {
      throw new Error(`input '${name}' is not a float32 tensor; the benchmark feeds float inputs only`);
    }
    let batchSet = false;
    const dims = Array.from(meta.shape).map((d) => {
      if (typeof d === 'number' && d > 0) return d;
      if (batchSet) throw new Error(`input '${name}' has more than one dynamic dimension`);
      batchSet = true;
      return opts.batch;
    });
    const count = dims.reduce((a, b) => a * b, 1);
    const data = new Float32Array(count);
    fillRandom(data, 12345 + index);
    feeds[name] = new ort.Tensor('float32', data, dims);
  });

  const runOnce = async () => {
    const results = await session.run(feeds);
    return results;
  };

  const warmup = opts.warmup > 0 ? opts.warmup : (opts.batch >= 16 ? 3 : 20);
  for (let i = 0; i < warmup; i++) await runOnce();

  const minIters = opts.iters > 0 ? opts.iters : (opts.batch >= 16 ? 10 : 100);
  const times = [];
  let last = null;
  const start = process.hrtime.bigint();
  while (true) {
    const t0 = process.hrtime.bigint();
    last = await runOnce();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    if (times.length >= minIters && elapsed >= opts['min-seconds']) break;
  }
  let checksum = 0;
  for (const name of session.outputNames) {
    const t = last[name];
    for (let i = 0; i < t.data.length; i++) checksum += Number(t.data[i]);
  }
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  const report = {
    side: 'ort',
    model: opts.model,
    batch: opts.batch,
    threads: opts.threads,
    iterations: times.length,
    ms_per_batch: median(times),
    mean_ms: mean,
    rss_node_kb: rssNodeKb,
    rss_baseline_kb: rssBaselineKb,
    rss_peak_kb: process.resourceUsage().maxRSS,
    checksum,
  };
  if (session.release) await session.release();
  process.stdout.write(JSON.stringify(report) + '\n');
}

main().catch((e) => {
  process.stderr.write(`ort_bench: error: ${e && e.message ? e.message : e}\n`);
  process.exit(1);
});
