"""Native tests of the conformance pipes: ``python3 -m unittest`` in this directory."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "guest-sdk", "python"))

import app  # noqa: E402
from plumber_pipe import MemoryState, PipeError, WindowInfo, batch, event  # noqa: E402


def run(name, events, state=None, window=None):
    pipe = app.Conformance('{"pipe": "%s"}' % name)
    return pipe.process(batch(events, window), MemoryState() if state is None else state)


def values(events):
    return [e.value.decode() for e in events]


class TransformTest(unittest.TestCase):
    def test_upper_cases_ascii_letters_only(self):
        [out] = run("transform", [event(bytes([0x61, 0x7A, 0x41, 0x31, 0xC3, 0xA9, 0x7B, 0x60]), key="k", timestamp=42, headers=[("h", "v")])])
        self.assertEqual(out.value, bytes([0x41, 0x5A, 0x41, 0x31, 0xC3, 0xA9, 0x7B, 0x60]))
        self.assertEqual((out.key, out.timestamp, out.headers), (b"k", 42, [("h", "v")]))
        self.assertEqual(values(run("transform", [event("ada"), event("Grace Hopper!")])), ["ADA", "GRACE HOPPER!"])


class CounterTest(unittest.TestCase):
    def test_counts_each_value_in_state(self):
        state = MemoryState()
        out = run("counter", [event("ada", timestamp=7, headers=[("a", "b")]), event("bob"), event("ada")], state)
        self.assertEqual(values(out), ["ada=1", "bob=1", "ada=2"])
        self.assertEqual([e.key for e in out], [b"ada", b"bob", b"ada"])
        self.assertEqual((out[0].timestamp, out[0].headers), (7, [("a", "b")]))
        self.assertIsNone(out[1].timestamp)
        self.assertEqual(values(run("counter", [event("bob")], state)), ["bob=2"])
        self.assertEqual(state.entries(), [("ada", b"2"), ("bob", b"2")])


    def test_a_state_error_fails_the_batch(self):
        # One add_many for the batch: the error has no event index.
        with self.assertRaises(PipeError) as caught:
            run("counter", [event("ok"), event("x")], MemoryState({"x": "not a number"}))
        e = caught.exception
        self.assertEqual((e.message, e.retryable, e.event_index), ("invalid state operation: value at `x` is not an integer", False, None))

    def test_one_add_many_per_batch_and_no_add(self):
        calls = []

        class Counting(MemoryState):
            def add(self, key, delta=1):
                calls.append("add")
                return super().add(key, delta)

            def add_many(self, ops):
                calls.append("add_many")
                # MemoryState.add_many applies through add: count it once.
                before = len(calls)
                out = super().add_many(ops)
                del calls[before:]
                return out

        state = Counting()
        self.assertEqual(values(run("counter", [event("a"), event("b"), event("a")], state)), ["a=1", "b=1", "a=2"])
        self.assertEqual(calls, ["add_many"])


class AggregateTest(unittest.TestCase):
    def test_counts_distinct_values_with_running_totals(self):
        state = MemoryState()
        events = [event(v, timestamp=5, headers=[("x", "y")]) for v in ["b", "a", "b", "c", "a", "b"]]
        out = run("aggregate", events, state, WindowInfo(start=1000, end=2000, key=None))
        self.assertEqual(values(out), ["1000:2000:b:3:3", "1000:2000:a:2:2", "1000:2000:c:1:1"])
        self.assertEqual([e.key for e in out], [b"b", b"a", b"c"])
        for e in out:
            self.assertIsNone(e.timestamp)
            self.assertEqual(e.headers, [])
        self.assertEqual(values(run("aggregate", [event("a"), event("d")], state)), ["0:0:a:1:3", "0:0:d:1:1"])
        self.assertEqual(state.entries(), [("a", b"3"), ("b", b"3"), ("c", b"1"), ("d", b"1")])
        self.assertEqual(run("aggregate", [], state, (1000, 2000)), [])

    def test_a_stored_total_that_is_not_an_integer_is_an_error(self):
        with self.assertRaises(PipeError) as caught:
            run("aggregate", [event("a")], MemoryState({"a": "x"}))
        self.assertIn("not an integer", caught.exception.message)
        self.assertFalse(caught.exception.retryable)


class InvalidUtf8Test(unittest.TestCase):
    """Values that are not UTF-8: state keys and text use U+FFFD (as Rust's from_utf8_lossy); keys keep the bytes."""

    def test_counter_and_aggregate(self):
        state = MemoryState()
        out = run("counter", [event(b"\xffa"), event(b"\xfea")], state)
        self.assertEqual([(e.key, e.value) for e in out], [(b"\xffa", "\ufffda=1".encode()), (b"\xfea", "\ufffda=2".encode())])
        out = run("aggregate", [event(b"\xff"), event(b"\xfe"), event(b"\xff")], MemoryState())
        self.assertEqual([(e.key, e.value) for e in out], [(b"\xff", "0:0:\ufffd:2:2".encode()), (b"\xfe", "0:0:\ufffd:1:3".encode())])


class FailTest(unittest.TestCase):
    def test_passes_events_until_a_bad_one(self):
        events = [event("ok", key="k", timestamp=1, headers=[("h", "v")]), event("fine")]
        self.assertEqual(run("fail", events), events)
        with self.assertRaises(PipeError) as caught:
            run("fail", [event("ok"), event("also ok"), event("bad"), event("bad")])
        e = caught.exception
        self.assertEqual((e.message, e.retryable, e.event_index), ("bad event at 2", False, 2))
        self.assertEqual(values(run("fail", [event("bad!"), event("BAD")])), ["bad!", "BAD"])


class InitTest(unittest.TestCase):
    def test_an_unknown_or_missing_pipe_fails_init(self):
        for config, message in [('{"pipe": "nope"}', 'unknown pipe "nope"'), ("{}", 'unknown pipe ""'), ('{"pipe": null}', 'unknown pipe ""')]:
            with self.assertRaises(PipeError) as caught:
                app.Conformance(config)
            self.assertEqual(caught.exception.message, message)
            self.assertFalse(caught.exception.retryable)


class PythonOnlyTest(unittest.TestCase):
    def test_the_error_path_pipes_fail_as_described(self):
        with self.assertRaises(KeyError):
            run("raise", [event("ada")])
        with self.assertRaises(SystemExit):
            run("exit", [event("ada")])
        with self.assertRaises(PipeError) as caught:
            run("add_big", [event("ada")])
        self.assertIn("does not fit in 64 bits", caught.exception.message)
        [out] = run("bad_timestamp", [event("ada")])
        self.assertEqual(out.timestamp, -1)


if __name__ == "__main__":
    unittest.main()
