// Helpers for plumber pipes written in JavaScript (WIT package plumber:pipe@0.1.1).
//
// This module never imports the `plumber:pipe/*` interfaces itself, so it
// loads both inside a component (built by componentize-js) and in Node (unit
// tests). A pipe is laid out in two files:
//
//   pipe logic (e.g. counter.js)  imports this module; a class whose
//                                 `process(batch, state)` takes the state as
//                                 an argument. Tested with `node --test`
//                                 against `State.memory()`.
//   app.js                        the component's entry: imports the host's
//                                 interfaces and exports `init` / `process`:
//
//     import * as hostState from 'plumber:pipe/state@0.1.1';
//     import { log as hostLog } from 'plumber:pipe/log@0.1.1';
//     import { exportPipe } from './plumber-pipe.js';
//     import { Counter } from './counter.js';
//     export const { init, process } = exportPipe(Counter, { hostState, hostLog });
//
// Types as the component model hands them to JavaScript (jco conventions):
//   event   { key: Uint8Array | undefined, value: Uint8Array,
//             timestamp: bigint | undefined, headers: [string, string][] }
//   batch   { events: event[], window: { start: bigint, end: bigint,
//             key: Uint8Array | undefined } | undefined }
//   s64/u64 are BigInt: `state.add` returns a bigint, timestamps are bigints.
//
// Only relative imports work inside a component (no node_modules lookup), so
// copy this file next to your pipe, or import it by a relative path that
// stays under the directory componentize-js is run from.

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8'); // not fatal: invalid bytes become U+FFFD

const tag = (value) => Object.prototype.toString.call(value);

/**
 * Whether `value` is a Uint8Array. Inside a component the arrays the host
 * hands in come from another realm: `instanceof Uint8Array` is false for
 * them, so check the tag instead.
 */
export function isBytes(value) {
  return value instanceof Uint8Array || (ArrayBuffer.isView(value) && tag(value) === '[object Uint8Array]');
}

/** UTF-8 bytes of a string; a Uint8Array is returned as it is. */
export function bytes(value) {
  if (isBytes(value)) return value;
  if (typeof value === 'string') return encoder.encode(value);
  if (tag(value) === '[object ArrayBuffer]' || Array.isArray(value)) return new Uint8Array(value);
  throw new TypeError(`expected a string or a Uint8Array, got ${tag(value)}`);
}

/** Text of UTF-8 bytes; invalid sequences become U+FFFD (like Rust's `from_utf8_lossy`). */
export function text(value) {
  return typeof value === 'string' ? value : decoder.decode(value);
}

