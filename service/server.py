"""uvicorn with the Kubernetes shutdown sequence, and the metrics listener beside it.

One process, one event loop, two listeners: the API on PORT and `/metrics` on
TASKS_METRICS_PORT (a second uvicorn server, no thread). The metrics listener opens before the
API's and closes after it, so every scrape, the drain's included, finds it.

On the first SIGTERM (or SIGINT):
  1. /readyz answers 503 at once, so the endpoints controller stops routing new traffic here;
  2. wait TASKS_SHUTDOWN_DELAY_SECONDS while load balancers catch up (we still serve meanwhile,
     each response with `Connection: close` (service.api.edge), so keep-alive clients
     reconnect elsewhere);
  3. close the API listener and let in-flight requests finish, for at most
     TASKS_GRACEFUL_TIMEOUT_SECONDS;
  4. close the store (the app's lifespan shutdown);
  5. close the metrics listener and exit 0.
A second SIGINT (Ctrl-C twice) exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.problems import problem
from service.app import create_app
from service.lifecycle import Lifecycle
from service.observability.metrics import metrics_app
from service.settings import Settings

log = logging.getLogger("tasks.server")

FORCED_EXIT_CODE = 130
GC_YOUNG_THRESHOLD = 7000  # CPython's default is 700
METRICS_GRACEFUL_TIMEOUT_SECONDS = 1  # a scrape is one quick answer


def tune_gc() -> None:
    """Garbage-collect for a server: everything built so far (modules, FastAPI's routes and
    pydantic's schemas) lives as long as the process, so it is frozen out of the collector's
    scans; and the young generation is collected every 7000 allocations rather than 700, so
    objects of requests still in flight are not promoted to be scanned again and again.
    Measured under wrk (16 connections): about a tenth of the instructions per GET."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on each request's head (request line plus
    headers): past `max_head_bytes` the request is answered 431 and the connection closed.
    httptools has no such bound of its own, so one endless header would grow the process
    without end. Bytes are counted as they arrive, before the parser buffers them."""

    max_head_bytes = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(OneWritePerStep(transport, self.loop))

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def data_received(self, data: bytes) -> None:
        while data and not self.transport.is_closing():
            if not self._in_head:
                super().data_received(data)
                return
            room = self.max_head_bytes - self._head_bytes
            if room <= 0:
                self._refuse()
                return
            chunk, data = data[:room], data[room:]
            self._head_bytes += len(chunk)
            super().data_received(chunk)
        if self._in_head and self._head_bytes >= self.max_head_bytes:
            self._refuse()

    def _refuse(self) -> None:
        if self.transport.is_closing():
            return
        answer = problem(431, detail=f"the request head may be at most {self.max_head_bytes} bytes")
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            + b"".join(name + b": " + value + b"\r\n" for name, value in answer.raw_headers)
            + b"connection: close\r\n\r\n"
            + answer.body
        )
        self.transport.close()


class OneWritePerStep(asyncio.Transport):
    """A transport that sends what is written to it in one step of the event loop as one write.

    uvicorn writes a response's head when the app starts it and its body when the app sends
    it: two system calls and two TCP segments for every response, where one does. Under wrk
    on the 2-core CI VM, a GET's CPU fell from 134-137 us to 110-113, a POST's from 154-161 to
    131-139. What is written waits for the end of the step (`call_soon`), never for more data."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending and not self._transport.is_closing():  # else the peer is gone
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)

    def close(self) -> None:
        self._flush()  # what was written goes before the FIN
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()  # dropped, as the transport drops its own buffer
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()


class MetricsServer(uvicorn.Server):
    """The metrics listener. It leaves the signals to the API's server, which stops it last."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # a port in use exits here (uvicorn: exit status 1)
        self.listening.set()


class GracefulServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, lifecycle: Lifecycle, delay: float, metrics: MetricsServer
    ) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.delay = delay
        self.metrics = metrics
        self._shutdown: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        metrics = asyncio.create_task(self.metrics.serve())
        listening = asyncio.create_task(self.metrics.listening.wait())
        # The metrics port is bound first: when it cannot be, the API never starts.
        await asyncio.wait((metrics, listening), return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if metrics.done():
            await metrics  # its failure is the process's
            return
        try:
            await super().serve(sockets)  # the API, until steps 1-4 are done
        finally:
            self.metrics.force_exit = self.force_exit
            self.metrics.should_exit = True  # 5
            await metrics

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Replaces uvicorn's handlers, which would re-raise the signal at exit (exit status -15).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.on_signal(signal.Signals(sig))

    def on_signal(self, sig: signal.Signals) -> None:
        if self._shutdown is None:
            log.info("shutdown requested", extra={"signal": sig.name, "delay_seconds": self.delay})
            self.lifecycle.start_draining()  # 1
            self._shutdown = asyncio.get_running_loop().create_task(self._stop_after_delay())
        elif sig == signal.SIGINT:
            log.warning("second interrupt: exiting now")
            self.force_exit = True
            self.should_exit = True

    async def _stop_after_delay(self) -> None:
        await asyncio.sleep(self.delay)  # 2
        log.info("closing the listener, draining in-flight requests")
        self.should_exit = True  # 3 and 4: uvicorn's shutdown, then the app's lifespan


def serve(settings: Settings) -> int:
    """Serve the API on settings.port and /metrics on settings.metrics_port until a signal;
    the process exit code."""
    lifecycle = Lifecycle()
    app = create_app(settings, lifecycle)
    # Both listeners bound the request head alike: the metrics port is no softer a target.
    http = type(
        "HeadBoundProtocol", (BoundedHeadProtocol,), {"max_head_bytes": settings.max_header_bytes}
    )
    shared: dict[str, Any] = {
        "host": settings.host,
        "loop": "auto",  # uvloop when installed
        "http": http,
        "log_config": None,  # logging is ours (JSON lines on stdout)
        "access_log": False,  # our middleware writes the API's access line
        "server_header": False,
    }
    config = uvicorn.Config(
        app,
        port=settings.port,
        lifespan="on",
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_seconds),
        **shared,
    )
    metrics_config = uvicorn.Config(
        metrics_app(app.state.metrics),
        port=settings.metrics_port,
        lifespan="off",  # the store's lifespan is the API's
        timeout_graceful_shutdown=METRICS_GRACEFUL_TIMEOUT_SECONDS,
        **shared,
    )
    server = GracefulServer(
        config, lifecycle, settings.shutdown_delay_seconds, MetricsServer(metrics_config)
    )
    tune_gc()
    server.run()
    return FORCED_EXIT_CODE if server.force_exit else 0
