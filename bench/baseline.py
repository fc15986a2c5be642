"""The bare baseline: FastAPI + redis-py, one HGETALL per request, nothing else."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

client: aioredis.Redis | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global client
    client = aioredis.Redis.from_url(os.environ["BASELINE_REDIS_URL"], decode_responses=True)
    yield
    await client.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/v1/tasks/{task_id}")
async def get_task(task_id: str) -> dict[str, str]:
    assert client is not None
    fields: dict[str, str] = await client.hgetall(f"tasks:task:{task_id}")
    return fields


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False
    )