/** Byte-wise equality of two Uint8Arrays. */
export function bytesEqual(a, b) {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** An event; `value` and `key` may be strings (UTF-8 encoded) or Uint8Arrays. */
export function event(value, { key, timestamp, headers } = {}) {
  return {
    key: key === undefined || key === null ? undefined : bytes(key),
    value: bytes(value),
    timestamp: timestamp === undefined || timestamp === null ? undefined : BigInt(timestamp),
    headers: headers ? headers.map(([k, v]) => [String(k), String(v)]) : [],
  };
}

/** A batch, optionally with the window it came from (`{start, end, key}`). */
export function batch(events, window) {
  return {
    events,
    window: window
      ? {
          start: BigInt(window.start),
          end: BigInt(window.end),
          key: window.key === undefined || window.key === null ? undefined : bytes(window.key),
        }
      : undefined,
  };
}

/**
 * A pipe's failure; thrown from `init` or `process` it becomes the WIT
 * `pipe-error` (`exportPipe` does the conversion).
 */
export class PipeError extends Error {
  constructor(message, { retryable = false, eventIndex } = {}) {
    super(message);
    this.name = 'PipeError';
    this.retryable = retryable;
    this.eventIndex = eventIndex;
  }

  /** The same error, pointing at the event at `index` in the batch. */
  atEvent(index) {
    this.eventIndex = index;
    return this;
  }

  /** The WIT `pipe-error` record. */
  toWit() {
    return { message: this.message, retryable: !!this.retryable, eventIndex: this.eventIndex };
  }
}

/**
 * A failed state operation. `kind` is the WIT `state-error` case (`backend`,
 * `invalid` or `limit`), `detail` its text. As a PipeError its message and
 * retryability follow the Rust SDK: backend errors are retryable.
 */
export class StateError extends PipeError {
  constructor(kind, detail) {
    const prefix = {
      backend: 'state backend',
      invalid: 'invalid state operation',
      limit: 'state limit',
    }[kind] ?? `state error (${kind})`;
    super(`${prefix}: ${detail}`, { retryable: kind === 'backend' });
    this.name = 'StateError';
    this.kind = kind;
    this.detail = detail;
  }

  static invalid(detail) {
    return new StateError('invalid', detail);
  }
}

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const DECIMAL = /^[+-]?[0-9]+$/;

/** Parses decimal ASCII as the host does (Rust `i64::from_str`); undefined when it is not one. */
export function parseI64(value) {
  const s = typeof value === 'string' ? value : decoder.decode(value);
  if (!DECIMAL.test(s)) return undefined;
  const n = BigInt(s);
  return n < I64_MIN || n > I64_MAX ? undefined : n;
}

function toI64(key, value) {
  const n = typeof value === 'bigint' ? value : BigInt(value); // throws on non-integers
  if (n < I64_MIN || n > I64_MAX) throw StateError.invalid(`integer for \`${key}\` does not fit in 64 bits`);
  return n;
}

/**
 * A raw state backend in memory, shaped like the host's `plumber:pipe/state`
 * import (same names, bigints, errors thrown with a `payload` that is the
 * `state-error` variant), for native tests.
 */
export class MemoryBackend {
  constructor(entries = []) {
    this.map = new Map();
    for (const [k, v] of entries) this.map.set(k, bytes(v).slice());
  }

  get(key) {
    const v = this.map.get(key);
    return v === undefined ? undefined : v.slice();
  }

  getMany(keys) {
    return keys.map((k) => this.get(k));
  }

  set(key, value) {
    this.map.set(key, new Uint8Array(value));
  }

  delete(key) {
    this.map.delete(key);
  }

  add(key, delta) {
    const stored = this.map.get(key);
    let current = 0n;
    if (stored !== undefined) {
      current = parseI64(stored);
      if (current === undefined) throw componentError('invalid', `value at \`${key}\` is not an integer`);
    }
    const next = current + delta;
    if (next < I64_MIN || next > I64_MAX) throw componentError('invalid', `adding ${delta} to \`${key}\` overflows`);
    this.map.set(key, encoder.encode(next.toString()));
    return next;
  }
}

function componentError(tag, val) {
  const error = new Error(`${tag}: ${val}`);
  error.payload = { tag, val };
  return error;
}

/** A `state-error` thrown by the host (a ComponentError with `payload = {tag, val}`) as a StateError. */
function wrap(error) {
  const p = error && error.payload;
  if (p && typeof p === 'object' && typeof p.tag === 'string') return new StateError(p.tag, String(p.val));
  return error;
}

/**
 * The pipe's key/value state: the host's inside a component
 * (`State.host(hostState)`), a Map in tests (`State.memory()`). Failures throw
 * StateError, which is a PipeError, so letting them propagate out of
 * `process` reports them to the host.
 */
export class State {
  constructor(backend) {
    this.backend = backend;
  }

  /** State over the imported `plumber:pipe/state@0.1.1` namespace. */
  static host(hostState) {
    return new State(hostState);
  }

  /** An in-memory state, optionally pre-filled with `[key, string | Uint8Array]` pairs. */
  static memory(entries) {
    return new State(new MemoryBackend(entries));
  }

  /** The entries of an in-memory state as `[key, text]`, in key order (tests). */
  entries() {
    if (!(this.backend instanceof MemoryBackend)) return [];
    return [...this.backend.map.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => [k, text(v)]);
  }

  #call(f) {
    try {
      return f();
    } catch (error) {
      throw wrap(error);
    }
  }

  /** The bytes at `key`, or undefined. */
  get(key) {
    return this.#call(() => this.backend.get(key));
  }

  /** The values of many keys in one host call, in order (undefined where absent). */
  getMany(keys) {
    return this.#call(() => this.backend.getMany(keys));
  }

  /** Writes `value` (a Uint8Array, or a string written as UTF-8). */
  set(key, value) {
    const v = bytes(value);
    this.#call(() => this.backend.set(key, v));
  }

  /** Removes `key` (absent is fine). */
  delete(key) {
    this.#call(() => this.backend.delete(key));
  }

  /** Adds `delta` (number or bigint, default 1) to the integer at `key`; returns the new value as a bigint. */
  add(key, delta = 1n) {
    const d = toI64(key, delta);
    return this.#call(() => this.backend.add(key, d));
  }

  /** The UTF-8 text at `key`, or undefined; not UTF-8 is an invalid StateError. */
  getStr(key) {
    const v = this.get(key);
    if (v === undefined) return undefined;
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(v);
    } catch {
      throw StateError.invalid(`value at \`${key}\` is not UTF-8`);
    }
  }

  setStr(key, value) {
    this.set(key, encoder.encode(String(value)));
  }

  /** The integer (decimal text, as `add` writes) at `key` as a bigint, or undefined. */
  getInt(key) {
    const v = this.get(key);
    if (v === undefined) return undefined;
    const n = parseI64(v);
    if (n === undefined) throw StateError.invalid(`value at \`${key}\` is not an integer`);
    return n;
  }

  /** Writes an integer (number or bigint) as decimal text, the encoding `add` uses. */
  setInt(key, value) {
    this.set(key, encoder.encode(toI64(key, value).toString()));
  }

  /** The JSON value at `key`, or undefined. */
  getJson(key) {
    const v = this.get(key);
    if (v === undefined) return undefined;
    try {
      return JSON.parse(decoder.decode(v));
    } catch (error) {
      throw StateError.invalid(`value at \`${key}\` is not the JSON expected: ${error.message}`);
    }
  }

  /** Writes `value` as compact JSON. */
  setJson(key, value) {
    const json = JSON.stringify(value);
    if (json === undefined) throw StateError.invalid(`cannot serialise value for \`${key}\``);
    this.set(key, encoder.encode(json));
  }
}

