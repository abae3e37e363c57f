"""``migrate-v2`` in Python (world ``migrating-pipe``, state version ``2``).

The same pipe as the Rust ``examples/guests/migrate-v2``: counts each
event's value as an 8-byte little-endian integer and emits
``<value> <count>``; ``migrate`` converts version ``1``'s decimal text
(``examples/guests/migrate-v1``). Config ``{"migrate_fail_on": "KEY"}``
makes ``migrate`` fail at that key.
"""

import json

import plumber_pipe
from plumber_pipe import Event, PipeError


class CountLe:
    def __init__(self, config: str):
        parsed = json.loads(config or "{}")
        self.fail_on = parsed.get("migrate_fail_on") if isinstance(parsed, dict) else None

    def process(self, batch, state):
        keys = [e.value.decode("utf-8", "replace") for e in batch.events]
        stored = state.get_many(keys)
        counts = {}
        out = []
        for i, (e, key, value) in enumerate(zip(batch.events, keys, stored)):
            if key in counts:
                current = counts[key]
            elif value is None:
                current = 0
            elif len(value) == 8:
                current = int.from_bytes(value, "little")
            else:
                raise PipeError(f"state of `{key}` is not an 8-byte count: {value!r}", event_index=i)
            counts[key] = current + 1
            state.set(key, counts[key].to_bytes(8, "little"))
            out.append(Event(key=e.key, value=f"{key} {counts[key]}".encode("utf-8"), timestamp=e.timestamp, headers=e.headers))
        return out


FAIL_ON = {}


def migrate(from_version, batch):
    if from_version != "1":
        raise PipeError(f"cannot migrate state of version `{from_version}`")
    for key, value in batch:
        if key == FAIL_ON.get("key"):
            raise PipeError(f"refusing to migrate key `{key}`")
        yield key, int(value.decode("ascii")).to_bytes(8, "little")


class Pipe(CountLe):
    def __init__(self, config: str):
        super().__init__(config)
        FAIL_ON["key"] = self.fail_on


# componentize-py exports the class named WitWorld.
WitWorld = plumber_pipe.export_versioned(Pipe, "2", migrate)
