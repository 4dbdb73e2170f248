#!/usr/bin/env node
'use strict';
/*
 * ONNX Runtime (CPU, onnxruntime-node) reference peer for the quantd tests
 * and benchmarks.
 *
 *   node ort_eval.js eval  --model M.onnx [--reference R.onnx] [--count N]
 *                          [--offset K] [--batch B] [--threads T]
 *                          [--input-name NAME] [--output-name NAME]
 *                          [--optimized-model-path P]
 *   node ort_eval.js run   --model M.onnx --input NAME=FILE.npy [...]
 *                          --out DIR [--threads T] [--optimized-model-path P]
 *   node ort_eval.js check --model M.onnx [--optimized-model-path P]
 *
 * eval  Runs Fashion-MNIST t10k images K..K+N-1 (default: all 10000) through
 *       the model: float32 pixel/255 shaped [B,1,28,28] (or [B,784] for a
 *       rank-2 input) fed to the first input (or --input-name); the first
 *       output (or --output-name) is taken as the logits.  Prints one JSON
 *       line: model, count, accuracy and, with --reference, reference_accuracy,
 *       top1_agreement, max_abs_diff, mean_cosine, min_cosine.  Models with a
 *       fixed batch dimension are run in chunks of that size (one image at a
 *       time for a batch of 1; a short final chunk is zero-padded).
 * run   Runs the model once on the given .npy inputs and writes every output
 *       to DIR/<output_name>.npy; prints one JSON line describing them.
 * check Creates the session and prints {"ok":true,"inputs":[...],
 *       "outputs":[...],...}.
 *
 * Sessions use graphOptimizationLevel 'all', executionMode 'sequential' and
 * intra/inter-op thread counts of --threads (default 1).
 * --optimized-model-path makes ORT save its optimized graph there (applies to
 * --model only, not to --reference).
 *
 * The data directory defaults to /usr/share/datasets/fashion-mnist and can be
 * overridden with the QUANTD_FASHION_MNIST_DIR environment variable.
 * Any error: message on stderr, exit status 1.
 */

const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

const DEFAULT_DATA_DIR = '/usr/share/datasets/fashion-mnist';

const USAGE = `usage:
  node ort_eval.js eval  --model M.onnx [--reference R.onnx] [--count N] [--offset K]
                         [--batch B] [--threads T] [--input-name NAME] [--output-name NAME]
                         [--optimized-model-path P]
  node ort_eval.js run   --model M.onnx --input NAME=FILE.npy [--input ...] --out DIR
                         [--threads T] [--optimized-model-path P]
  node ort_eval.js check --model M.onnx [--threads T] [--optimized-model-path P]
`;

class UsageError extends Error {}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

const OPTION_SPEC = {
  'model': 'string',
  'reference': 'string',
  'count': 'int',
  'offset': 'int',
  'batch': 'int',
  'threads': 'int',
  'input-name': 'string',
  'output-name': 'string',
  'optimized-model-path': 'string',
  'input': 'list',
  'out': 'string',
};