/**
 * Makes the component's `init` and `process` exports from a pipe class.
 *
 * `PipeClass` is constructed once per instance with the pipe's config (JSON
 * text, `{}` when absent); its `process(batch, state)` returns the events to
 * pass on. A thrown PipeError becomes the WIT `pipe-error`; any other
 * exception becomes a non-retryable `pipe-error` naming it (instead of an
 * opaque trap: without WASI stdio a trap's message is lost).
 *
 * `hostState` is the `plumber:pipe/state@0.1.1` namespace; `hostLog`
 * (optional) the `log` function of `plumber:pipe/log@0.1.1`: this module's
 * `log()` and (unless `routeConsole: false`) `console.*` then write to the
 * host's log.
 */
export function exportPipe(PipeClass, { hostState, hostLog, routeConsole = true } = {}) {
  const state = hostState ? State.host(hostState) : undefined;
  if (hostLog) {
    setLogger(hostLog);
    if (routeConsole) routeConsoleToLog();
  }
  let pipe;
  return {
    init(config) {
      pipe = undefined;
      pipe = guard(() => new PipeClass(config));
    },
    process(batch) {
      if (!pipe) throw withPayload(new PipeError('process called before init'));
      if (!state) throw withPayload(new PipeError('exportPipe was not given hostState'));
      return guard(() => pipe.process(batch, state));
    },
  };
}

function withPayload(error) {
  // jco: an exception with an own `payload` property becomes the export's `err` value.
  const e = error instanceof PipeError ? error : new PipeError(describe(error));
  const thrown = new Error(e.message);
  thrown.payload = e.toWit();
  return thrown;
}

function describe(error) {
  if (error && typeof error === 'object' && typeof error.message === 'string') {
    const where = (error.stack || '').split('\n').find((l) => l.trim()) || '';
    return `unhandled ${error.name || 'Error'}: ${error.message}${where ? ` (at ${where.trim()})` : ''}`;
  }
  return `unhandled exception: ${String(error)}`;
}

function guard(f) {
  try {
    return f();
  } catch (error) {
    throw withPayload(error);
  }
}

let logger;

/**
 * Sends console.log/info/debug/warn/error to the host's log (levels info,
 * info, debug, warn, error). Without WASI stdio (`-d stdio`) the console
 * writes nowhere; `exportPipe` calls this when given `hostLog`, unless
 * `routeConsole: false`.
 */
export function routeConsoleToLog() {
  const route = (level) => (...args) =>
    log(level, args.map((a) => (typeof a === 'string' ? a : safeString(a))).join(' '), { stream: 'console' });
  globalThis.console = {
    ...globalThis.console,
    log: route('info'),
    info: route('info'),
    debug: route('debug'),
    warn: route('warn'),
    error: route('error'),
  };
}

function safeString(value) {
  try {
    return typeof value === 'bigint' ? `${value}n` : JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** Routes `log()` to the host's `log` import (done by `exportPipe` when given `hostLog`). */
export function setLogger(hostLog) {
  logger = hostLog;
}

const LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error']);

/**
 * Writes a structured log line through the host: `log('info', 'message',
 * { field: value })`. A no-op in native tests (unless `setLogger` was given
 * a function there).
 */
export function log(level, message, fields = {}) {
  if (!logger) return;
  if (!LEVELS.has(level)) throw new TypeError(`unknown log level ${level}`);
  const pairs = Array.isArray(fields) ? fields : Object.entries(fields);
  logger(level, String(message), pairs.map(([k, v]) => [String(k), String(v)]));
}
