"""Native tests of the helpers: ``python3 -m unittest`` in guest-sdk/python."""

import unittest

import plumber_pipe
from plumber_pipe import HostState, MemoryState, PipeError, StateError, batch, event, parse_i64


class MemoryStateTest(unittest.TestCase):
    def test_typed_helpers_round_trip(self):
        state = MemoryState()
        state.set_str("name", "ada")
        self.assertEqual(state.get_str("name"), "ada")
        state.set_int("n", 40)
        self.assertEqual(state.add("n", 2), 42)
        self.assertEqual(state.add("n"), 43)
        self.assertEqual(state.get_int("n"), 43)
        state.set_json("point", [1, "x", "é"])
        self.assertEqual(state.get_json("point"), [1, "x", "é"])
        self.assertEqual(state.get("point"), '[1,"x","é"]'.encode())
        self.assertEqual(state.get_many(["name", "absent"]), [b"ada", None])
        state.delete("name")
        state.delete("never there")
        self.assertIsNone(state.get("name"))
        self.assertIsNone(state.get_int("absent"))
        self.assertIsNone(state.get_json("absent"))
        self.assertEqual(state.entries(), [("n", b"43"), ("point", '[1,"x","é"]'.encode())])

    def test_add_many_applies_in_order_as_add_would(self):
        ops = [("a", 1), ("b", 2), ("a", 1), ("c", -5), ("a", 3)]
        many, one = MemoryState({"b": "10"}), MemoryState({"b": "10"})
        self.assertEqual(many.add_many(ops), [one.add(k, d) for k, d in ops])
        self.assertEqual(many.entries(), one.entries())
        self.assertEqual(many.add_many([]), [])
        # Checked before anything is applied: a non-str key, a delta outside 64 bits.
        with self.assertRaises(TypeError):
            many.add_many([("a", 1), (b"k", 1)])
        with self.assertRaises(StateError):
            many.add_many([("a", 1), ("b", 2**70)])
        self.assertEqual(many.get_int("a"), 5)
        # Stops at the first failing addition, those before it applied.
        with self.assertRaises(StateError) as caught:
            MemoryState({"x": "nan"}).add_many([("a", 1), ("x", 1)])
        self.assertEqual(caught.exception.message, "invalid state operation: value at `x` is not an integer")

    def test_type_mismatches_are_invalid_state_errors(self):
        state = MemoryState({"text": "not a number", "bytes": b"\xff\xfe"})
        for call in (
            lambda: state.add("text", 1),
            lambda: state.get_int("text"),
            lambda: state.get_str("bytes"),
            lambda: state.get_json("text"),
            lambda: state.set_int("big", 2**63),
            lambda: state.set_json("set", {1, 2}),
        ):
            with self.assertRaises(StateError) as caught:
                call()
            self.assertEqual(caught.exception.kind, "invalid")
            self.assertIsInstance(caught.exception, PipeError)
            self.assertFalse(caught.exception.retryable)
        state.set_int("max", 2**63 - 1)
        with self.assertRaises(StateError):
            state.add("max", 1)
        # A delta outside 64 bits is refused before it could reach the host.
        for delta in (2**70, 2**63, -(2**63) - 1):
            with self.assertRaises(StateError) as caught:
                state.add("n", delta)
            self.assertEqual(caught.exception.kind, "invalid")
            self.assertIn("does not fit in 64 bits", caught.exception.message)
        with self.assertRaises(TypeError):
            state.add("n", 1.5)

    def test_decimal_parsing_follows_the_host(self):
        self.assertEqual(parse_i64(b"42"), 42)
        self.assertEqual(parse_i64("+7"), 7)
        self.assertEqual(parse_i64("-9223372036854775808"), -(2**63))
        for bad in ["", " 1", "1 ", "1_000", "0x10", "9223372036854775808", "1.0", "-", "١"]:
            self.assertIsNone(parse_i64(bad), bad)


class StateErrorTest(unittest.TestCase):
    def test_messages_follow_the_rust_sdk(self):
        self.assertEqual(StateError("backend", "down").message, "state backend: down")
        self.assertTrue(StateError("backend", "down").retryable)
        self.assertEqual(StateError("invalid", "x").message, "invalid state operation: x")
        self.assertEqual(StateError("limit", "y").message, "state limit: y")
        self.assertFalse(StateError("limit", "y").retryable)


class EventTest(unittest.TestCase):
    def test_event_and_batch_builders(self):
        e = event("ada", key="k", timestamp=5, headers=[("h", "v")])
        self.assertEqual((e.key, e.value, e.timestamp, e.headers), (b"k", b"ada", 5, [("h", "v")]))
        self.assertEqual(event(b"\xff").key, None)
        b = batch([e], (10, 20))
        self.assertEqual((b.window.start, b.window.end, b.window.key), (10, 20, None))
        self.assertIsNone(batch([]).window)


