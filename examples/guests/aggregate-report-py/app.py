"""The ``aggregate-report`` window aggregator in Python (the Rust one is
``examples/guests/aggregate-report``; both must report alike): each window
becomes one event, ``<key>,<start>,<end>,<events>,<first>,<last>``, keyed
by the window's key and timestamped with its end, from an accumulator of
the count and the first and last events by timestamp (ties: by arrival).

The accumulator has the Rust guest's format: ``count`` (u64), then the
first and the last event as ``timestamp`` (u64; 0 without one), value
length (u32) and value, little-endian. Either guest can so read what the
other saved.

``Report`` is the logic, tested natively in test_app.py; ``WitWorld`` at
the bottom is what componentize-py exports (world ``aggregator`` of wit/).
"""

import json
import struct


class Report:
    def __init__(self, count, first, last):
        self.count = count
        self.first = first  # (timestamp, value)
        self.last = last

    @staticmethod
    def of(timestamp, value):
        end = (timestamp or 0, bytes(value))
        return Report(1, end, end)

    def add(self, timestamp, value):
        time = timestamp or 0
        self.count += 1
        if time < self.first[0]:
            self.first = (time, bytes(value))
        if time >= self.last[0]:
            self.last = (time, bytes(value))

    def merge(self, later):
        """``self`` then ``later`` (a window that starts later)."""
        self.count += later.count
        if later.first[0] < self.first[0]:
            self.first = later.first
        if later.last[0] >= self.last[0]:
            self.last = later.last

    def encode(self):
        out = struct.pack("<Q", self.count)
        for time, value in (self.first, self.last):
            out += struct.pack("<QI", time, len(value)) + value
        return out

    @staticmethod
    def decode(data):
        data = bytes(data)
        try:
            (count,) = struct.unpack_from("<Q", data, 0)
            at = 8
            ends = []
            for _ in range(2):
                time, length = struct.unpack_from("<QI", data, at)
                at += 12
                if at + length > len(data):
                    raise ValueError
                ends.append((time, data[at : at + length]))
                at += length
        except (struct.error, ValueError):
            raise ValueError(f"corrupt accumulator ({len(data)} bytes)")
        return Report(count, ends[0], ends[1])

    def line(self, key, start, end):
        key = b"" if key is None else bytes(key)
        text = lambda b: b.decode("utf-8", errors="replace")
        return f"{text(key)},{start},{end},{self.count},{text(self.first[1])},{text(self.last[1])}"


class Config:
    def __init__(self, text):
        try:
            fields = json.loads(text)
        except ValueError as error:
            raise ValueError(f"bad config: {error}")
        if not isinstance(fields, dict):
            raise ValueError("bad config: expected a JSON object")
        unknown = set(fields) - {"fail_on", "trap_on"}
        if unknown:
            raise ValueError(f"bad config: unknown field `{sorted(unknown)[0]}`")
        self.fail_on = fields.get("fail_on")
        self.trap_on = fields.get("trap_on")


def add(config, accumulator, events):
    """The new accumulator of one add call; ``events`` as (timestamp, value)."""
    report = None if accumulator is None else Report.decode(accumulator)
    for timestamp, value in events:
        if config.fail_on is not None and bytes(value) == config.fail_on.encode():
            raise ValueError(f"refused the event `{bytes(value).decode(errors='replace')}`")
        if report is None:
            report = Report.of(timestamp, value)
        else:
            report.add(timestamp, value)
    if report is None:
        raise ValueError("an add call with no event")
    return report.encode()


def merge(accumulators):
    report = Report.decode(accumulators[0])
    for part in accumulators[1:]:
        report.merge(Report.decode(part))
    return report.encode()


try:
    import wit_world
    from componentize_py_types import Err
    from wit_world.imports.types import Event, PipeError
except ImportError:  # natively, in tests: only the logic above is used
    wit_world = None

if wit_world is not None:
    CONFIG = Config("{}")

    def failure(error):
        return Err(PipeError(message=str(error), retryable=False, event_index=None))

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            global CONFIG
            try:
                CONFIG = Config(config)
            except ValueError as error:
                raise failure(error)

        def add(self, calls):
            out = []
            for call in calls:
                if CONFIG.trap_on is not None and any(
                    bytes(e.value) == CONFIG.trap_on.encode() for e in call.events
                ):
                    raise SystemExit("trapped on purpose")
                try:
                    out.append(add(CONFIG, call.accumulator, [(e.timestamp, e.value) for e in call.events]))
                except ValueError as error:
                    raise failure(error)
            return out

        def merge(self, calls):
            try:
                return [merge(call.accumulators) for call in calls]
            except ValueError as error:
                raise failure(error)

        def emit(self, calls):
            out = []
            for call in calls:
                try:
                    report = Report.decode(call.accumulator)
                except ValueError as error:
                    raise failure(error)
                window = call.window
                line = report.line(window.key, window.start, window.end)
                out.append([Event(key=window.key, value=line.encode(), timestamp=window.end, headers=[])])
            return out
