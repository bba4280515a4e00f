"""The HTTP(S) server under both apps: uvicorn (asyncio, TLS) running the Flask app.

Why not waitress: waitress cannot speak TLS, and both ends of every
federated link must (the server's pushes to clients carry signed training
requests). uvicorn does TLS itself (``ssl`` of the standard library) and,
being asyncio, holds an idle or half-sent connection as a small coroutine
state, not a thread. The Flask (WSGI) app runs in a thread pool
(``a2wsgi.WSGIMiddleware``). Three bounds keep unauthenticated connections
from starving the app:

- a request head (request line and headers) must arrive within
  ``header_timeout`` seconds of the connection opening (or of the previous
  response on a kept-alive connection), else the connection is closed;
- :class:`BufferedBody` reads the whole body on the event loop before the
  app sees the request, so a thread is only taken by complete requests; a
  body that does not arrive within ``body_timeout`` seconds is answered 408,
  one over ``max_body`` bytes 413;
- the listen backlog is ``backlog`` and open connections are capped at
  ``max_connections`` (answered 503 past it, without reading).

Example:
  >>> from flask import Flask
  >>> server = HttpServer(Flask("x"), "127.0.0.1", 0)
  >>> server.effective_port > 0, server.scheme
  (True, 'http')
  >>> server.close()
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

log = logging.getLogger(__name__)


class BufferedBody:
    """ASGI middleware: the request body is read in full (bounded in size and time) first.

    Args:
      app: the ASGI app.
      max_body: largest body in bytes (413 past it).
      body_timeout: seconds for the whole body to arrive (408 past it).
    """

    def __init__(self, app, max_body: int, body_timeout: float):
        self.app, self.max_body, self.body_timeout = app, max_body, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size = [], 0

        async def read_all():
            nonlocal size
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return False
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    return None
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    return True

        try:
            complete = await asyncio.wait_for(read_all(), self.body_timeout)
        except asyncio.TimeoutError:
            return await _plain(send, 408, "request body not received in time")
        if complete is None:
            return await _plain(send, 413, f"body over {self.max_body} bytes")
        if not complete:
            return None
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _plain(send, status: int, message: str):
    data = ('{"error": "%s"}' % message).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def _protocol(header_timeout: float):
    """uvicorn's h11 protocol, closing connections whose request head is late."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._deadline = self.loop.call_later(header_timeout, self._head_late)

        def _head_late(self):
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def handle_events(self):
            # A request head arrived (or more data): the head deadline is met.
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._deadline.cancel()

        def on_response_complete(self):
            super().on_response_complete()
            self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout, self._head_late)

        def connection_lost(self, exc):
            self._deadline.cancel()
            super().connection_lost(exc)

    return Protocol


class HttpServer:
    """A WSGI app served over HTTP or HTTPS by uvicorn, in a thread of its own.

    The socket is bound at construction (so ``effective_port`` is known
    before :meth:`run`); :meth:`run` serves until :meth:`close`.

    Args:
      app: the WSGI (Flask) app.
      host, port: where to listen (port 0: a free one).
      threads: WSGI worker threads.
      tls_cert, tls_key: PEM certificate chain and key: serve HTTPS.
      max_body: largest request body in bytes.
      header_timeout: seconds for a request head to arrive.
      body_timeout: seconds for a request body to arrive.
      max_connections: open connections answered before 503s.
      backlog: the listen backlog.
    """

    def __init__(self, app, host: str, port: int, *, threads: int = 8,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 max_body: int = 1 << 20, header_timeout: float = 10.0,
                 body_timeout: float = 30.0, max_connections: int = 4096,
                 backlog: int = 2048):
        import uvicorn
        from a2wsgi import WSGIMiddleware

        if bool(tls_cert) != bool(tls_key):
            raise ValueError("TLS needs both a certificate and its key "
                             f"(got certificate={tls_cert!r}, key={tls_key!r})")
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.sock = socket.socket(family, kind, proto)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        self.effective_port = self.sock.getsockname()[1]
        self.scheme = "https" if tls_cert else "http"
        asgi = BufferedBody(WSGIMiddleware(app, workers=threads), max_body, body_timeout)
        self.config = uvicorn.Config(
            asgi, http=_protocol(header_timeout), ws="none", lifespan="off",
            interface="asgi3", log_level="warning", access_log=False, server_header=False,
            backlog=backlog, limit_concurrency=max_connections, timeout_keep_alive=5,
            timeout_graceful_shutdown=1, ssl_certfile=tls_cert, ssl_keyfile=tls_key)
        self.server = uvicorn.Server(self.config)
        self.started = threading.Event()

    def run(self) -> None:
        """Serves until :meth:`close` (call from a thread; signals stay with the main one)."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.started.set()

    def start(self) -> threading.Thread:
        """:meth:`run` in a daemon thread; returns once the server accepts connections."""
        thread = threading.Thread(target=self.run, name="fsjax-http", daemon=True)
        thread.start()
        while not (self.server.started or self.started.wait(0.02)):
            pass
        return thread

    def close(self) -> None:
        """Stops serving (in-flight requests get a second to finish) and frees the port."""
        self.server.should_exit = True
        if not self.server.started:
            self.sock.close()
