"""JSON-lines logging to one stream (stdout for the service, stderr for jobs). No files."""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, TextIO, cast

from pydantic_core import to_json

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being served, added to every log line written while serving it."""

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI copy of the message
    "taskName",
}


def _encode(entry: dict[str, Any]) -> str:
    # pydantic-core's encoder (Rust): a quarter of the json module's time for an access line.
    # A value JSON has no form for (an object in `extra`) is written as its str().
    return to_json(entry, fallback=str).decode()


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
        entry = self._head(record.created, record.levelname, record.name, record.getMessage())
        current = getattr(record, "request_id", None) or request_id.get()
        if current is not None:
            entry["request_id"] = current
        attributes = record.__dict__
        for key in self._extras(record):
            entry[key] = attributes[key]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry)

    def line(
        self, created: float, levelname: str, name: str, msg: str, fields: dict[str, Any]
    ) -> str:
        """What `format` writes for a record with these `extra` fields (request_id among them,
        if any) and no exception."""
        entry = self._head(created, levelname, name, msg)
        current = fields.get("request_id") or request_id.get()
        if current is not None:
            entry["request_id"] = current
        entry.update(fields)
        return _encode(entry)

    def _head(self, created: float, levelname: str, name: str, msg: str) -> dict[str, Any]:
        return {
            "ts": self._timestamp(created),
            "level": levelname.lower(),
            "logger": name,
            "msg": msg,
        }


def log_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """`logger.info(msg, extra=fields)` for a line written on every request (`fields` must not
    name LogRecord attributes). When the line's only destination is one JSON stream handler
    (as `configure_logging` sets up), it is written there as that handler would, without a
    LogRecord and the handler chain: a third of the time. Otherwise the same record goes
    through the same handlers, only without the caller lookup (a stack walk; the JSON lines do
    not show it) and the per-key collision checks of `extra`."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_json_handler(logger)
    if handler is not None:
        formatter = cast(JsonFormatter, handler.formatter)
        line = formatter.line(time.time(), "INFO", logger.name, msg, fields)
        with handler.lock:  # type: ignore[union-attr]  # a StreamHandler has its lock
            try:  # StreamHandler.emit, after its format
                handler.stream.write(line + handler.terminator)
                handler.stream.flush()
            except Exception:
                handler.handleError(_record(logger, msg, fields))
        return
    logger.handle(_record(logger, msg, fields))


def _record(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> logging.LogRecord:
    record = logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, msg, (), None)
    record.__dict__.update(fields)
    return record


def _sole_json_handler(logger: logging.Logger) -> logging.StreamHandler[TextIO] | None:
    """The one handler an INFO record of `logger` reaches, when that is a StreamHandler with our
    JsonFormatter and nothing on the way filters; else None."""
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return None
        for handler in current.handlers:
            if found is not None or handler.filters or handler.level > logging.INFO:
                return None
            found = handler
        current = current.parent if current.propagate else None
    if type(found) is logging.StreamHandler and type(found.formatter) is JsonFormatter:
        return found
    return None


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
