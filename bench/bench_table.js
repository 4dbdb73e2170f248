#!/usr/bin/env node
'use strict';
/*
 * Formats the JSON lines written by quantd_bench and ort_bench.js (one file)
 * as the comparison table printed by run_bench.sh. Repeated measurements of
 * the same model, batch and side keep the fastest median and the lowest
 * peak memory.
 */
const fs = require('fs');
const path = require('path');

const lines = fs.readFileSync(process.argv[2], 'utf8').split('\n').filter((l) => l.trim() !== '');
const rows = new Map();  // "model|batch" -> {quantd, ort}
for (const line of lines) {
  let r;
  try {
    r = JSON.parse(line);
  } catch (e) {
    continue;
  }
  const key = `${r.model}|${r.batch}`;
  if (!rows.has(key)) rows.set(key, {model: r.model, batch: r.batch});
  const row = rows.get(key);
  const prev = row[r.side];
  if (r.error) {
    if (!prev) row[r.side] = r;
    continue;
  }
  if (!prev || prev.error) {
    row[r.side] = r;
  } else {
    prev.ms_per_batch = Math.min(prev.ms_per_batch, r.ms_per_batch);
    prev.rss_peak_kb = Math.min(prev.rss_peak_kb, r.rss_peak_kb);
    prev.net_kb = Math.min(net(prev), net(r));
  }
}

function net(r) {
  return r.net_kb !== undefined ? r.net_kb : r.rss_peak_kb - r.rss_baseline_kb;
}
const mib = (kb) => (kb / 1024).toFixed(1);

const header = ['model', 'batch', 'quantd ms/batch', 'ORT ms/batch', 'quantd/ORT throughput',
  'quantd peak MiB (net)', 'ORT peak MiB (net)', 'net mem quantd/ORT', 'checksums'];
const table = [header];
const notes = [];
for (const row of rows.values()) {
  const q = row.quantd, o = row.ort;
  const name = path.basename(row.model, '.onnx');
  if (!q || !o || q.error || o.error) {
    table.push([name, String(row.batch), q && !q.error ? q.ms_per_batch.toFixed(3) : 'failed',
      o && !o.error ? o.ms_per_batch.toFixed(3) : 'failed', '-', '-', '-', '-', '-']);
    continue;
  }
  const ratio = o.ms_per_batch / q.ms_per_batch;
  const memRatio = net(q) / net(o);
  const scale = Math.max(1, Math.abs(o.checksum));
  const agree = Math.abs(q.checksum - o.checksum) <= 1e-3 * scale ? 'agree' : `DIFFER ${q.checksum} vs ${o.checksum}`;
  table.push([name, String(row.batch), q.ms_per_batch.toFixed(3), o.ms_per_batch.toFixed(3), ratio.toFixed(2) + 'x',
    `${mib(q.rss_peak_kb)} (${mib(net(q))})`, `${mib(o.rss_peak_kb)} (${mib(net(o))})`, memRatio.toFixed(2) + 'x',
    agree]);
  notes.push(`${name} b${row.batch}: quantd baseline ${mib(q.rss_baseline_kb)} MiB; ` +
    `node ${mib(o.rss_node_kb)} MiB, node+ORT baseline ${mib(o.rss_baseline_kb)} MiB`);
}
const widths = header.map((_, i) => Math.max(...table.map((r) => r[i].length)));
const fmt = (r) => r.map((c, i) => (i < 1 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
console.log(fmt(table[0]));
console.log(widths.map((w) => '-'.repeat(w)).join('  '));
for (const r of table.slice(1)) console.log(fmt(r));
console.log('');
console.log('throughput ratio = ORT ms / quantd ms (>1: quantd faster); net = peak RSS - baseline RSS');
for (const n of notes) console.log('  ' + n);
