"""A TaskStore wrapper that times every operation and counts the ones that found the store down.

Each operation is declared once, from the protocol's own method (`get = _timed(TaskStore.get)`),
so its signature is the protocol's and the metrics label is the method's name; adding a method to
`TaskStore` without adding it here fails `mypy` (see `_check` below) and the test suite.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from service.errors import StoreUnavailable
from service.observability.metrics import Metrics
from service.store.base import TaskStore

P = ParamSpec("P")
R = TypeVar("R")


class _timed(Generic[P, R]):
    """An InstrumentedStore operation: calls the inner store's method of the same name, observes
    its duration under `operation=<name>`, and counts it as an error if the store was down."""

    def __init__(self, method: Callable[Concatenate[TaskStore, P], Coroutine[Any, Any, R]]) -> None:
        self.operation = method.__name__

    @overload
    def __get__(self, store: None, owner: type[InstrumentedStore]) -> _timed[P, R]: ...
    @overload
    def __get__(
        self, store: InstrumentedStore, owner: type[InstrumentedStore]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    def __get__(
        self, store: InstrumentedStore | None, owner: type[InstrumentedStore]
    ) -> _timed[P, R] | Callable[P, Coroutine[Any, Any, R]]:
        if store is None:
            return self
        operation = self.operation
        call: Callable[P, Coroutine[Any, Any, R]] = getattr(store.inner, operation)
        duration = store.metrics.store_duration.labels(operation)
        errors = store.metrics.store_errors

        @functools.wraps(call)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            except StoreUnavailable as exc:
                errors.labels(operation, exc.reason.value).inc()
                raise
            finally:
                duration.observe(time.perf_counter() - started)

        # Bound once per store: later lookups find it in the instance dict (no descriptor call).
        store.__dict__[operation] = timed
        return timed


class InstrumentedStore:
    """Every `TaskStore` operation of `inner`, timed (`tasks_store_operation_duration_seconds`)."""

    def __init__(self, inner: TaskStore, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def close(self) -> None:  # not an operation worth a latency series
        await self.inner.close()

    ping = _timed(TaskStore.ping)
    create = _timed(TaskStore.create)
    get = _timed(TaskStore.get)
    get_json = _timed(TaskStore.get_json)
    list = _timed(TaskStore.list)
    patch = _timed(TaskStore.patch)
    delete = _timed(TaskStore.delete)
    # the admin jobs' operations
    scan_ids = _timed(TaskStore.scan_ids)
    scan_completed = _timed(TaskStore.scan_completed)
    delete_completed = _timed(TaskStore.delete_completed)
    get_many = _timed(TaskStore.get_many)
    delete_unchanged = _timed(TaskStore.delete_unchanged)
    put_many = _timed(TaskStore.put_many)
    layout = _timed(TaskStore.layout)
    set_layout = _timed(TaskStore.set_layout)
    acquire_lock = _timed(TaskStore.acquire_lock)
    renew_lock = _timed(TaskStore.renew_lock)
    release_lock = _timed(TaskStore.release_lock)


def _check(store: InstrumentedStore) -> TaskStore:
    return store  # mypy proves here that InstrumentedStore is a whole TaskStore
