"""__NAME__: a plumber pipe that counts words.

For each event: ``n = state.add(<value>, 1)``, and out goes ``"<value> <n>"``
(key, timestamp and headers kept).

``WordCount`` is the logic: it gets the state as an argument, so test_app.py
runs it natively against a dict. ``WitWorld`` is what componentize-py exports
to the host (``init`` and ``process`` of the world ``stateful-pipe``).

Two things about componentize-py shape the bottom of this file:

- It creates a new ``WitWorld`` object for every exported call: an attribute
  set in ``init`` is gone in ``process``. Keep what must last in module
  globals (``_pipe`` below).
- An exception that escapes ``init`` or ``process``, or a value the host
  cannot take (an integer outside 64 bits for ``state.add``), traps the
  component, and the trap says nothing of why. ``WitWorld`` turns every
  exception into the WIT ``pipe-error`` with the exception's type and text,
  and ``HostState`` checks arguments before they cross. (Not with the
  ``traceback`` module: under ``--stub-wasi`` it traps too, reading source
  files.)
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

try:  # inside the component: componentize-py generates these modules
    from componentize_py_types import Err
    from wit_world.imports import state as host_state
    from wit_world.imports.types import Event, PipeError
except ImportError:  # natively (tests): same fields, no host
    host_state = None

    class Err(Exception):  # type: ignore[no-redef]
        """How a WIT error result is raised (``Err(value)``)."""

        def __init__(self, value):
            super().__init__(value)
            self.value = value

    @dataclass
    class Event:  # type: ignore[no-redef]
        key: Optional[bytes]
        value: bytes
        timestamp: Optional[int]
        headers: List[Tuple[str, str]]

    @dataclass
    class PipeError:  # type: ignore[no-redef]
        message: str
        retryable: bool
        event_index: Optional[int]


class WordCount:
    def __init__(self, config: str):
        # `config` is the pipe's "config" object from the pipeline, as JSON text.
        pass

    def process(self, batch, state) -> List[Event]:
        out = []
        for e in batch.events:
            word = e.value.decode("utf-8", "replace")
            n = state.add(word, 1)
            out.append(Event(key=e.key, value=f"{word} {n}".encode("utf-8"), timestamp=e.timestamp, headers=e.headers))
        return out


_I64 = range(-(2**63), 2**63)


class HostState:
    """plumber:pipe/state, with the arguments checked before they cross."""

    def get(self, key: str) -> Optional[bytes]:
        return host_state.get(_key(key))

    def get_many(self, keys: List[str]) -> List[Optional[bytes]]:
        return host_state.get_many([_key(k) for k in keys])

    def set(self, key: str, value: bytes) -> None:
        host_state.set(_key(key), bytes(value))

    def delete(self, key: str) -> None:
        host_state.delete(_key(key))

    def add(self, key: str, delta: int) -> int:
        if isinstance(delta, bool) or not isinstance(delta, int) or delta not in _I64:
            raise ValueError(f"state.add({key!r}, {delta!r}): the delta must be an int within 64 bits")
        return host_state.add(_key(key), delta)


def _key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a state key must be str, got {type(key).__name__}")
    return key


def _pipe_error(error: BaseException) -> Err:
    """``error`` as the WIT pipe-error: its type, its text, and where it was raised."""
    if isinstance(error, Err) and isinstance(error.value, PipeError):
        return error
    if isinstance(error, Err):  # a state-error from the host (StateError_Backend / _Invalid / _Limit)
        kind = type(error.value).__name__.rsplit("_", 1)[-1].lower()
        return Err(PipeError(message=f"state {kind}: {error.value.value}", retryable=kind == "backend", event_index=None))
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" (at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno})" if tb is not None else ""
    return Err(PipeError(message=f"unhandled {type(error).__name__}: {error}{where}", retryable=False, event_index=None))


# The pipe lives here, not on the WitWorld object (a new one per call).
_pipe = None


class WitWorld:
    """The component's exports. Raising ``Err(PipeError(...))`` returns the WIT pipe-error."""

    def init(self, config: str) -> None:
        global _pipe
        try:
            _pipe = WordCount(config)
        except BaseException as e:  # a trap would lose the message
            raise _pipe_error(e) from None

    def process(self, batch) -> List[Event]:
        if _pipe is None:
            raise Err(PipeError(message="process called before init", retryable=False, event_index=None))
        try:
            return _pipe.process(batch, HostState())
        except BaseException as e:  # a trap would lose the message
            raise _pipe_error(e) from None