function parseArgs(argv) {
  if (argv.length === 0) throw new UsageError('no command given');
  if (argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    return {command: 'help', opts: {}};
  }
  const command = argv[0];
  const opts = {input: []};
  for (let i = 1; i < argv.length; i++) {
    let arg = argv[i];
    if (arg === '--help' || arg === '-h') return {command: 'help', opts: {}};
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument '${arg}'`);
    arg = arg.slice(2);
    let value;
    const eq = arg.indexOf('=');
    // "--input NAME=FILE" keeps its '=': only split "--opt=value" for known option names.
    if (eq > 0 && OPTION_SPEC[arg.slice(0, eq)] !== undefined) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const kind = OPTION_SPEC[arg];
    if (kind === undefined) throw new UsageError(`unknown option '--${arg}'`);
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`option '--${arg}' needs a value`);
      value = argv[++i];
    }
    if (kind === 'int') {
      if (!/^[0-9]+$/.test(value)) throw new UsageError(`option '--${arg}' needs a non-negative integer, got '${value}'`);
      opts[arg] = parseInt(value, 10);
    } else if (kind === 'list') {
      opts[arg].push(value);
    } else {
      opts[arg] = value;
    }
  }
  return {command, opts};
}

function requireOpt(opts, name) {
  if (opts[name] === undefined || opts[name] === '') throw new UsageError(`missing required option '--${name}'`);
  return opts[name];
}

// ---------------------------------------------------------------------------
// ONNX Runtime
// ---------------------------------------------------------------------------

let ortModule = null;
function ort() {
  if (ortModule === null) ortModule = require('onnxruntime-node');
  return ortModule;
}

function sessionOptions(opts, withOptimizedPath) {
  const threads = opts.threads === undefined ? 1 : opts.threads;
  if (threads < 1) throw new UsageError('--threads must be >= 1');
  const so = {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: threads,
    interOpNumThreads: threads,
  };
  if (withOptimizedPath && opts['optimized-model-path']) {
    so.optimizedModelFilePath = path.resolve(opts['optimized-model-path']);
  }
  return so;
}

async function createSession(modelPath, so) {
  if (!fs.existsSync(modelPath)) throw new Error(`model file not found: ${modelPath}`);
  try {
    return await ort().InferenceSession.create(path.resolve(modelPath), so);
  } catch (e) {
    throw new Error(`failed to create session for ${modelPath}: ${e && e.message ? e.message : e}`);
  }
}

function metadataList(session, which) {
  const names = which === 'input' ? session.inputNames : session.outputNames;
  const meta = (which === 'input' ? session.inputMetadata : session.outputMetadata) || [];
  return names.map((name, i) => {
    const m = meta[i];
    if (m && m.isTensor) return {name, type: m.type, shape: Array.from(m.shape)};
    return {name, type: m && m.isTensor === false ? 'non-tensor' : 'unknown', shape: null};
  });
}

// ---------------------------------------------------------------------------
// Fashion-MNIST
// ---------------------------------------------------------------------------

function readIdx(file) {
  let data;
  try {
    data = zlib.gunzipSync(fs.readFileSync(file));
  } catch (e) {
    throw new Error(`cannot read ${file}: ${e.message}`);
  }
  if (data.length < 4 || data[0] !== 0 || data[1] !== 0 || data[2] !== 0x08) {
    throw new Error(`${file}: not an unsigned-byte IDX file`);
  }
  const ndim = data[3];
  const dims = [];
  for (let i = 0; i < ndim; i++) dims.push(data.readUInt32BE(4 + 4 * i));
  const offset = 4 + 4 * ndim;
  const count = dims.reduce((a, b) => a * b, 1);
  if (data.length - offset !== count) throw new Error(`${file}: size mismatch`);
  return {dims, data: data.subarray(offset)};
}

function loadFashionTest() {
  const dir = process.env.QUANTD_FASHION_MNIST_DIR || DEFAULT_DATA_DIR;
  const images = readIdx(path.join(dir, 't10k-images-idx3-ubyte.gz'));
  const labels = readIdx(path.join(dir, 't10k-labels-idx1-ubyte.gz'));
  if (images.dims.length !== 3 || images.dims[1] !== 28 || images.dims[2] !== 28 ||
      labels.dims.length !== 1 || labels.dims[0] !== images.dims[0]) {
    throw new Error(`unexpected Fashion-MNIST shapes in ${dir}`);
  }
  return {count: images.dims[0], pixels: images.data, labels: labels.data};
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

function pickName(names, wanted, what, modelPath) {
  if (wanted !== undefined) {
    if (!names.includes(wanted)) {
      throw new Error(`${modelPath}: no ${what} named '${wanted}' (has: ${names.join(', ')})`);
    }
    return wanted;
  }
  if (names.length === 0) throw new Error(`${modelPath}: model has no ${what}s`);
  return names[0];
}

// Works out how images must be laid out for the model's image input.
function imageInputPlan(session, inputName, modelPath, requestedBatch) {
  const idx = session.inputNames.indexOf(inputName);
  const meta = (session.inputMetadata || [])[idx];
  let shape = null;
  if (meta && meta.isTensor) {
    if (meta.type !== 'float32') {
      throw new Error(`${modelPath}: input '${inputName}' has type ${meta.type}, expected float32`);
    }
    if (meta.shape && meta.shape.length > 0) shape = Array.from(meta.shape);
  }
  let rank = 4;
  let fixedBatch = 0;
  if (shape !== null) {
    rank = shape.length;
    const tail = rank === 4 ? [1, 28, 28] : rank === 2 ? [784] : null;
    if (tail === null) {
      throw new Error(`${modelPath}: input '${inputName}' has shape [${shape}], expected [N,1,28,28] or [N,784]`);
    }
    for (let i = 0; i < tail.length; i++) {
      const d = shape[i + 1];
      if (typeof d === 'number' && d > 0 && d !== tail[i]) {
        throw new Error(`${modelPath}: input '${inputName}' has shape [${shape}], expected [N,${tail}]`);
      }
    }
    if (typeof shape[0] === 'number' && shape[0] > 0) fixedBatch = shape[0];
  }
  const batch = fixedBatch > 0 ? fixedBatch : requestedBatch;
  return {rank, batch, padded: fixedBatch > 0};
}

async function runImages(session, modelPath, opts, data, offset, count) {
  const inputName = pickName(session.inputNames, opts['input-name'], 'input', modelPath);
  const outputName = pickName(session.outputNames, opts['output-name'], 'output', modelPath);
  const requested = opts.batch === undefined ? 100 : opts.batch;
  if (requested < 1) throw new UsageError('--batch must be >= 1');
  const plan = imageInputPlan(session, inputName, modelPath, requested);
  const Tensor = ort().Tensor;
  const px = 28 * 28;
  let logits = null;
  let classes = 0;
  const start = process.hrtime.bigint();
  for (let first = 0; first < count; first += plan.batch) {
    const n = Math.min(plan.batch, count - first);
    const rows = plan.padded ? plan.batch : n;
    const buf = new Float32Array(rows * px);
    const src = data.pixels.subarray((offset + first) * px, (offset + first + n) * px);
    for (let i = 0; i < src.length; i++) buf[i] = src[i] / 255;
    const dims = plan.rank === 4 ? [rows, 1, 28, 28] : [rows, px];
    const feeds = {[inputName]: new Tensor('float32', buf, dims)};
    let results;
    try {
      results = await session.run(feeds, [outputName]);
    } catch (e) {
      throw new Error(`${modelPath}: inference failed: ${e && e.message ? e.message : e}`);
    }
    const out = results[outputName];
    if (!out || out.type !== 'float32') {
      throw new Error(`${modelPath}: output '${outputName}' is ${out ? out.type : 'missing'}, expected float32`);
    }
    if (out.dims.length < 1 || out.dims[0] !== rows) {
      throw new Error(`${modelPath}: output '${outputName}' has shape [${out.dims}], expected a leading batch of ${rows}`);
    }
    const per = out.data.length / rows;
    if (logits === null) {
      if (per < 1) throw new Error(`${modelPath}: output '${outputName}' is empty`);
      classes = per;
      logits = new Float32Array(count * classes);
    } else if (per !== classes) {
      throw new Error(`${modelPath}: output '${outputName}' changed size between batches`);
    }
    logits.set(out.data.subarray(0, n * classes), first * classes);
    for (const k of Object.keys(results)) if (results[k].dispose) results[k].dispose();
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return {logits, classes, seconds, inputName, outputName, batch: plan.batch};
}

function argmax(v, base, n) {
  let best = 0;
  let bestVal = v[base];
  for (let j = 1; j < n; j++) {
    const x = v[base + j];
    if (x > bestVal || (bestVal !== bestVal && x === x)) { best = j; bestVal = x; }
  }
  return best;
}

function accuracy(res, labels, offset, count) {
  let correct = 0;
  for (let i = 0; i < count; i++) {
    if (argmax(res.logits, i * res.classes, res.classes) === labels[offset + i]) correct++;
  }
  return correct / count;
}

function compare(a, b, count) {
  if (a.classes !== b.classes) {
    throw new Error(`model and reference outputs differ in size (${a.classes} vs ${b.classes} per image)`);
  }
  const c = a.classes;
  let agree = 0;
  let maxAbs = 0;
  let cosSum = 0;
  let cosMin = Infinity;
  for (let i = 0; i < count; i++) {
    const base = i * c;
    if (argmax(a.logits, base, c) === argmax(b.logits, base, c)) agree++;
    let dot = 0, na = 0, nb = 0;
    let same = true;
    for (let j = 0; j < c; j++) {
      const x = a.logits[base + j];
      const y = b.logits[base + j];
      if (x !== y) same = false;
      const d = Math.abs(x - y);
      if (d > maxAbs || d !== d) maxAbs = d !== d ? Infinity : d;
      dot += x * y;
      na += x * x;
      nb += y * y;
    }
    let cos;
    if (same || (na === 0 && nb === 0)) cos = 1;
    else if (na === 0 || nb === 0) cos = 0;
    else cos = dot / (Math.sqrt(na) * Math.sqrt(nb));
    if (cos !== cos) cos = 0;
    if (cos > 1) cos = 1;
    cosSum += cos;
    if (cos < cosMin) cosMin = cos;
  }
  return {
    top1_agreement: agree / count,
    max_abs_diff: maxAbs,
    mean_cosine: cosSum / count,
    min_cosine: cosMin,
  };
}

async function cmdEval(opts) {
  const modelPath = requireOpt(opts, 'model');
  const data = loadFashionTest();
  const offset = opts.offset === undefined ? 0 : opts.offset;
  if (offset >= data.count) throw new UsageError(`--offset ${offset} is beyond the ${data.count} test images`);
  const count = opts.count === undefined ? Math.min(10000, data.count - offset) : opts.count;
  if (count < 1) throw new UsageError('--count must be >= 1');
  if (offset + count > data.count) {
    throw new UsageError(`--offset ${offset} --count ${count} exceeds the ${data.count} test images`);
  }

  const session = await createSession(modelPath, sessionOptions(opts, true));
  const res = await runImages(session, modelPath, opts, data, offset, count);
  if (session.release) await session.release();

  const report = {
    model: modelPath,
    count,
    offset,
    batch: res.batch,
    accuracy: accuracy(res, data.labels, offset, count),
    seconds: res.seconds,
  };
  if (opts.reference !== undefined) {
    const refSession = await createSession(opts.reference, sessionOptions(opts, false));
    const refOpts = Object.assign({}, opts);
    // Names given on the command line describe --model; the reference uses its own first input/output
    // unless it has tensors of the same names.
    if (opts['input-name'] !== undefined && !refSession.inputNames.includes(opts['input-name'])) delete refOpts['input-name'];
    if (opts['output-name'] !== undefined && !refSession.outputNames.includes(opts['output-name'])) delete refOpts['output-name'];
    const ref = await runImages(refSession, opts.reference, refOpts, data, offset, count);
    if (refSession.release) await refSession.release();
    report.reference = opts.reference;
    report.reference_accuracy = accuracy(ref, data.labels, offset, count);
    Object.assign(report, compare(res, ref, count));
    report.reference_seconds = ref.seconds;
  }
  process.stdout.write(JSON.stringify(report) + '\n');
}

// ---------------------------------------------------------------------------
// .npy files (format version 1.0 written; 1.0-3.0 read; little-endian C order)
// ---------------------------------------------------------------------------

const NPY_TYPES = [
  // [ORT type, numpy descr, typed array constructor, bytes per element]
  ['float32', '<f4', Float32Array, 4],
  ['float64', '<f8', Float64Array, 8],
  ['float16', '<f2', Uint16Array, 2],
  ['int64', '<i8', BigInt64Array, 8],
  ['uint64', '<u8', BigUint64Array, 8],
  ['int32', '<i4', Int32Array, 4],
  ['uint32', '<u4', Uint32Array, 4],
  ['int16', '<i2', Int16Array, 2],
  ['uint16', '<u2', Uint16Array, 2],
  ['int8', '|i1', Int8Array, 1],
  ['uint8', '|u1', Uint8Array, 1],
  ['bool', '|b1', Uint8Array, 1],
];

function npyTypeByDescr(descr) {
  let d = descr;
  if (d.length === 3 && d[0] === '=') d = (d[2] === '1' ? '|' : '<') + d.slice(1);
  if (d.length === 3 && d[2] === '1' && d[0] === '<') d = '|' + d.slice(1);
  return NPY_TYPES.find((t) => t[1] === d);
}

function readNpy(file) {
  let buf;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new Error(`cannot read ${file}: ${e.message}`);
  }
  const magic = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]);
  if (buf.length < 10 || !buf.subarray(0, 6).equals(magic)) throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  let hlen, hstart;
  if (major === 1) { hlen = buf.readUInt16LE(8); hstart = 10; }
  else if (major === 2 || major === 3) { hlen = buf.readUInt32LE(8); hstart = 12; }
  else throw new Error(`${file}: unsupported .npy version ${major}`);
  if (hstart + hlen > buf.length) throw new Error(`${file}: truncated header`);
  const header = buf.subarray(hstart, hstart + hlen).toString(major === 3 ? 'utf8' : 'latin1');
  const descrM = /'descr'\s*:\s*'([^']*)'/.exec(header);
  const fortranM = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shapeM = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descrM || !fortranM || !shapeM) throw new Error(`${file}: malformed .npy header: ${header.trim()}`);
  if (fortranM[1] === 'True') throw new Error(`${file}: Fortran-order arrays are not supported`);
  const t = npyTypeByDescr(descrM[1]);
  if (!t) throw new Error(`${file}: unsupported dtype '${descrM[1]}' (big-endian or exotic types are not supported)`);
  const dims = shapeM[1].split(',').map((s) => s.trim()).filter((s) => s.length > 0).map((s) => {
    if (!/^[0-9]+L?$/.test(s)) throw new Error(`${file}: bad shape entry '${s}'`);
    return parseInt(s, 10);
  });
  const count = dims.reduce((a, b) => a * b, 1);
  const dataStart = hstart + hlen;
  const nbytes = count * t[3];
  if (buf.length - dataStart < nbytes) throw new Error(`${file}: expected ${nbytes} data bytes, found ${buf.length - dataStart}`);
  // Copy into a fresh, aligned ArrayBuffer.
  const ab = new ArrayBuffer(nbytes);
  new Uint8Array(ab).set(buf.subarray(dataStart, dataStart + nbytes));
  return {type: t[0], descr: t[1], dims, data: new t[2](ab)};
}

function npyBytes(type, dims, data) {
  const t = NPY_TYPES.find((x) => x[0] === type);
  if (!t) throw new Error(`cannot write tensors of type ${type} as .npy`);
  let shape = dims.join(', ');
  if (dims.length === 1) shape += ',';
  let header = `{'descr': '${t[1]}', 'fortran_order': False, 'shape': (${shape}), }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  if (header.length > 65535) throw new Error('.npy header too long');
  const pre = Buffer.alloc(10);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]).copy(pre, 0);
  pre.writeUInt16LE(header.length, 8);
  let body;
  if (type === 'bool' && !(data instanceof Uint8Array)) {
    body = Buffer.from(Array.from(data, (v) => (v ? 1 : 0)));
  } else {
    body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  }
  const expected = dims.reduce((a, b) => a * b, 1) * t[3];
  if (body.length !== expected) throw new Error(`tensor data is ${body.length} bytes, expected ${expected}`);
  return Buffer.concat([pre, Buffer.from(header, 'latin1'), body]);
}

