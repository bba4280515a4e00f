"""HTTP plumbing shared by the server and the clients.

Flask side: :class:`ApiError` and :func:`install_error_handlers` turn every
failure into a JSON ``{"error": "..."}`` answer (4xx for bad requests, 500
only for a bug, which is logged and never kills the process);
:func:`check_token` enforces the shared ``FSJAX_TOKEN``; :func:`json_body`
and the ``*_field`` helpers validate JSON bodies.

Caller side (stdlib ``urllib``): :func:`call` makes one request and sorts
failures into :class:`Unavailable` (connection refused, timeout, 5xx: worth
retrying) and :class:`HttpError` (a 4xx answer: not worth retrying), and
:func:`with_backoff` retries a call with exponential backoff.

Example:
  >>> body = call("GET", "http://127.0.0.1:8080/health")            # doctest: +SKIP
  >>> with_backoff(lambda: call("GET", url), what="model", give_up_after=30)  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

log = logging.getLogger(__name__)

TOKEN_ENV = "FSJAX_TOKEN"
JSON_MAX_BYTES = 256 * 1024   # JSON bodies are small (a label histogram at most)
MSGPACK = "application/msgpack"


# ----------------------------------------------------------------- Flask side


class ApiError(Exception):
    """A request the server refuses: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def resolve_token(token: str | None) -> str | None:
    """``token``, else ``$FSJAX_TOKEN``; an empty string means no token."""
    token = os.environ.get(TOKEN_ENV) if token is None else token
    return token or None


def install_error_handlers(app) -> None:
    """Every error becomes JSON; unexpected exceptions are logged and answered 500."""
    from flask import jsonify
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return jsonify(error=err.message), err.status

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        return jsonify(error=f"{err.name}: {err.description}"), err.code

    @app.errorhandler(Exception)
    def _bug(err: Exception):
        log.exception("unhandled error in %s", app.name)
        return jsonify(error=f"internal error: {type(err).__name__}"), 500


def check_token(expected: str | None) -> None:
    """Raises :class:`ApiError` (401/403) unless the request carries ``expected``.

    The comparison is constant time (``hmac.compare_digest``). Does nothing
    when no token is configured.
    """
    if expected is None:
        return
    from flask import request

    header = request.headers.get("Authorization")
    if not header:
        raise ApiError(401, "missing 'Authorization: Bearer <token>' header "
                            f"(the server requires {TOKEN_ENV})")
    scheme, _, given = header.partition(" ")
    ok = hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                             expected.encode("utf-8"))
    if scheme.lower() != "bearer" or not ok:
        raise ApiError(403, "wrong token in the Authorization header")


def json_body(max_bytes: int = JSON_MAX_BYTES) -> dict:
    """The request's JSON object, or :class:`ApiError` 400/413 naming the problem."""
    from flask import request

    request.max_content_length = max_bytes
    data = request.get_data(cache=False)   # 413 past max_bytes
    try:
        body = json.loads(data)
    except Exception as err:  # noqa: BLE001 - bad UTF-8, bad JSON, too deep...
        raise ApiError(400, f"body is not valid JSON ({type(err).__name__})") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"body: expected a JSON object, got {type(body).__name__}")
    return body


_ABSENT = object()


def _field(body: dict, key: str, required: bool):
    """``body[key]``; ``_ABSENT`` for a missing optional field (``null`` is a value)."""
    if key not in body:
        if required:
            raise ApiError(400, f"missing field {key!r}")
        return _ABSENT
    return body[key]


def int_field(body: dict, key: str, lo: int | None = None, hi: int | None = None,
              required: bool = True) -> int | None:
    """An integer field (not a bool) in ``[lo, hi]``."""
    v = _field(body, key, required)
    if v is _ABSENT:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"field {key!r}={v!r:.80}: expected an integer")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = " and ".join(t for t in (lo is not None and f">= {lo}",
                                         hi is not None and f"<= {hi}") if t)
        raise ApiError(400, f"field {key!r}={v}: expected an integer {bounds}")
    return v