class ExportTest(unittest.TestCase):
    def test_errors_reach_the_host_as_pipe_errors(self):
        class Echo:
            def __init__(self, config):
                if config != "{}":
                    raise PipeError("bad config")

            def process(self, b, state):
                raise KeyError("oops")

        world = plumber_pipe.export(Echo)()
        with self.assertRaises(PipeError) as caught:
            world.process(batch([]))
        self.assertEqual(caught.exception.message, "process called before init")
        with self.assertRaises(PipeError) as caught:
            world.init("x")
        self.assertEqual(caught.exception.message, "bad config")
        world.init("{}")
        with self.assertRaises(PipeError) as caught:
            world.process(batch([]))  # natively there is no host state: reported, not raised raw
        self.assertTrue(caught.exception.message.startswith("unhandled RuntimeError: no plumber host"), caught.exception.message)


class ExportChecksTest(unittest.TestCase):
    """What ``export`` does so that a mistake is a pipe-error, not a trap."""

    def world(self, process):
        class Pipe:
            def __init__(self, config):
                pass

        Pipe.process = lambda self, b, state: process(b)
        world = plumber_pipe.export(Pipe)
        # componentize-py makes a new world object per call: so does this test.
        world().init("{}")
        return world

    def failure(self, process):
        plumber_pipe.HostState = MemoryState  # natively: no host, a dict
        try:
            with self.assertRaises(PipeError) as caught:
                self.world(process)().process(batch([event("a")]))
        finally:
            plumber_pipe.HostState = HostState
        return caught.exception

    def test_any_exception_becomes_a_pipe_error_with_its_type_text_and_place(self):
        def exits(b):
            raise SystemExit(3)

        error = self.failure(exits)
        self.assertTrue(error.message.startswith("unhandled SystemExit: 3 (at "), error.message)
        self.assertFalse(error.retryable)

        def overflows(b):
            return [event("x", timestamp=2**64)]

        self.assertEqual(
            self.failure(overflows).message,
            "event 0: timestamp 18446744073709551616 is not an integer in 0..2**64-1 (ms since the Unix epoch) or None",
        )

    def test_returned_events_are_checked_field_by_field(self):
        good = event("ok")
        cases = [
            ([good, event("x", timestamp=-1)], "event 1: timestamp -1 is not"),
            ([good, good, plumber_pipe.Event(key=None, value="text", timestamp=None, headers=[])], "event 2: value is str, not bytes"),
            ([plumber_pipe.Event(key="k", value=b"v", timestamp=None, headers=[])], "event 0: key is str"),
            ([plumber_pipe.Event(key=None, value=b"v", timestamp=None, headers=[("h", 1)])], "event 0: header ('h', 1) is not"),
            ([plumber_pipe.Event(key=None, value=b"v", timestamp=True, headers=[])], "event 0: timestamp True is not"),
            (["not an event"], "process returned str at index 0, not an Event"),
        ]
        for out, expected in cases:
            message = self.failure(lambda b, out=out: out).message
            self.assertTrue(message.startswith(expected), message)
        # Byte-like values are made bytes; the largest timestamp passes.
        plumber_pipe.HostState = MemoryState
        try:
            out = self.world(lambda b: [plumber_pipe.Event(key=bytearray(b"k"), value=bytearray(b"v"), timestamp=2**64 - 1, headers=[("h", "v")])])().process(batch([]))
        finally:
            plumber_pipe.HostState = HostState
        self.assertEqual((out[0].key, out[0].value, out[0].timestamp), (b"k", b"v", 2**64 - 1))

    def test_an_event_index_that_is_no_u32_is_dropped_and_told(self):
        def fails(b):
            raise PipeError("bad", event_index=2**40)

        error = self.failure(fails)
        self.assertEqual(error.message, "bad (event_index 1099511627776 is not an index)")
        self.assertIsNone(error.event_index)


class ExportVersionedTest(unittest.TestCase):
    """``export_versioned``: the worlds ``versioned-pipe`` and ``migrating-pipe``."""

    class Pipe:
        def __init__(self, config):
            pass

        def process(self, b, state):
            return []

    def test_state_version_and_migrate_writes(self):
        def migrate(from_version, pairs):
            for key, value in pairs:
                if key == "gone":
                    yield key, None
                else:
                    yield key, bytearray(int(value).to_bytes(8, "little"))

        world = plumber_pipe.export_versioned(self.Pipe, "2", migrate)
        self.assertEqual(world().state_version(), "2")
        self.assertEqual(
            world().migrate("1", [("a", b"7"), ("gone", b"1")]),
            [("a", (7).to_bytes(8, "little")), ("gone", None)],
        )
        self.assertFalse(hasattr(plumber_pipe.export_versioned(self.Pipe, "1")(), "migrate"))

    def test_migrate_failures_are_pipe_errors(self):
        def raises(from_version, pairs):
            raise ValueError("not a count")

        def not_a_pair(from_version, pairs):
            return ["a"]

        with self.assertRaises(PipeError) as caught:
            plumber_pipe.export_versioned(self.Pipe, "2", raises)().migrate("1", [("a", b"x")])
        self.assertTrue(caught.exception.message.startswith("unhandled ValueError: not a count"), caught.exception.message)
        with self.assertRaises(PipeError) as caught:
            plumber_pipe.export_versioned(self.Pipe, "2", not_a_pair)().migrate("1", [])
        self.assertEqual(caught.exception.message, "migrate returned 'a' at index 0, not a (str, bytes or None) tuple")


if __name__ == "__main__":
    unittest.main()
