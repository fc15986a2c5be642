"""One exception type per meaning; `service.api.problems` maps each to a problem+json answer."""

from __future__ import annotations


class ProblemError(Exception):
    """An error with an HTTP meaning (RFC 9457 problem details)."""

    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal-error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail

    @property
    def type(self) -> str:
        return f"urn:tasks:problem:{self.slug}"


class TaskNotFound(ProblemError):
    status, title, slug = 404, "Task not found", "task-not-found"


class InvalidCursor(ProblemError):
    status, title, slug = 400, "Invalid cursor", "invalid-cursor"


class Unauthorized(ProblemError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class PreconditionFailed(ProblemError):
    status, title, slug = 412, "Precondition failed", "precondition-failed"


class IdempotencyKeyReused(ProblemError):
    status, title, slug = 422, "Idempotency key reused", "idempotency-key-reused"


class StoreUnavailable(ProblemError):
    status, title, slug = 503, "Store unavailable", "store-unavailable"
