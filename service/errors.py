"""One exception type per meaning. They speak the domain, never HTTP: `service.api.problems`
alone turns each into a status and an application/problem+json answer."""

from __future__ import annotations

from enum import StrEnum


class TasksError(Exception):
    """A failure the caller is told about; `detail` says what happened, for a person."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or type(self).__name__)
        self.detail = detail


class TaskNotFound(TasksError):
    """No task has that id (or the id cannot be one)."""


class InvalidCursor(TasksError):
    """A listing cursor this API did not hand out."""


class Unauthorized(TasksError):
    """A write without a valid API key."""


class PreconditionFailed(TasksError):
    """The task changed since the version the caller named (If-Match)."""

    def __init__(self) -> None:
        super().__init__("the task changed since that ETag was issued")


class IdempotencyKeyReused(TasksError):
    """An Idempotency-Key already used with another body."""


class UnsupportedMediaType(TasksError):
    """A write whose body is not JSON; `method` is the request's, for the Accept-* answer."""

    def __init__(self, method: str) -> None:
        super().__init__("the body must be JSON (Content-Type: application/json)")
        self.method = method


class BodyTooLarge(TasksError):
    """A request body longer than TASKS_MAX_BODY_BYTES (declared or counted)."""


class Overloaded(TasksError):
    """More requests at once than the process serves in time: retry shortly."""


class Unavailability(StrEnum):
    """Why the store could not answer. Used as the `reason` label of tasks_store_errors_total,
    so the set is closed: an error that fits none is `error`."""

    timeout = "timeout"  # no answer within TASKS_REDIS_TIMEOUT_SECONDS
    connection = "connection"  # refused, reset, unreachable, authentication failed
    readonly = "readonly"  # a replica (READONLY): a failover happened or is under way
    masterdown = "masterdown"  # a replica that lost its primary (MASTERDOWN)
    loading = "loading"  # restarting, loading its data set (LOADING)
    busy = "busy"  # a script or DEBUG SLEEP holds the server (BUSY)
    oom = "oom"  # out of memory under maxmemory with noeviction (OOM)
    misconf = "misconf"  # refusing writes after a failed save (MISCONF)
    tryagain = "tryagain"  # cluster resharding (TRYAGAIN)
    clusterdown = "clusterdown"  # cluster not serving (CLUSTERDOWN)
    error = "error"  # any other error reply


class StoreUnavailable(TasksError):
    """The store cannot answer now; `reason` says why. Retrying later may succeed."""

    def __init__(self, reason: Unavailability, detail: str | None = None) -> None:
        super().__init__(detail or f"store unavailable: {reason.value}")
        self.reason = reason
