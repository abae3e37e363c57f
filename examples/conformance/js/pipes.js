// The conformance pipes' logic: plain JavaScript over a `state` object, so
// `node --test` runs it against State.memory(); app.js exports it to the host.
//
// init config `{"pipe": "transform" | "counter" | "aggregate" | "fail"}`.

import { PipeError, text } from '../../../guest-sdk/js/plumber-pipe.js';

const encoder = new TextEncoder();

/** ASCII upper case: only bytes a-z change. */
function upper(value) {
  const out = new Uint8Array(value.length);
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    out[i] = c >= 0x61 && c <= 0x7a ? c - 0x20 : c;
  }
  return out;
}

/** A string with one char per byte: equal strings for equal byte sequences. */
function byteId(value) {
  let id = '';
  for (let i = 0; i < value.length; i += 8192) {
    id += String.fromCharCode.apply(null, value.subarray(i, i + 8192));
  }
  return id;
}

/** Each event with its value upper-cased; key, timestamp and headers unchanged. */
function transform(batch) {
  return batch.events.map((e) => ({ key: e.key, value: upper(e.value), timestamp: e.timestamp, headers: e.headers }));
}

/** Per event: n = add(value, 1); emits key = value, value = "<value>=<n>". */
function counter(batch, state) {
  // One addMany for the batch (one host call; in order, so a value repeated
  // in the batch sees the additions before it). A state error fails the
  // batch, with no event index.
  const keys = batch.events.map((e) => text(e.value));
  const counts = state.addMany(keys.map((k) => [k, 1n]));
  return batch.events.map((e, i) => ({
    key: e.value,
    value: encoder.encode(`${keys[i]}=${counts[i]}`),
    timestamp: e.timestamp,
    headers: e.headers,
  }));
}

/**
 * Per distinct value of the batch (in order of first appearance) with count c:
 * total = stored total + c; emits "<start>:<end>:<value>:<c>:<total>".
 */
function aggregate(batch, state) {
  const counts = new Map(); // insertion order = order of first appearance
  for (const e of batch.events) {
    const id = byteId(e.value);
    const seen = counts.get(id);
    if (seen) seen.count += 1;
    else counts.set(id, { value: e.value, count: 1 });
  }
  const start = batch.window ? batch.window.start : 0n;
  const end = batch.window ? batch.window.end : 0n;
  const out = [];
  for (const { value, count } of counts.values()) {
    const v = text(value);
    const total = (state.getInt(v) ?? 0n) + BigInt(count);
    state.setInt(v, total);
    out.push({
      key: value,
      value: encoder.encode(`${start}:${end}:${v}:${count}:${total}`),
      timestamp: undefined,
      headers: [],
    });
  }
  return out;
}

/** Events pass unchanged; an event whose value is `bad` fails the batch at its index. */
function fail(batch) {
  batch.events.forEach((e, i) => {
    if (e.value.length === 3 && e.value[0] === 0x62 && e.value[1] === 0x61 && e.value[2] === 0x64) {
      throw new PipeError(`bad event at ${i}`, { retryable: false, eventIndex: i });
    }
  });
  return batch.events;
}

const PIPES = new Map([
  ['transform', transform],
  ['counter', counter],
  ['aggregate', aggregate],
  ['fail', fail],
]);

/** The `pipe` field of the config: '' when missing, JSON text when not a string. */
function pipeName(config) {
  let parsed;
  try {
    parsed = JSON.parse(config);
  } catch (error) {
    throw new PipeError(`invalid pipe config: ${error.message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return '';
  const name = parsed.pipe;
  if (name === undefined || name === null) return '';
  return typeof name === 'string' ? name : JSON.stringify(name);
}

/** The pipe the config selects. */
export class Conformance {
  constructor(config) {
    const name = pipeName(config);
    const run = PIPES.get(name);
    if (!run) throw new PipeError(`unknown pipe "${name}"`);
    this.name = name;
    this.run = run;
  }

  process(batch, state) {
    return this.run(batch, state);
  }
}
