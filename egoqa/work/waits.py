"""The fixed waits of workers and their supervisor, each a setting: an environment variable, read
here and nowhere else, replaces its default (the defaults suit every run; tests shorten them)."""

from __future__ import annotations

import os

from egoqa.errors import ConfigError

# At most this long between two heartbeats; a beat also comes every third of the lease.
HEARTBEAT_ENV, HEARTBEAT_S = "EGOQA_HEARTBEAT_S", 5.0
# The longest pause of an idle worker between two claims that found nothing.
IDLE_MAX_ENV, IDLE_MAX_S = "EGOQA_IDLE_MAX_S", 2.0
# How often a worker returns expired leases, and the jobs of workers known dead, to the queue.
REAP_ENV, REAP_S = "EGOQA_REAP_S", 5.0
# How long an idle worker waits on other workers' leases before it says whose they are.
WAIT_NOTE_ENV, WAIT_NOTE_S = "EGOQA_WAIT_NOTE_S", 5.0
# How often a supervisor looks at its workers (restarts, stops) and redraws their progress.
SUPERVISOR_TICK_ENV, SUPERVISOR_TICK_S = "EGOQA_SUPERVISOR_TICK_S", 1.0


def seconds(name: str, default: float) -> float:
    """$name as a positive number of seconds, or `default` where it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        s = float(value)
    except ValueError:
        s = float("nan")
    if not s > 0 or s == float("inf"):
        raise ConfigError(
            f"${name}={value!r} is not a number of seconds: set it to one above 0 "
            f"(default {default:g}), or unset it"
        )
    return s


def check() -> None:
    """Refuse a bad setting at once, before a model loads or a supervisor starts workers that
    would each stop on it."""
    for read in (heartbeat_s, idle_max_s, reap_s, wait_note_s, supervisor_tick_s):
        read()


def heartbeat_s() -> float:
    return seconds(HEARTBEAT_ENV, HEARTBEAT_S)


def idle_max_s() -> float:
    return seconds(IDLE_MAX_ENV, IDLE_MAX_S)


def reap_s() -> float:
    return seconds(REAP_ENV, REAP_S)


def wait_note_s() -> float:
    return seconds(WAIT_NOTE_ENV, WAIT_NOTE_S)


def supervisor_tick_s() -> float:
    return seconds(SUPERVISOR_TICK_ENV, SUPERVISOR_TICK_S)
