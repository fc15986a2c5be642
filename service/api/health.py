"""Probes and process facts: /livez, /readyz, /version (/metrics has a port of its own)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.deps import lifecycle_of, settings_of, store_of
from service.api.problems import RETRY_AFTER_SECONDS, problem
from service.errors import StoreUnavailable, Unavailability
from service.store.base import LayoutMismatch, ShardCountMismatch

router = APIRouter(tags=["operations"])


@router.get("/livez", summary="The process is alive (checks no dependency)")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


_READ_ONLY = frozenset({Unavailability.readonly, Unavailability.masterdown})


def _store_not_ready(store: str, detail: str, **extra: Any) -> JSONResponse:
    """/readyz's 503 when the process serves but its store check fails (`store` says how)."""
    return problem(
        503, title="Not ready", detail=detail, checks={"draining": False, "store": store}, **extra
    )


@router.get(
    "/readyz",
    summary="Ready for traffic: store reachable and writable, its data layout served, not draining",
    description="The store check: Redis answers and is a primary (`ROLE`); in cluster mode, the "
    "cluster serves every slot (`CLUSTER INFO`, asked of one node) and the recorded shard count "
    "is the configured one. Then the stored data layout admits this build.",
    responses={503: {"content": {"application/problem+json": {}}}},
)
async def readyz(request: Request) -> JSONResponse:
    if lifecycle_of(request).draining:
        return problem(
            503, title="Not ready", detail="draining: shutting down", checks={"draining": True}
        )
    try:
        await store_of(request).ping()
    except StoreUnavailable as exc:
        store = "read-only" if exc.reason in _READ_ONLY else "unreachable"
        return _store_not_ready(
            store,
            f"store {store} ({exc.reason.value})",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    except LayoutMismatch as exc:
        # Data contracted past this build, or not yet migrated to what it needs: no traffic.
        return _store_not_ready(
            "layout-mismatch",
            str(exc),
            layout={
                "stored": exc.stored.current,
                "min_compatible": exc.stored.min_compatible,
                "understood": exc.build.version,
            },
        )
    except ShardCountMismatch as exc:
        return _store_not_ready("shard-count-mismatch", str(exc))
    return JSONResponse({"status": "ready", "checks": {"draining": False, "store": "ok"}})


@router.get("/version", summary="What is running")
async def version(request: Request) -> dict[str, str]:
    settings = settings_of(request)
    return {
        "version": settings.version,
        "git_revision": settings.git_revision,
        "build_date": settings.build_date,
    }
