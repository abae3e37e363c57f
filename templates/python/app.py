"""__NAME__: a plumber pipe that counts words.

For each event: ``n = state.add(<value>, 1)``, and out goes ``"<value> <n>"``
(key, timestamp and headers kept).

``WordCount`` is the logic: it gets the state as an argument, so test_app.py
runs it natively against a dict. ``WitWorld`` is what componentize-py exports
to the host (``init`` and ``process`` of the world ``stateful-pipe``).
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

try:  # inside the component: componentize-py generates these modules
    from componentize_py_types import Err
    from wit_world.imports import state as host_state
    from wit_world.imports.types import Event, PipeError
except ImportError:  # natively (tests): same fields, no host
    Err = None
    host_state = None

    @dataclass
    class Event:  # type: ignore[no-redef]
        key: Optional[bytes]
        value: bytes
        timestamp: Optional[int]
        headers: List[Tuple[str, str]]

    PipeError = None  # type: ignore[assignment,misc]


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


_pipe = None


class WitWorld:
    """The component's exports. Raising ``Err(PipeError(...))`` returns the WIT pipe-error."""

    def init(self, config: str) -> None:
        global _pipe
        _pipe = WordCount(config)

    def process(self, batch) -> List[Event]:
        if _pipe is None:
            raise Err(PipeError(message="process called before init", retryable=False, event_index=None))
        try:
            return _pipe.process(batch, host_state)
        except Err as e:
            if isinstance(e.value, PipeError):
                raise
            # A state-error from the host (StateError_Backend / _Invalid / _Limit).
            kind = type(e.value).__name__.rsplit("_", 1)[-1].lower()
            raise Err(PipeError(message=f"state {kind}: {e.value.value}", retryable=kind == "backend", event_index=None)) from None
