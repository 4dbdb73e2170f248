#!/usr/bin/env node
'use strict';
/*
 * Times InferenceSession.run of ONNX Runtime (CPU, onnxruntime-node from
 * tests/peer) on real Fashion-MNIST images, for one or more models in the
 * same process.
 *
 *   node bench/ort_speed.js --model A.onnx [--model B.onnx ...] [--batch 32]
 *        [--threads 1] [--split test|train] [--offset 0]
 *        [--count N] [--iters 100] [--warmup 10] [--rounds 5] [--min-ms 300]
 *
 * Without --count ("batch" mode): every model runs the same batch of
 * --batch images (split images offset.. offset+batch-1); after --warmup
 * untimed runs, each round times --iters runs one by one (and keeps going
 * until the round has lasted --min-ms).  Models take turns round by round so
 * that a change in machine load hits all of them alike.  Reported per model:
 * median, mean and min milliseconds per batch over all timed runs.
 *
 * With --count N ("pass" mode): the N images are cut into ceil(N/batch)
 * batches (the last one short), all input tensors are built beforehand, one
 * untimed pass warms up, then --rounds passes are timed, summing only the
 * time spent inside session.run.  Reported per model: median and min
 * milliseconds per pass.
 *
 * Sessions: graphOptimizationLevel 'all', executionMode 'sequential',
 * intra/inter-op threads = --threads.  Input: float32 pixel/255 [B,1,28,28].
 * Prints one JSON line {mode, batch, threads, ..., results: [{model, ...}]}.
 * The data directory defaults to /usr/share/datasets/fashion-mnist
 * (QUANTD_FASHION_MNIST_DIR overrides).  Errors: message on stderr, exit 1.
 */

const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

const peerDir = path.join(__dirname, '..', 'tests', 'peer');

function fail(message) {
  process.stderr.write(`ort_speed.js: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const ints = new Set(['batch', 'threads', 'offset', 'count', 'iters', 'warmup', 'rounds', 'min-ms']);
  const opts = {model: [], batch: 32, threads: 1, split: 'test', offset: 0, count: 0,
                iters: 100, warmup: 10, rounds: 5, 'min-ms': 300};
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '');
    if (!argv[i].startsWith('--') || !(key in opts)) fail(`unknown argument '${argv[i]}'`);
    if (i + 1 >= argv.length) fail(`'${argv[i]}' needs a value`);
    const value = argv[++i];
    if (ints.has(key)) {
      if (!/^[0-9]+$/.test(value)) fail(`'--${key}' needs a non-negative integer, got '${value}'`);
      opts[key] = parseInt(value, 10);
    } else if (key === 'model') {
      opts.model.push(value);
    } else {
      opts[key] = value;
    }
  }
  if (opts.model.length === 0) fail('at least one --model is required');
  if (opts.batch < 1 || opts.threads < 1 || opts.iters < 1 || opts.rounds < 1) {
    fail('--batch, --threads, --iters and --rounds must be >= 1');
  }
  if (opts.split !== 'test' && opts.split !== 'train') fail(`--split must be test or train, got '${opts.split}'`);
  return opts;
}

// Unsigned-byte IDX images, gzip-compressed: returns {n, pixels}.
function loadImages(split) {
  const dir = process.env.QUANTD_FASHION_MNIST_DIR || '/usr/share/datasets/fashion-mnist';
  const file = path.join(dir, `${split === 'train' ? 'train' : 't10k'}-images-idx3-ubyte.gz`);
  const raw = zlib.gunzipSync(fs.readFileSync(file));
  if (raw.readUInt32BE(0) !== 0x00000803) fail(`${file}: not a 3-D unsigned-byte IDX file`);
  const n = raw.readUInt32BE(4);
  if (raw.readUInt32BE(8) !== 28 || raw.readUInt32BE(12) !== 28 || raw.length !== 16 + n * 784) {
    fail(`${file}: unexpected layout`);
  }
  return {n, pixels: raw.subarray(16)};
}

function makeTensor(ort, images, first, rows) {
  const buf = new Float32Array(rows * 784);
  const src = images.pixels.subarray(first * 784, (first + rows) * 784);
  for (let i = 0; i < src.length; i++) buf[i] = src[i] / 255;
  return new ort.Tensor('float32', buf, [rows, 1, 28, 28]);
}

function nowMs() {
  return Number(process.hrtime.bigint()) / 1e6;
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  let ort;
  try {
    ort = require(require.resolve('onnxruntime-node', {paths: [peerDir]}));
  } catch (e) {
    fail(`onnxruntime-node is not installed in ${peerDir} (./quantd.sh deps installs it)`);
  }
  const images = loadImages(opts.split);
  const needed = opts.count > 0 ? opts.count : opts.batch;
  if (opts.offset + needed > images.n) fail(`images ${opts.offset}..${opts.offset + needed - 1} are outside the ${opts.split} split`);

  const sessionOptions = {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: opts.threads,
    interOpNumThreads: opts.threads,
  };
  const sides = [];
  for (const model of opts.model) {
    if (!fs.existsSync(model)) fail(`model file not found: ${model}`);
    const session = await ort.InferenceSession.create(path.resolve(model), sessionOptions);
    sides.push({model, session, input: session.inputNames[0], times: []});
  }

  // Input batches, shared by all models.
  const batches = [];
  if (opts.count > 0) {
    for (let first = 0; first < opts.count; first += opts.batch) {
      batches.push(makeTensor(ort, images, opts.offset + first, Math.min(opts.batch, opts.count - first)));
    }
  } else {
    batches.push(makeTensor(ort, images, opts.offset, opts.batch));
  }

  const results = [];
  if (opts.count > 0) {
    for (const side of sides) {
      for (const t of batches) await side.session.run({[side.input]: t});
    }
    for (let round = 0; round < opts.rounds; round++) {
      for (const side of sides) {
        let total = 0;
        for (const t of batches) {
          const feeds = {[side.input]: t};
          const start = nowMs();
          await side.session.run(feeds);
          total += nowMs() - start;
        }
        side.times.push(total);
      }
    }
    for (const side of sides) {
      results.push({model: side.model, images: opts.count, runs_per_pass: batches.length,
                    median_ms_per_pass: +median(side.times).toFixed(4),
                    min_ms_per_pass: +Math.min(...side.times).toFixed(4)});
    }
  } else {
    const t = batches[0];
    for (const side of sides) {
      for (let i = 0; i < opts.warmup; i++) await side.session.run({[side.input]: t});
    }
    for (let round = 0; round < opts.rounds; round++) {
      for (const side of sides) {
        const feeds = {[side.input]: t};
        const roundStart = nowMs();
        for (let i = 0; i < opts.iters || nowMs() - roundStart < opts['min-ms']; i++) {
          const start = nowMs();
          await side.session.run(feeds);
          side.times.push(nowMs() - start);
        }
      }
    }
    for (const side of sides) {
      const mean = side.times.reduce((a, b) => a + b, 0) / side.times.length;
      results.push({model: side.model, runs: side.times.length,
                    median_ms_per_batch: +median(side.times).toFixed(4),
                    mean_ms_per_batch: +mean.toFixed(4),
                    min_ms_per_batch: +Math.min(...side.times).toFixed(4)});
    }
  }
  process.stdout.write(JSON.stringify({mode: opts.count > 0 ? 'pass' : 'batch', batch: opts.batch,
                                       threads: opts.threads, split: opts.split, offset: opts.offset,
                                       ort_version: ort.env && ort.env.versions ? ort.env.versions.common : undefined,
                                       results}) + '\n');
}

main().catch((e) => fail(e && e.message ? e.message : String(e)));
