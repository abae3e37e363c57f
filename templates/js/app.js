// The component's entry point: the host's imports in, `init` and `process` out.
// (componentize-js builds this file; the logic is in counter.js.)
import * as state from 'plumber:pipe/state@0.1.1';
import { WordCount } from './counter.js';

let pipe;

// An exception with an own `payload` property returns that payload as the
// WIT `pipe-error` ({ message, retryable, eventIndex }).
function pipeError(error) {
  const p = error && error.payload;
  let payload;
  if (p && typeof p.tag === 'string') {
    // A state-error from the host: { tag: 'backend' | 'invalid' | 'limit', val }.
    payload = { message: `state ${p.tag}: ${p.val}`, retryable: p.tag === 'backend', eventIndex: undefined };
  } else if (p && typeof p.message === 'string') {
    payload = p;
  } else {
    payload = { message: String(error && error.message ? error.message : error), retryable: false, eventIndex: undefined };
  }
  const thrown = new Error(payload.message);
  thrown.payload = payload;
  return thrown;
}

export function init(config) {
  try {
    pipe = new WordCount(config);
  } catch (error) {
    throw pipeError(error);
  }
}

export function process(batch) {
  try {
    return pipe.process(batch, state);
  } catch (error) {
    throw pipeError(error);
  }
}
