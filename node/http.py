"""The operator endpoint: ``/metrics`` (Prometheus text), ``/healthz`` (alive), ``/readyz``.

A small ASGI app served by Hypercorn's trio worker inside the node's nursery, so it stops with
the node. ``/readyz`` answers 200 only once every role has started and the listeners are bound.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from p2pchat.node.errors import StartupError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def make_app(
    render_metrics: Callable[[], bytes], content_type: str, is_ready: Callable[[], bool]
) -> ASGIApp:
    """Build the ASGI app for the three endpoints (GET and HEAD only)."""

    async def respond(send: Send, status: int, body: bytes, ctype: bytes, head: bool) -> None:
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        text = b"text/plain; charset=utf-8"
        method, path = scope["method"], scope["path"]
        if method not in ("GET", "HEAD"):
            await respond(send, 405, b"method not allowed\n", text, False)
        elif path == "/metrics":
            await respond(send, 200, render_metrics(), content_type.encode(), method == "HEAD")
        elif path == "/healthz":
            await respond(send, 200, b"ok\n", text, method == "HEAD")
        elif path == "/readyz":
            ready = is_ready()
            body = b"ready\n" if ready else b"starting\n"
            await respond(send, 200 if ready else 503, body, text, method == "HEAD")
        else:
            await respond(send, 404, b"not found\n", text, method == "HEAD")

    return app


async def serve_http(
    listen: str, app: ASGIApp, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on ``listen`` (host:port) until cancelled.

    ``task_status.started`` receives the bound ``host:port`` (useful with port 0).

    Raises:
        StartupError: the address cannot be bound.
    """
    config = HypercornConfig()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0

    async def serve_app(
        *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await serve(app, config, task_status=task_status)

    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(serve_app)
            task_status.started(binds[0].removeprefix("http://"))
    except* OSError as group:
        # Hypercorn binds inside its own nurseries, so the error arrives wrapped in groups.
        error = _first_leaf(group)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise StartupError(f"metrics endpoint {listen}: {reason}") from None


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
