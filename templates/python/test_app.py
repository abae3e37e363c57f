"""Native tests of __NAME__: ``python3 -m unittest``."""

import unittest
from types import SimpleNamespace

import app
from app import WordCount, Event


class MemoryState:
    """The part of plumber:pipe/state this pipe uses, in a dict."""

    def __init__(self):
        self.map = {}

    def add(self, key: str, delta: int) -> int:
        n = int(self.map.get(key, b"0")) + delta
        self.map[key] = str(n).encode()
        return n


def events(*values):
    return [Event(key=None, value=v.encode(), timestamp=None, headers=[]) for v in values]


def batch(*values):
    return SimpleNamespace(events=events(*values), window=None)


class WordCountTest(unittest.TestCase):
    def test_counts_each_word(self):
        state = MemoryState()
        pipe = WordCount("{}")
        out = pipe.process(batch("ada", "bob", "ada"), state)
        self.assertEqual([e.value for e in out], [b"ada 1", b"bob 1", b"ada 2"])
        out = pipe.process(batch("bob"), state)
        self.assertEqual([e.value for e in out], [b"bob 2"])
        self.assertEqual(state.map, {"ada": b"2", "bob": b"2"})


class WitWorldTest(unittest.TestCase):
    """The exports, called as componentize-py calls them: a new object per call."""

    def setUp(self):
        app.host_state = MemoryState()
        app.WitWorld().init("{}")

    def tearDown(self):
        app.host_state = None

    def fails_with(self, logic):
        original = app.WordCount.process
        app.WordCount.process = logic
        try:
            with self.assertRaises(app.Err) as caught:
                app.WitWorld().process(batch("ada"))
        finally:
            app.WordCount.process = original
        return caught.exception.value

    def test_the_pipe_outlives_the_world_object(self):
        out = app.WitWorld().process(batch("ada", "ada"))
        self.assertEqual([e.value for e in out], [b"ada 1", b"ada 2"])

    def test_exceptions_become_pipe_errors_with_their_text(self):
        def exits(self, batch, state):
            raise SystemExit(3)

        error = self.fails_with(exits)
        self.assertTrue(error.message.startswith("unhandled SystemExit: 3 (at "), error.message)
        self.assertFalse(error.retryable)

        def adds_too_much(self, batch, state):
            state.add("ada", 2**70)

        error = self.fails_with(adds_too_much)
        self.assertTrue(error.message.startswith("unhandled ValueError: state.add('ada', 1180591620717411303424): the delta must be an int within 64 bits"), error.message)


if __name__ == "__main__":
    unittest.main()
