"""A job's states, apart from the schema's models so that the queue's SQL needs no ORM import
(the ORM is the heaviest import of a light command such as `enqueue` or `status`)."""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    BLOCKED = "blocked"
    READY = "ready"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
