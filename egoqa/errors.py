"""The one family of errors egoqa raises on purpose; each message says what happened and what to do.

The CLI catches `EgoqaError` and prints its message as one line (exit 1); anything else is a bug
and shows a traceback.
"""

from __future__ import annotations


class EgoqaError(Exception):
    """Something the user can fix; the message says how."""

    exit_code = 1


class ConfigError(EgoqaError):
    """A run configuration (preset, TOML file or --set override) is invalid."""


class StyleError(EgoqaError):
    """A prompt style file is invalid or unknown."""


class DatasetError(EgoqaError):
    """An annotation file cannot be read at all (single bad records are reported, not raised)."""


class DatabaseError(EgoqaError):
    """The database cannot be opened, is read-only, or has the wrong schema."""


class SchemaMismatch(DatabaseError):
    """The database schema is older or newer than this code."""


class ReadOnlyViolation(EgoqaError):
    """A write was attempted through a read-only connection (`egoqa sql`)."""


class UnknownRun(EgoqaError):
    """No run of that name exists in the database."""


class VideoError(EgoqaError):
    """A video file is missing, unreadable or truncated; fails only the jobs that need it."""

    def __init__(self, message: str, kind: str = "video") -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamError(EgoqaError):
    """A server answering for an engine (`backend = "openai"`) failed one request; `kind` says
    how (upstream_unavailable, context_too_long, bad_response, bad_request) and `retryable`
    whether the job may run again."""

    def __init__(self, message: str, kind: str, retryable: bool) -> None:
        super().__init__(message)
        self.kind, self.retryable = kind, retryable


class UpstreamAuthError(EgoqaError):
    """The server refused the API key (401/403): the worker stops and its jobs stay ready; set
    the variable `api_key_env` names to a key the server accepts."""

    exit_code = (
        3  # egoqa.work.supervisor.WORKER_CANNOT_START: a restarted worker would be refused too
    )


class ModelLoadError(EgoqaError):
    """A model id or path cannot be loaded."""


class OutOfMemory(EgoqaError):
    """A batch did not fit in device (or host) memory; the worker splits it and retries."""


class OutputError(EgoqaError):
    """A file or folder egoqa was asked to write (report --out, export -o) cannot be written."""


class Interrupted(EgoqaError):
    """Stopped by Ctrl-C (SIGINT) before it finished; nothing was changed."""

    exit_code = 130


class StatementTimeout(EgoqaError):
    """A read-only statement ran past its --timeout and was cancelled."""