function safeFileName(name) {
  const s = name.replace(/[\/\\\0]/g, '_');
  return s === '' || s === '.' || s === '..' ? `_${s}` : s;
}

async function cmdRun(opts) {
  const modelPath = requireOpt(opts, 'model');
  const outDir = requireOpt(opts, 'out');
  const session = await createSession(modelPath, sessionOptions(opts, true));
  const Tensor = ort().Tensor;
  const feeds = {};
  for (const spec of opts.input) {
    const eq = spec.lastIndexOf('=');
    if (eq <= 0 || eq === spec.length - 1) throw new UsageError(`--input needs NAME=FILE.npy, got '${spec}'`);
    const name = spec.slice(0, eq);
    const file = spec.slice(eq + 1);
    if (!session.inputNames.includes(name)) {
      throw new Error(`${modelPath}: no input named '${name}' (has: ${session.inputNames.join(', ')})`);
    }
    if (feeds[name] !== undefined) throw new UsageError(`input '${name}' given twice`);
    const arr = readNpy(file);
    feeds[name] = new Tensor(arr.type, arr.data, arr.dims);
  }
  const missing = session.inputNames.filter((n) => feeds[n] === undefined);
  if (missing.length > 0) throw new UsageError(`missing --input for model input(s): ${missing.join(', ')}`);

  let results;
  try {
    results = await session.run(feeds);
  } catch (e) {
    throw new Error(`${modelPath}: inference failed: ${e && e.message ? e.message : e}`);
  }
  fs.mkdirSync(outDir, {recursive: true});
  const written = [];
  for (const name of session.outputNames) {
    const t = results[name];
    if (!t) throw new Error(`${modelPath}: output '${name}' was not produced`);
    const file = path.join(outDir, safeFileName(name) + '.npy');
    fs.writeFileSync(file, npyBytes(t.type, Array.from(t.dims), t.data));
    written.push({name, type: t.type, shape: Array.from(t.dims), file});
  }
  if (session.release) await session.release();
  process.stdout.write(JSON.stringify({ok: true, model: modelPath, outputs: written}) + '\n');
}

