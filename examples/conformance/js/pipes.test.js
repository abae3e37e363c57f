// Native tests of the conformance pipes: `node --test` in this directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { PipeError, State, batch, event, text } from '../../../guest-sdk/js/plumber-pipe.js';
import { Conformance } from './pipes.js';

const pipe = (name) => new Conformance(JSON.stringify({ pipe: name }));
const values = (events) => events.map((e) => text(e.value));
const run = (name, events, state = State.memory(), window) => pipe(name).process(batch(events, window), state);

test('transform upper-cases ASCII letters only and keeps key, timestamp and headers', () => {
  const input = event(new Uint8Array([0x61, 0x7a, 0x41, 0x5a, 0x31, 0xc3, 0xa9, 0x7b, 0x60]), {
    key: 'k',
    timestamp: 42,
    headers: [['h', 'v']],
  });
  const [out] = run('transform', [input]);
  assert.deepEqual([...out.value], [0x41, 0x5a, 0x41, 0x5a, 0x31, 0xc3, 0xa9, 0x7b, 0x60]);
  assert.equal(text(out.key), 'k');
  assert.equal(out.timestamp, 42n);
  assert.deepEqual(out.headers, [['h', 'v']]);
  assert.deepEqual(values(run('transform', [event('ada'), event('Grace Hopper!')])), ['ADA', 'GRACE HOPPER!']);
});

test('counter counts each value in state and keeps timestamp and headers', () => {
  const state = State.memory();
  const out = run('counter', [event('ada', { timestamp: 7, headers: [['a', 'b']] }), event('bob'), event('ada')], state);
  assert.deepEqual(values(out), ['ada=1', 'bob=1', 'ada=2']);
  assert.deepEqual(out.map((e) => text(e.key)), ['ada', 'bob', 'ada']);
  assert.equal(out[0].timestamp, 7n);
  assert.deepEqual(out[0].headers, [['a', 'b']]);
  assert.equal(out[1].timestamp, undefined);
  // state persists across batches
  assert.deepEqual(values(run('counter', [event('bob')], state)), ['bob=2']);
  assert.deepEqual(state.entries(), [['ada', '2'], ['bob', '2']]);
});

test('counter fails the batch on a state error (one addMany: no event index)', () => {
  assert.throws(
    () => run('counter', [event('ok'), event('x')], State.memory([['x', 'not a number']])),
    (e) => e instanceof PipeError && e.message === 'invalid state operation: value at `x` is not an integer' && e.retryable === false && e.eventIndex === undefined,
  );
});

test('counter makes one addMany call per batch and no add', () => {
  const state = State.memory();
  const calls = [];
  const backend = state.backend;
  const add = backend.add.bind(backend);
  const addMany = backend.addMany.bind(backend);
  backend.add = (k, d) => (calls.push('add'), add(k, d));
  // MemoryBackend.addMany applies through add: count the call once.
  backend.addMany = (ops) => {
    calls.push('addMany');
    const before = calls.length;
    const out = addMany(ops);
    calls.length = before;
    return out;
  };
  assert.deepEqual(values(run('counter', [event('a'), event('b'), event('a')], state)), ['a=1', 'b=1', 'a=2']);
  assert.deepEqual(calls, ['addMany']);
});

test('aggregate counts distinct values in order of first appearance with running totals', () => {
  const state = State.memory();
  const window = { start: 1000, end: 2000 };
  const out = run('aggregate', ['b', 'a', 'b', 'c', 'a', 'b'].map((v) => event(v, { timestamp: 5, headers: [['x', 'y']] })), state, window);
  assert.deepEqual(values(out), ['1000:2000:b:3:3', '1000:2000:a:2:2', '1000:2000:c:1:1']);
  assert.deepEqual(out.map((e) => text(e.key)), ['b', 'a', 'c']);
  for (const e of out) {
    assert.equal(e.timestamp, undefined);
    assert.deepEqual(e.headers, []);
  }
  // no window: 0:0; totals continue from state
  assert.deepEqual(values(run('aggregate', [event('a'), event('d')], state)), ['0:0:a:1:3', '0:0:d:1:1']);
  assert.deepEqual(state.entries(), [['a', '3'], ['b', '3'], ['c', '1'], ['d', '1']]);
  assert.deepEqual(run('aggregate', [], state, window), []);
});

test('aggregate reports a stored total that is not an integer', () => {
  const state = State.memory([['a', 'x']]);
  assert.throws(() => run('aggregate', [event('a')], state), (e) => e instanceof PipeError && /not an integer/.test(e.message) && !e.retryable);
});

test('values that are not UTF-8: state keys and text use U+FFFD, keys keep the bytes', () => {
  const hex = (b) => Buffer.from(b).toString('hex');
  const state = State.memory();
  let out = run('counter', [event(new Uint8Array([0xff, 0x61])), event(new Uint8Array([0xfe, 0x61]))], state);
  assert.deepEqual(out.map((e) => [hex(e.key), text(e.value)]), [['ff61', '\ufffda=1'], ['fe61', '\ufffda=2']]);
  out = run('aggregate', [new Uint8Array([0xff]), new Uint8Array([0xfe]), new Uint8Array([0xff])].map((v) => event(v)), State.memory());
  assert.deepEqual(out.map((e) => [hex(e.key), text(e.value)]), [['ff', '0:0:\ufffd:2:2'], ['fe', '0:0:\ufffd:1:3']]);
});

test('fail passes events through unchanged until a bad one', () => {
  const input = [event('ok', { key: 'k', timestamp: 1, headers: [['h', 'v']] }), event('fine')];
  assert.deepEqual(run('fail', input), input);
  assert.throws(
    () => run('fail', [event('ok'), event('also ok'), event('bad'), event('bad')]),
    (e) => e instanceof PipeError && e.message === 'bad event at 2' && e.retryable === false && e.eventIndex === 2,
  );
  assert.deepEqual(values(run('fail', [event('bad!'), event('BAD')])), ['bad!', 'BAD']);
});

test('an unknown or missing pipe fails init', () => {
  const error = (config) => {
    try {
      new Conformance(config);
    } catch (e) {
      assert.ok(e instanceof PipeError);
      assert.equal(e.retryable, false);
      return e.message;
    }
    assert.fail('init accepted ' + config);
  };
  assert.equal(error('{"pipe":"nope"}'), 'unknown pipe "nope"');
  assert.equal(error('{}'), 'unknown pipe ""');
  assert.equal(error('{"pipe":null}'), 'unknown pipe ""');
});
