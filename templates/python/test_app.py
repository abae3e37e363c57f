"""Native tests of __NAME__: ``python3 -m unittest``."""

import unittest
from types import SimpleNamespace

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


class WordCountTest(unittest.TestCase):
    def test_counts_each_word(self):
        state = MemoryState()
        pipe = WordCount("{}")
        out = pipe.process(SimpleNamespace(events=events("ada", "bob", "ada"), window=None), state)
        self.assertEqual([e.value for e in out], [b"ada 1", b"bob 1", b"ada 2"])
        out = pipe.process(SimpleNamespace(events=events("bob"), window=None), state)
        self.assertEqual([e.value for e in out], [b"bob 2"])
        self.assertEqual(state.map, {"ada": b"2", "bob": b"2"})


if __name__ == "__main__":
    unittest.main()
