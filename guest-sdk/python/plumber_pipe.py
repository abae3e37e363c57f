"""Helpers for plumber pipes written in Python (WIT package ``plumber:pipe@0.1.1``).

A pipe is a class: constructed once per instance with the pipe's ``config``
(JSON text, ``{}`` when absent), its ``process(batch, state)`` returns the
events to pass on. The state comes in as an argument, so the same class runs
natively in a unit test against :class:`MemoryState`, and in the component
against the host's state. ``app.py`` (the module componentize-py builds)
looks like::

    import plumber_pipe
    from plumber_pipe import PipeError, event

    class Count:
        def __init__(self, config: str):
            pass

        def process(self, batch, state):
            out = []
            for e in batch.events:
                word = e.value.decode("utf-8", "replace")
                n = state.add(word, 1)
                out.append(event(f"{word} {n}"))
            return out

    # componentize-py looks for a class named WitWorld in the module.
    WitWorld = plumber_pipe.export(Count)

Build (the bindings are generated, never committed)::

    componentize-py -d <wit dir> -w stateful-pipe bindings <tmp>/bindings
    componentize-py -d <wit dir> -w stateful-pipe componentize app \\
        -p . -p <tmp>/bindings -p <dir of plumber_pipe.py> -o pipe.wasm --stub-wasi

The data types are those of the bindings (dataclasses; ``bytes`` for
``list<u8>``, ``int`` for ``u64``, ``None`` for an absent option):

- ``Event(key: bytes | None, value: bytes, timestamp: int | None, headers: list[tuple[str, str]])``
- ``WindowInfo(start: int, end: int, key: bytes | None)``
- ``Batch(events: list[Event], window: WindowInfo | None)``

Outside a component (no bindings importable) this module defines dataclasses
with the same fields, so tests build events the same way.

Failures: raise :class:`PipeError` (``message``, ``retryable``,
``event_index``); state operations raise :class:`StateError`, a PipeError. Any
other exception escaping ``__init__`` or ``process`` (``SystemExit`` and other
``BaseException``\ s included) is reported to the host as a non-retryable
pipe-error naming its type, its text and where it was raised (``--stub-wasi``
leaves no stderr for a traceback, and a trap would lose the message).
Integers the host cannot take are refused before they cross: a ``state.add``
delta outside 64 bits is a StateError, and ``process`` checks the events it
returns (``bytes`` values and keys, a ``timestamp`` that fits in 64 bits
unsigned, ``(str, str)`` headers), naming the event and the field, instead
of letting the component trap.

componentize-py creates a new ``WitWorld`` object for every exported call:
attributes set in ``init`` are gone in ``process``. ``export`` keeps the
pipe object in a module-level slot for that reason; code that does without
it must keep its state in module globals too.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Tuple

try:  # inside the component, or natively with generated bindings on the path
    from componentize_py_types import Err as _Err
    from wit_world.imports import log as _host_log
    from wit_world.imports import state as _host_state
    from wit_world.imports import types as _wit_types
except ImportError:  # native tests without bindings
    _Err = None
    _host_log = None
    _host_state = None
    _wit_types = None

__all__ = [
    "Batch",
    "Event",
    "HostState",
    "MemoryState",
    "PipeError",
    "State",
    "StateError",
    "WindowInfo",
    "batch",
    "event",
    "export",
    "log",
    "parse_i64",
]

if _wit_types is not None:
    Event = _wit_types.Event
    WindowInfo = _wit_types.WindowInfo
    Batch = _wit_types.Batch
else:

    @dataclass
    class Event:  # type: ignore[no-redef]
        """One record (same fields as the generated binding)."""

        key: Optional[bytes]
        value: bytes
        timestamp: Optional[int]
        headers: List[Tuple[str, str]]

    @dataclass
    class WindowInfo:  # type: ignore[no-redef]
        """The bounds of the window a batch was released by."""

        start: int
        end: int
        key: Optional[bytes]

    @dataclass
    class Batch:  # type: ignore[no-redef]
        """The events handed to a pipe, and the window they came from."""

        events: List[Event]
        window: Optional[WindowInfo]


def _bytes(value: "bytes | bytearray | memoryview | str") -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"expected str or bytes, got {type(value).__name__}")


def event(
    value: "bytes | str",
    *,
    key: "bytes | str | None" = None,
    timestamp: Optional[int] = None,
    headers: Iterable[Tuple[str, str]] = (),
) -> Event:
    """An event; ``value`` and ``key`` may be ``str`` (written as UTF-8) or ``bytes``."""
    return Event(
        key=None if key is None else _bytes(key),
        value=_bytes(value),
        timestamp=timestamp,
        headers=[(str(k), str(v)) for k, v in headers],
    )


def batch(events: List[Event], window: "WindowInfo | Tuple[int, int] | None" = None) -> Batch:
    """A batch; ``window`` may be a WindowInfo or a ``(start, end)`` pair."""
    if isinstance(window, tuple):
        window = WindowInfo(start=window[0], end=window[1], key=None)
    return Batch(events=list(events), window=window)


class PipeError(Exception):
    """A pipe's failure: becomes the WIT ``pipe-error``."""

    def __init__(self, message: str, *, retryable: bool = False, event_index: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.event_index = event_index

    def at_event(self, index: int) -> "PipeError":
        """The same error, pointing at the event at ``index`` in the batch."""
        self.event_index = index
        return self

    def __repr__(self) -> str:
        return (
            f"PipeError({self.message!r}, retryable={self.retryable!r}, "
            f"event_index={self.event_index!r})"
        )


_PREFIX = {
    "backend": "state backend",
    "invalid": "invalid state operation",
    "limit": "state limit",
}


class StateError(PipeError):
    """A failed state operation.

    ``kind`` is the WIT ``state-error`` case (``backend``, ``invalid`` or
    ``limit``), ``detail`` its text. The message and retryability follow the
    Rust SDK: ``state backend: ...`` (retryable), ``invalid state operation:
    ...``, ``state limit: ...``.
    """

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{_PREFIX.get(kind, 'state error (' + kind + ')')}: {detail}", retryable=kind == "backend")
        self.kind = kind
        self.detail = detail

    @classmethod
    def invalid(cls, detail: str) -> "StateError":
        return cls("invalid", detail)


_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
_DECIMAL = re.compile(rb"[+-]?[0-9]+")


def parse_i64(value: "bytes | str") -> Optional[int]:
    """Decimal ASCII as the host reads it (Rust ``i64::from_str``); None when it is not one."""
    raw = _bytes(value)
    if not _DECIMAL.fullmatch(raw):
        return None
    n = int(raw)
    return n if _I64_MIN <= n <= _I64_MAX else None


def _i64(key: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int for `{key}`, got {type(value).__name__}")
    if not _I64_MIN <= value <= _I64_MAX:
        raise StateError.invalid(f"integer for `{key}` does not fit in 64 bits")
    return value


class State:
    """A pipe's key/value state; subclasses provide get/get_many/set/delete/add.

    Keys are strings, values bytes. Integers are stored as decimal ASCII
    (what ``add`` writes); the typed helpers convert on the way in and out.
    """

    def get(self, key: str) -> Optional[bytes]:
        raise NotImplementedError

    def get_many(self, keys: List[str]) -> List[Optional[bytes]]:
        raise NotImplementedError

    def set(self, key: str, value: "bytes | str") -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def add(self, key: str, delta: int = 1) -> int:
        raise NotImplementedError

    def get_str(self, key: str) -> Optional[str]:
        """The UTF-8 text at ``key``, or None; not UTF-8 is an invalid StateError."""
        raw = self.get(key)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StateError.invalid(f"value at `{key}` is not UTF-8") from None

    def set_str(self, key: str, value: str) -> None:
        self.set(key, value.encode("utf-8"))

    def get_int(self, key: str) -> Optional[int]:
        """The integer (decimal text, as ``add`` writes) at ``key``, or None."""
        raw = self.get(key)
        if raw is None:
            return None
        n = parse_i64(raw)
        if n is None:
            raise StateError.invalid(f"value at `{key}` is not an integer")
        return n

    def set_int(self, key: str, value: int) -> None:
        """Writes a 64-bit integer as decimal text, the encoding ``add`` uses."""
        self.set(key, str(_i64(key, value)).encode("ascii"))

    def get_json(self, key: str) -> Any:
        """The JSON value at ``key``, or None when absent."""
        raw = self.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise StateError.invalid(f"value at `{key}` is not the JSON expected: {e}") from None

    def set_json(self, key: str, value: Any) -> None:
        """Writes ``value`` as compact JSON (UTF-8, non-ASCII not escaped: as serde_json writes it)."""
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise StateError.invalid(f"cannot serialise value for `{key}`: {e}") from None
        self.set(key, text.encode("utf-8"))


class MemoryState(State):
    """State in a dict, for native tests; same semantics and errors as the host."""

    def __init__(self, entries: "dict[str, bytes | str] | None" = None):
        self.map: dict = {k: _bytes(v) for k, v in (entries or {}).items()}

    def entries(self) -> List[Tuple[str, bytes]]:
        """The entries, in key order."""
        return sorted(self.map.items())

    def get(self, key: str) -> Optional[bytes]:
        return self.map.get(key)

    def get_many(self, keys: List[str]) -> List[Optional[bytes]]:
        return [self.map.get(k) for k in keys]

    def set(self, key: str, value: "bytes | str") -> None:
        self.map[key] = _bytes(value)

    def delete(self, key: str) -> None:
        self.map.pop(key, None)

    def add(self, key: str, delta: int = 1) -> int:
        delta = _i64(key, delta)
        current = 0
        if key in self.map:
            current = parse_i64(self.map[key])
            if current is None:
                raise StateError.invalid(f"value at `{key}` is not an integer")
        total = current + delta
        if not _I64_MIN <= total <= _I64_MAX:
            raise StateError.invalid(f"adding {delta} to `{key}` overflows")
        self.map[key] = str(total).encode("ascii")
        return total


def _state_error(err: Any) -> StateError:
    """The generated ``StateError_Backend/_Invalid/_Limit`` value as a StateError."""
    kind = type(err).__name__.rsplit("_", 1)[-1].lower()
    return StateError(kind, str(getattr(err, "value", err)))


def _key(key: Any) -> str:
    """A state key as the host takes it (a ``str``); anything else is a TypeError, not a trap."""
    if not isinstance(key, str):
        raise TypeError(f"a state key must be str, got {type(key).__name__}")
    return key


class HostState(State):
    """The host's state (``plumber:pipe/state``), inside a component.

    Arguments are checked before they cross (keys ``str``, values bytes,
    ``add`` deltas within 64 bits): a value the host cannot take raises here,
    naming it, where handing it over would trap the component.
    """

    def __init__(self) -> None:
        if _host_state is None:
            raise RuntimeError("no plumber host here (bindings not importable): use MemoryState()")

    @staticmethod
    def _call(f: Callable, *args: Any) -> Any:
        try:
            return f(*args)
        except _Err as e:
            raise _state_error(e.value) from None

    def get(self, key: str) -> Optional[bytes]:
        return self._call(_host_state.get, _key(key))

    def get_many(self, keys: List[str]) -> List[Optional[bytes]]:
        return self._call(_host_state.get_many, [_key(k) for k in keys])

    def set(self, key: str, value: "bytes | str") -> None:
        self._call(_host_state.set, _key(key), _bytes(value))

    def delete(self, key: str) -> None:
        self._call(_host_state.delete, _key(key))

    def add(self, key: str, delta: int = 1) -> int:
        return self._call(_host_state.add, _key(key), _i64(key, delta))


_LEVELS = ("trace", "debug", "info", "warn", "error")


def log(level: str, message: str, **fields: Any) -> None:
    """A structured log line through the host: ``log("info", "seen", word="ada")``.

    A no-op outside a component.
    """
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    if _host_log is None:
        return
    try:
        _host_log.log(_host_log.Level[level.upper()], str(message), [(k, str(v)) for k, v in fields.items()])
    except NotImplementedError:  # generated bindings imported natively
        pass


class _LogWriter:
    """A text stream whose lines go to the host's log (stdout/stderr inside the component)."""

    def __init__(self, level: str, stream: str):
        self.level = level
        self.stream = stream
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            log(self.level, line, stream=self.stream)
        return len(text)

    def flush(self) -> None:
        if self.pending:
            line, self.pending = self.pending, ""
            log(self.level, line, stream=self.stream)

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


if sys.platform == "wasi" and _host_log is not None:
    # With --stub-wasi, writing to the real stdout/stderr traps: print() would
    # kill the instance. Send the lines to the host's log instead.
    sys.stdout = _LogWriter("info", "stdout")  # type: ignore[assignment]
    sys.stderr = _LogWriter("warn", "stderr")  # type: ignore[assignment]


def _describe(error: BaseException) -> str:
    # Walk the traceback by hand: the `traceback` module reads source files
    # (os.stat), which traps in a component built with --stub-wasi.
    where = ""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        code = tb.tb_frame.f_code
        where = f" (at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name})"
    return f"unhandled {type(error).__name__}: {error}{where}"


_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


def _to_wit(error: BaseException) -> BaseException:
    """The exception that carries ``error`` to the host: ``Err(pipe-error)``.

    Without bindings (native tests of ``export``) it is the PipeError itself.
    """
    if _Err is not None and isinstance(error, _Err):
        if isinstance(error.value, _wit_types.PipeError):
            return error  # already the WIT pipe-error (raised by hand)
        error = _state_error(error.value)  # a state-error from a direct host call
    if not isinstance(error, PipeError):
        error = PipeError(_describe(error))
    message = str(error.message)
    index = error.event_index
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= _U32_MAX):
        # The WIT field is a u32: an index that does not fit is told, not trapped on.
        message = f"{message} (event_index {index!r} is not an index)"
        index = None
    if _Err is None:
        error.message, error.event_index = message, index
        return error
    return _Err(_wit_types.PipeError(message=message, retryable=bool(error.retryable), event_index=index))


def _check_event(i: int, e: Any) -> None:
    """Refuses, naming event ``i`` and the field, what the host cannot take."""
    if not isinstance(e, Event):
        raise PipeError(f"process returned {type(e).__name__} at index {i}, not an Event")
    if isinstance(e.value, (bytearray, memoryview)):
        e.value = bytes(e.value)
    if not isinstance(e.value, bytes):
        raise PipeError(f"event {i}: value is {type(e.value).__name__}, not bytes (encode it, or build events with event())")
    if isinstance(e.key, (bytearray, memoryview)):
        e.key = bytes(e.key)
    if e.key is not None and not isinstance(e.key, bytes):
        raise PipeError(f"event {i}: key is {type(e.key).__name__}, not bytes or None")
    ts = e.timestamp
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= _U64_MAX):
        raise PipeError(f"event {i}: timestamp {ts!r} is not an integer in 0..2**64-1 (ms since the Unix epoch) or None")
    if not isinstance(e.headers, list):
        raise PipeError(f"event {i}: headers is {type(e.headers).__name__}, not a list of (str, str)")
    for h in e.headers:
        if not (isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) and isinstance(h[1], str)):
            raise PipeError(f"event {i}: header {h!r} is not a (str, str) tuple")


