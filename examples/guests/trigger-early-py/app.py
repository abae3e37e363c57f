"""The ``trigger-early`` window trigger in Python (the Rust one is
``examples/guests/trigger-early``; both must fire alike): fire every
``every`` events of a window (default 100), from the count in the window's
summary, and again when the window ends.

Config: ``{"every": 100, "at_end": "native"}``. With ``"at_end": "timer"``
the native end-of-window fire is off and the trigger asks instead, once per
window, for an event-time timer at the window's end (remembered in the
per-window state the host keeps), and fires from ``on_timer``; a window the
watermark has already passed (a late event within the allowed lateness)
gets no timer, which would be in the past: it fires at once instead.

``decide`` is the logic, tested natively in test_app.py; ``WitWorld`` at the
bottom is what componentize-py exports (world ``trigger`` of wit/).
"""

import json

MARK = b"\x01"


class Config:
    def __init__(self, text):
        try:
            fields = json.loads(text)
        except ValueError as error:
            raise ValueError(f"bad config: {error}")
        if not isinstance(fields, dict):
            raise ValueError("bad config: expected a JSON object")
        unknown = set(fields) - {"every", "at_end"}
        if unknown:
            raise ValueError(f"bad config: unknown field `{sorted(unknown)[0]}`")
        self.every = fields.get("every", 100)
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError("`every` must be at least 1")
        at_end = fields.get("at_end", "native")
        if at_end not in ("native", "timer"):
            raise ValueError(f'`at_end` is `{at_end}`: expected "native" or "timer"')
        self.timer = at_end == "timer"


def decide(config, count, end, state, watermark=None):
    """(fire?, new state, timer end or None) for an event that made the
    window's count ``count``, the watermark at ``watermark``."""
    ended = watermark is not None and watermark >= end
    fire = count % config.every == 0 or (config.timer and ended)
    asked = state is not None
    new_state = MARK if (config.timer or asked) else None
    timer = end if (config.timer and not asked and not ended) else None
    return fire, new_state, timer


try:
    import wit_world
    from componentize_py_types import Err
    from wit_world.imports import trigger_types as tt
    from wit_world.imports.types import PipeError
except ImportError:  # natively, in tests: only `decide` and `Config` are used
    wit_world = None

if wit_world is not None:
    CONFIG = None

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            global CONFIG
            try:
                CONFIG = Config(config)
            except ValueError as error:
                raise Err(PipeError(message=str(error), retryable=False, event_index=None))
            return tt.TriggerOptions(fire_at_end=not CONFIG.timer)

        def on_events(self, calls):
            answers = []
            for call in calls:
                window = call.window
                fire, state, timer = decide(
                    CONFIG, window.count, window.end, window.state, window.watermark
                )
                answers.append(
                    tt.TriggerAnswer(
                        decision=tt.Decision.FIRE if fire else tt.Decision.CONTINUE,
                        state=state,
                        timer=None if timer is None else tt.TimerRequest(domain=tt.TimeDomain.EVENT, at=timer),
                    )
                )
            return answers

        def on_timer(self, calls):
            return [
                tt.TriggerAnswer(decision=tt.Decision.FIRE, state=call.window.state, timer=None)
                for call in calls
            ]
