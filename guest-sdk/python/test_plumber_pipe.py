"""Native tests of the helpers: ``python3 -m unittest`` in guest-sdk/python."""

import unittest

import plumber_pipe
from plumber_pipe import MemoryState, PipeError, StateError, batch, event, parse_i64


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


if __name__ == "__main__":
    unittest.main()
