"""JSON-lines logging to one stream (stdout for the service, stderr for jobs). No files."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being served, added to every log line written while serving it."""

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI copy of the message
    "taskName",
}


_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode
_EXTRA_LAYOUTS_KEPT = 256


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, then any `extra` fields.

    It formats the access line of every request, so it does the least per record: one shared
    encoder, the timestamp's seconds formatted once per second, and which attributes of a record
    are `extra` fields worked out once per layout of attributes (one per call site, in practice).
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""
        self._extra_keys: dict[tuple[str, ...], tuple[str, ...]] = {}

    def _extras(self, record: logging.LogRecord) -> tuple[str, ...]:
        layout = tuple(record.__dict__)
        keys = self._extra_keys.get(layout)
        if keys is None:
            keys = tuple(key for key in layout if key not in _STANDARD_ATTRS)
            if len(self._extra_keys) < _EXTRA_LAYOUTS_KEPT:
                self._extra_keys[layout] = keys
        return keys

    def _timestamp(self, created: float) -> str:
        """`2024-05-01T12:00:00.123+00:00` (UTC, milliseconds, truncated like `record.msecs`)."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        current = getattr(record, "request_id", None) or request_id.get()
        if current is not None:
            entry["request_id"] = current
        attributes = record.__dict__
        for key in self._extras(record):
            entry[key] = attributes[key]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry)


def log_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """`logger.info(msg, extra=fields)` for a line written on every request: the same record
    through the same handlers, without the caller lookup (a stack walk; the JSON lines do not show
    it) and the per-key collision checks of `extra` (`fields` must not name LogRecord
    attributes)."""
    if logger.isEnabledFor(logging.INFO):
        record = logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, msg, (), None)
        record.__dict__.update(fields)
        logger.handle(record)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every logger (uvicorn's included) as JSON lines to `stream` (default stdout)."""
    # Nothing we write reads the thread or process names: don't look them up for every record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