async function cmdCheck(opts) {
  const modelPath = requireOpt(opts, 'model');
  const session = await createSession(modelPath, sessionOptions(opts, true));
  const report = {
    ok: true,
    inputs: Array.from(session.inputNames),
    outputs: Array.from(session.outputNames),
    input_metadata: metadataList(session, 'input'),
    output_metadata: metadataList(session, 'output'),
  };
  if (session.release) await session.release();
  process.stdout.write(JSON.stringify(report) + '\n');
}

// ---------------------------------------------------------------------------

async function main() {
  const {command, opts} = parseArgs(process.argv.slice(2));
  switch (command) {
    case 'help':
      process.stdout.write(USAGE);
      return;
    case 'eval':
      return cmdEval(opts);
    case 'run':
      return cmdRun(opts);
    case 'check':
      return cmdCheck(opts);
    default:
      throw new UsageError(`unknown command '${command}'`);
  }
}

function fail(e) {
  const msg = e && e.message ? e.message : String(e);
  process.stderr.write(`ort_eval: error: ${msg}\n`);
  if (e instanceof UsageError) process.stderr.write(USAGE);
  process.exitCode = 1;
}

process.on('unhandledRejection', (e) => { fail(e); process.exit(1); });

if (require.main === module) {
  main().catch(fail);
}

module.exports = {readNpy, npyBytes, parseArgs};
