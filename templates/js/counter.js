// __NAME__: counts words. For each event: n = state.add(<value>, 1), and out
// goes "<value> <n>" (key, timestamp and headers kept).
//
// The logic gets the state as an argument, so counter.test.js runs it in Node
// against a Map; app.js hands it the host's state inside the component.
//
// Events as the component model gives them to JavaScript:
//   { key: Uint8Array | undefined, value: Uint8Array,
//     timestamp: bigint | undefined, headers: [string, string][] }
// `state.add(key, delta)` takes and returns a BigInt (WIT s64).

const encoder = new TextEncoder();
const decoder = new TextDecoder(); // invalid UTF-8 becomes U+FFFD

export class WordCount {
  constructor(config) {
    // `config` is the pipe's "config" object from the pipeline, as JSON text.
    this.config = JSON.parse(config);
  }

  process(batch, state) {
    return batch.events.map((e) => {
      const word = decoder.decode(e.value);
      const n = state.add(word, 1n);
      return { key: e.key, value: encoder.encode(`${word} ${n}`), timestamp: e.timestamp, headers: e.headers };
    });
  }
}