def float_field(body: dict, key: str, lo: float = -math.inf, required: bool = True
                ) -> float | None:
    """A finite number field ``>= lo``."""
    v = _field(body, key, required)
    if v is _ABSENT:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or v < lo:
        raise ApiError(400, f"field {key!r}={v!r:.80}: expected a finite number >= {lo}")
    return float(v)


def bool_field(body: dict, key: str, required: bool = True) -> bool | None:
    v = _field(body, key, required)
    if v is _ABSENT:
        return None
    if not isinstance(v, bool):
        raise ApiError(400, f"field {key!r}={v!r:.80}: expected true or false")
    return v


def url_field(body: dict, key: str, required: bool = True) -> str | None:
    """An ``http://`` or ``https://`` URL of at most 2,048 characters."""
    v = _field(body, key, required)
    if v is _ABSENT:
        return None
    if not isinstance(v, str) or len(v) > 2048 or not v.startswith(("http://", "https://")) \
            or any(c.isspace() for c in v):
        raise ApiError(400, f"field {key!r}={v!r:.80}: expected an http(s) URL")
    return v.rstrip("/")


def check_fields(body: dict, allowed) -> None:
    extra = sorted(map(str, set(body) - set(allowed)))
    if extra:
        raise ApiError(400, f"unexpected field(s) {extra}; expected {sorted(allowed)}")


def finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics with NaN/Inf as ``None`` (JSON has no NaN)."""
    return {k: (float(v) if math.isfinite(v) else None) for k, v in metrics.items()}


# ---------------------------------------------------------------- caller side


class HttpError(Exception):
    """The peer answered 4xx: the request itself is wrong, retrying will not help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Unavailable(Exception):
    """The peer could not be reached or answered 5xx: worth retrying."""


# Federated peers talk directly; an environment proxy would break loopback runs.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(method: str, url: str, *, body: bytes | dict | None = None, token: str | None = None,
         timeout: float = 10.0) -> bytes:
    """One HTTP request; returns the response body.

    Args:
      method: ``"GET"`` or ``"POST"``.
      url: the full URL.
      body: bytes (sent as msgpack) or a dict (sent as JSON).
      token: sent as ``Authorization: Bearer <token>`` when given.
      timeout: seconds for connecting and for each read.

    Raises:
      HttpError: a 4xx answer (its JSON ``error`` in the message).
      Unavailable: no connection, a timeout, or a 5xx answer.
    """
    headers = {"Accept": "application/json"}
    data = None
    if isinstance(body, dict):
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif body is not None:
        data, headers["Content-Type"] = bytes(body), MSGPACK
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            message = json.loads(raw)["error"]
        except Exception:  # noqa: BLE001 - not our JSON (a proxy, waitress itself)
            message = raw[:200].decode("utf-8", "replace")
        if err.code >= 500:
            raise Unavailable(f"{method} {url}: HTTP {err.code}: {message}") from None
        raise HttpError(err.code, message) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        # ValueError: http.client errors on a half-closed connection.
        reason = getattr(err, "reason", err)
        raise Unavailable(f"{method} {url}: {reason}") from None


def with_backoff(fn: Callable[[], Any], *, what: str, give_up_after: float = 60.0,
                 first_delay: float = 0.2, max_delay: float = 5.0,
                 stop: threading.Event | None = None) -> Any:
    """Calls ``fn`` until it does not raise :class:`Unavailable`.

    Waits ``first_delay``, then twice as long each time (capped at
    ``max_delay``) between tries; gives up (re-raising the last
    :class:`Unavailable`) after ``give_up_after`` seconds or when ``stop``
    is set. :class:`HttpError` is raised at once.
    """
    deadline = time.monotonic() + give_up_after
    delay = first_delay
    while True:
        try:
            return fn()
        except Unavailable as err:
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            log.info("%s: %s; retrying in %.1f s", what, err, delay)
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                time.sleep(delay)
            delay = min(max_delay, delay * 2)
