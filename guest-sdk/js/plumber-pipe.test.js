// Native tests of the helpers: `node --test` in guest-sdk/js.
import { test } from 'node:test';
import vm from 'node:vm';
import assert from 'node:assert/strict';

import { PipeError, State, StateError, batch, bytes, event, exportPipe, isBytes, parseI64, text } from './plumber-pipe.js';

test('typed helpers round-trip in memory', () => {
  const state = State.memory();
  state.setStr('name', 'ada');
  assert.equal(state.getStr('name'), 'ada');
  state.setInt('n', 40);
  assert.equal(state.add('n', 2), 42n);
  assert.equal(state.add('n'), 43n);
  assert.equal(state.getInt('n'), 43n);
  state.setJson('point', [1, 'x']);
  assert.deepEqual(state.getJson('point'), [1, 'x']);
  assert.equal(text(state.get('point')), '[1,"x"]');
  assert.deepEqual(state.getMany(['name', 'absent']).map((v) => v && text(v)), ['ada', undefined]);
  state.delete('name');
  state.delete('never there');
  assert.equal(state.get('name'), undefined);
  assert.equal(state.getInt('absent'), undefined);
  assert.deepEqual(state.entries(), [['n', '43'], ['point', '[1,"x"]']]);
});

test('addMany applies in order as add would', () => {
  const ops = [['a', 1], ['b', 2n], ['a', 1], ['c', -5], ['a', 3n]];
  const many = State.memory([['b', '10']]);
  const one = State.memory([['b', '10']]);
  assert.deepEqual(many.addMany(ops), ops.map(([k, d]) => one.add(k, d)));
  assert.deepEqual(many.entries(), one.entries());
  assert.deepEqual(many.addMany([]), []);
  // Checked before anything is applied.
  assert.throws(() => many.addMany([['a', 1], [7, 1]]), TypeError);
  assert.throws(() => many.addMany([['a', 1], ['b', 2n ** 70n]]), (e) => e instanceof StateError && e.kind === 'invalid');
  assert.equal(many.getInt('a'), 5n);
  // Stops at the first failing addition, with the host's message.
  assert.throws(
    () => State.memory([['x', 'nan']]).addMany([['a', 1], ['x', 1]]),
    (e) => e instanceof StateError && e.message === 'invalid state operation: value at `x` is not an integer',
  );
});

test('type mismatches are invalid StateErrors', () => {
  const state = State.memory([['text', 'not a number'], ['bytes', new Uint8Array([0xff, 0xfe])]]);
  const invalid = (f) => assert.throws(f, (e) => e instanceof StateError && e instanceof PipeError && e.kind === 'invalid' && !e.retryable);
  invalid(() => state.add('text', 1));
  invalid(() => state.getInt('text'));
  invalid(() => state.getStr('bytes'));
  invalid(() => state.getJson('text'));
  state.setInt('max', 2n ** 63n - 1n);
  invalid(() => state.add('max', 1));
  invalid(() => state.setInt('big', 2n ** 63n));
  assert.throws(() => state.add('x', 1.5), RangeError);
});

test('decimal parsing follows the host', () => {
  assert.equal(parseI64('42'), 42n);
  assert.equal(parseI64('+7'), 7n);
  assert.equal(parseI64('-9223372036854775808'), -(2n ** 63n));
  for (const bad of ['', ' 1', '1 ', '1_000', '0x10', '9223372036854775808', '1.0', '-']) assert.equal(parseI64(bad), undefined, bad);
});

test('host errors become StateErrors with the Rust SDK messages', () => {
  const failing = (tag) => ({
    get() {
      const e = new Error('(see error.payload)');
      e.payload = { tag, val: 'boom' };
      throw e;
    },
  });
  assert.throws(() => State.host(failing('backend')).get('k'), (e) => e.message === 'state backend: boom' && e.retryable);
  assert.throws(() => State.host(failing('invalid')).get('k'), (e) => e.message === 'invalid state operation: boom' && !e.retryable);
  assert.throws(() => State.host(failing('limit')).get('k'), (e) => e.message === 'state limit: boom' && !e.retryable);
});

test('exportPipe turns errors into pipe-error payloads', () => {
  class Echo {
    constructor(config) {
      if (config !== '{}') throw new PipeError('bad config');
    }
    process(b, state) {
      if (b.events.length === 0) throw new TypeError('oops');
      state.add('calls');
      return b.events;
    }
  }
  const { init, process } = exportPipe(Echo, { hostState: State.memory().backend });
  assert.throws(() => process(batch([])), (e) => e.payload.message === 'process called before init');
  assert.throws(() => init('x'), (e) => e.payload.message === 'bad config' && e.payload.retryable === false);
  init('{}');
  const events = [event('a')];
  assert.equal(process(batch(events)), events);
  assert.throws(() => process(batch([])), (e) => e.payload.message.startsWith('unhandled TypeError: oops') && e.payload.eventIndex === undefined);
});

test('byte arrays from another realm are accepted (the host hands those in)', () => {
  const foreign = vm.runInNewContext('new Uint8Array([97, 100, 97])');
  assert.equal(foreign instanceof Uint8Array, false);
  assert.ok(isBytes(foreign));
  assert.equal(bytes(foreign), foreign);
  const e = event(foreign, { key: foreign });
  assert.equal(text(e.key), 'ada');
  const state = State.memory();
  state.set('k', foreign);
  assert.equal(state.getStr('k'), 'ada');
  assert.throws(() => bytes({}), TypeError);
});