def export(pipe_class: Callable[[str], Any]) -> type:
    """The class componentize-py exports as the world: ``WitWorld = export(MyPipe)``.

    ``init`` constructs ``pipe_class(config)``; ``process`` calls
    ``pipe.process(batch, HostState())`` and checks the events it returns.
    PipeErrors (and any other exception, ``BaseException`` included, named in
    the message) become the WIT ``pipe-error``.

    componentize-py makes a new ``WitWorld`` per exported call, so the pipe
    lives in a slot of this function's closure, not on ``self``.
    """
    slot: dict = {}

    class WitWorld:
        def init(self, config: str) -> None:
            slot.pop("pipe", None)
            try:
                slot["pipe"] = pipe_class(config)
            except BaseException as e:  # noqa: BLE001 - reported to the host, a trap would lose it
                raise _to_wit(e) from None

        def process(self, batch: Batch) -> List[Event]:
            pipe = slot.get("pipe")
            if pipe is None:
                raise _to_wit(PipeError("process called before init"))
            try:
                out = list(pipe.process(batch, slot.setdefault("state", HostState())))
                for i, e in enumerate(out):
                    _check_event(i, e)
                return out
            except BaseException as e:  # noqa: BLE001 - reported to the host, a trap would lose it
                raise _to_wit(e) from None

    WitWorld.__qualname__ = WitWorld.__name__ = "WitWorld"
    return WitWorld
