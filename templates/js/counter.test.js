// Native tests of __NAME__: `node --test` (or `npm test`).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { WordCount } from './counter.js';

/** The part of plumber:pipe/state this pipe uses, over a Map. */
class MemoryState {
  map = new Map();
  add(key, delta) {
    const n = BigInt(this.map.get(key) ?? '0') + delta;
    this.map.set(key, n.toString());
    return n;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const batch = (...values) => ({
  events: values.map((v) => ({ key: undefined, value: encoder.encode(v), timestamp: undefined, headers: [] })),
  window: undefined,
});

test('counts each word', () => {
  const state = new MemoryState();
  const pipe = new WordCount('{}');
  const out = pipe.process(batch('ada', 'bob', 'ada'), state);
  assert.deepEqual(out.map((e) => decoder.decode(e.value)), ['ada 1', 'bob 1', 'ada 2']);
  assert.deepEqual(pipe.process(batch('bob'), state).map((e) => decoder.decode(e.value)), ['bob 2']);
  assert.deepEqual([...state.map], [['ada', '2'], ['bob', '2']]);
});
