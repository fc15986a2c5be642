"""The floor under both GET handlers: uvicorn (httptools, uvloop) running a raw ASGI callable that
does one redis-py HGETALL and answers `json.dumps` of it. No framework, no middleware, no log
line: what a GET costs in Python on this stack before any of a service's own work.

And under a create: POST reads the body, `json.loads` it, writes it as a hash (one redis-py HSET)
and answers 201 with `json.dumps` of it: what a POST costs on this stack beside that GET."""

from __future__ import annotations

import json
import os
import uuid

import redis.asyncio as aioredis
import uvicorn
from starlette.types import Receive, Scope, Send

PREFIX = "/v1/tasks/"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        client = aioredis.Redis.from_url(os.environ["BASELINE_REDIS_URL"], decode_responses=True)
        while (await receive())["type"] != "lifespan.shutdown":
            scope["state"]["client"] = client
            await send({"type": "lifespan.startup.complete"})
        await client.aclose()
        await send({"type": "lifespan.shutdown.complete"})
        return
    client = scope["state"]["client"]
    status = 200
    if scope["method"] == "POST":
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        fields = {"id": uuid.uuid4().hex, **json.loads(b"".join(chunks))}
        await client.hset("floor:task:" + fields["id"], mapping=fields)
        status = 201
    else:
        fields = await client.hgetall("tasks:task:" + scope["path"][len(PREFIX) :])
    body = json.dumps(fields).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False
    )
