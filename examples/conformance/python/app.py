"""The conformance pipes in Python; init config ``{"pipe": "<name>"}`` selects one.

- ``transform``: each value ASCII-upper-cased (only a-z change).
- ``counter``: per event ``n = state.add(value, 1)``, done for the batch by one
  ``state.add_many``; emits key = value, value ``<value>=<n>``.
- ``aggregate``: per distinct value of the batch (order of first appearance)
  with count ``c``: ``total = stored + c``; emits ``<start>:<end>:<value>:<c>:<total>``.
- ``fail``: events pass unchanged; a ``bad`` event fails the batch at its index.

Python only, for the SDK's error paths (``tests/tests/conformance.rs``): each
fails on its first event in a way that traps a component without the SDK's
``export``.

- ``raise``: looks each value up in an empty dict (an uncaught ``KeyError``).
- ``exit``: ``sys.exit(3)`` (a ``SystemExit``, which is no ``Exception``).
- ``add_big``: ``state.add(value, 2**70)``, a delta outside 64 bits.
- ``bad_timestamp``: returns each event with the timestamp ``-1``.

The logic takes the state as an argument (tested natively in test_app.py with
MemoryState); ``WitWorld`` at the bottom is what componentize-py exports.
"""

import json
import sys

import plumber_pipe
from plumber_pipe import Event, PipeError


def transform(batch, state):
    # bytes.upper() changes only the ASCII letters a-z.
    return [Event(key=e.key, value=e.value.upper(), timestamp=e.timestamp, headers=e.headers) for e in batch.events]


def counter(batch, state):
    # One add_many for the batch (one host call; in order, so a value
    # repeated in the batch sees the additions before it). A state error
    # fails the batch, with no event index.
    events = batch.events
    keys = [e.value.decode("utf-8", "replace") for e in events]
    counts = state.add_many([(k, 1) for k in keys])
    return [
        Event(key=e.value, value=f"{k}={n}".encode("utf-8"), timestamp=e.timestamp, headers=e.headers)
        for e, k, n in zip(events, keys, counts)
    ]


def aggregate(batch, state):
    counts = {}  # dicts keep insertion order: order of first appearance
    for e in batch.events:
        counts[e.value] = counts.get(e.value, 0) + 1
    window = batch.window
    start, end = (window.start, window.end) if window is not None else (0, 0)
    out = []
    for value, c in counts.items():
        v = value.decode("utf-8", "replace")
        total = (state.get_int(v) or 0) + c
        state.set_int(v, total)
        out.append(Event(key=value, value=f"{start}:{end}:{v}:{c}:{total}".encode("utf-8"), timestamp=None, headers=[]))
    return out


def fail(batch, state):
    for i, e in enumerate(batch.events):
        if e.value == b"bad":
            raise PipeError(f"bad event at {i}", retryable=False, event_index=i)
    return batch.events


def raise_(batch, state):
    lookup = {}
    return [lookup[e.value.decode("utf-8", "replace")] for e in batch.events]


def exit_(batch, state):
    sys.exit(3)


def add_big(batch, state):
    for e in batch.events:
        state.add(e.value.decode("utf-8", "replace"), 2**70)
    return batch.events


def bad_timestamp(batch, state):
    return [Event(key=e.key, value=e.value, timestamp=-1, headers=e.headers) for e in batch.events]


PIPES = {
    "transform": transform,
    "counter": counter,
    "aggregate": aggregate,
    "fail": fail,
    # Python only (see the module's docstring).
    "raise": raise_,
    "exit": exit_,
    "add_big": add_big,
    "bad_timestamp": bad_timestamp,
}


def pipe_name(config: str) -> str:
    """The ``pipe`` field: '' when missing, its JSON text when not a string."""
    try:
        parsed = json.loads(config)
    except ValueError as e:
        raise PipeError(f"invalid pipe config: {e}") from None
    if not isinstance(parsed, dict):
        return ""
    name = parsed.get("pipe")
    if name is None:
        return ""
    return name if isinstance(name, str) else json.dumps(name, ensure_ascii=False, separators=(",", ":"))


class Conformance:
    def __init__(self, config: str):
        self.name = pipe_name(config)
        if self.name not in PIPES:
            raise PipeError(f'unknown pipe "{self.name}"')
        self.run = PIPES[self.name]

    def process(self, batch, state):
        return self.run(batch, state)


# componentize-py exports the class named WitWorld.
WitWorld = plumber_pipe.export(Conformance)
