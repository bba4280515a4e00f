"""HTTP plumbing shared by the server and the clients.

Flask side: :class:`ApiError` and :func:`install_error_handlers` turn every
failure into a JSON ``{"error": "..."}`` answer (4xx for bad requests, 500
only for a bug, which is logged and never kills the process);
:func:`check_token` enforces the shared ``FSJAX_TOKEN``; :func:`json_body`
and the ``*_field`` helpers validate JSON bodies.

Caller side (``requests`` with urllib3's retries): :func:`session` makes a
``requests.Session`` whose calls retry, with exponential backoff, while the
peer is unreachable or answers 5xx, for at most ``give_up_after`` seconds
(:class:`Retry`); :func:`call` makes one request on it and sorts what is left
into :class:`Unavailable` (no connection, a timeout, 5xx: retrying gave up)
and :class:`HttpError` (a 4xx answer: never retried).

Example:
  >>> http = session(give_up_after=30)
  >>> http.get_adapter("http://127.0.0.1").max_retries.give_up_after
  30
  >>> call("GET", "http://127.0.0.1:8080/health", http=http)   # doctest: +SKIP
  b'{"ok": true, ...}'
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import threading
import time

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from urllib3.util import Retry as _Retry

from fsjax.serving import auth

log = logging.getLogger(__name__)

TOKEN_ENV = "FSJAX_TOKEN"
CA_BUNDLE_ENV = "FSJAX_CA_BUNDLE"
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


def bearer() -> str | None:
    """The request's ``Authorization: Bearer`` token, or None."""
    from flask import request

    scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def has_token(expected: str | None) -> bool:
    """Whether the request carries the shared token (False when none is configured)."""
    given = bearer()
    return expected is not None and given is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def read_body(max_bytes: int = JSON_MAX_BYTES) -> bytes:
    """The raw request body (413 past ``max_bytes``)."""
    from flask import request

    request.max_content_length = max_bytes
    return request.get_data(cache=False)


def authenticate_client(secret_of, data: bytes) -> int:
    """The client id a request is signed by (:mod:`fsjax.serving.auth`), or ApiError.

    Args:
      secret_of: ``secret_of(client_id) -> secret | None`` (None: not registered).
      data: the raw request body (signed with the method and path).

    Raises:
      ApiError: 401 without the headers, 400 a malformed id, 404 an
        unregistered id, 403 a wrong signature.
    """
    from flask import request

    raw = request.headers.get(auth.CLIENT_HEADER)
    sig = request.headers.get(auth.SIGNATURE_HEADER)
    if raw is None or sig is None:
        raise ApiError(401, f"missing {auth.CLIENT_HEADER} and {auth.SIGNATURE_HEADER} "
                            "headers: this endpoint needs the client's own credential")
    if not raw.strip().isdigit() or len(raw) > 12:
        raise ApiError(400, f"header {auth.CLIENT_HEADER}={raw[:40]!r}: expected a client id")
    cid = int(raw)
    secret = secret_of(cid)
    if secret is None:
        raise ApiError(404, f"client {cid} is not registered")
    if not auth.verify(secret, request.method, request.path, data, sig):
        raise ApiError(403, f"wrong signature for client {cid} (not its credential)")
    return cid


def json_body(max_bytes: int = JSON_MAX_BYTES, data: bytes | None = None) -> dict:
    """The request's JSON object (or ``data``'s), or :class:`ApiError` 400/413 naming the problem."""
    if data is None:
        data = read_body(max_bytes)
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
    """The peer could not be reached or answered 5xx (after any retries)."""


class Retry(_Retry):
    """urllib3's ``Retry`` with a time budget instead of a count.

    Retries connection errors, timeouts and 5xx answers, for any method,
    waiting ``0, 2b, 4b, 8b...`` seconds (``b = backoff``, capped at
    ``max_delay``) before the tries; gives up when the next try would start
    more than ``give_up_after`` seconds after the first failure, or when
    ``stop`` is set (which also cuts a wait short).

    Args:
      give_up_after: seconds of failures after which the call fails.
      backoff: urllib3's ``backoff_factor``.
      max_delay: the longest wait between tries.
      stop: an optional event that ends the retrying.
    """

    def __init__(self, give_up_after: float = 60.0, *, backoff: float = 0.1,
                 max_delay: float = 5.0, stop: threading.Event | None = None, **kwargs):
        kwargs.setdefault("total", None)
        kwargs.setdefault("allowed_methods", None)           # POST too: peers dedupe
        kwargs.setdefault("status_forcelist", range(500, 600))
        kwargs.setdefault("raise_on_status", False)          # the last 5xx answer is kept
        kwargs.setdefault("backoff_factor", backoff)
        kwargs.setdefault("backoff_max", max_delay)
        super().__init__(**kwargs)
        self.give_up_after, self.stop, self.first_failure = give_up_after, stop, None

    def new(self, **kw) -> "Retry":
        # Called by increment() after each failure; the clock starts at the first one.
        out = super().new(**kw)
        out.give_up_after, out.stop = self.give_up_after, self.stop
        out.first_failure = self.first_failure or time.monotonic()
        return out

    def is_exhausted(self) -> bool:
        if self.first_failure is None:
            return super().is_exhausted()
        late = time.monotonic() + self.get_backoff_time() - self.first_failure
        return (late >= self.give_up_after or (self.stop is not None and self.stop.is_set())
                or super().is_exhausted())

    def sleep(self, response=None) -> None:
        if response is not None and self.respect_retry_after_header \
                and self.sleep_for_retry(response):
            return
        delay = self.get_backoff_time()
        if self.history:
            last = self.history[-1]
            log.info("%s %s: %s; retrying in %.1f s", last.method, last.url,
                     last.error or f"HTTP {last.status}", delay)
        if delay > 0:
            if self.stop is not None:
                self.stop.wait(delay)
            else:
                time.sleep(delay)


def session(give_up_after: float = 0.0, *, ca_bundle: str | None = None,
            **retry) -> requests.Session:
    """A ``requests.Session`` whose calls retry for ``give_up_after`` seconds.

    Federated peers talk directly: the environment's proxies and ``.netrc`` are
    ignored (a proxy would break loopback runs). One session serves many
    threads (each request checks a connection out of urllib3's pool).

    Args:
      give_up_after: seconds of failures before a call gives up (0: no retry).
      ca_bundle: PEM file of the CA(s) that HTTPS peers' certificates must chain
        to (default ``$FSJAX_CA_BUNDLE``, else the system's CAs).
      **retry: ``backoff``, ``max_delay``, ``stop`` for :class:`Retry`.
    """
    http = requests.Session()
    http.trust_env = False
    http.verify = ca_bundle or os.environ.get(CA_BUNDLE_ENV) or True
    adapter = requests.adapters.HTTPAdapter(max_retries=Retry(give_up_after, **retry))
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


_DEFAULT = threading.local()


def call(method: str, url: str, *, body: bytes | dict | None = None, token: str | None = None,
         timeout: float = 10.0, http: requests.Session | None = None,
         sign: tuple[int, str] | None = None) -> bytes:
    """One HTTP request (retried as ``http`` says); returns the response body.

    Args:
      method: ``"GET"`` or ``"POST"``.
      url: the full URL.
      body: bytes (sent as msgpack) or a dict (sent as JSON).
      token: sent as ``Authorization: Bearer <token>`` when given.
      timeout: seconds for connecting and for each read, per try.
      http: the session (:func:`session`); default one without retries.
      sign: ``(client_id, secret)``: sign the request as that client
        (:func:`fsjax.serving.auth.signed_headers`).

    Raises:
      HttpError: a 4xx answer (its JSON ``error`` in the message).
      Unavailable: no connection, a timeout, or a 5xx answer, after the retries.
    """
    if http is None:
        http = getattr(_DEFAULT, "session", None) or session()
        _DEFAULT.session = http
    headers = {"Accept": "application/json"}
    data = None
    if isinstance(body, dict):
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif body is not None:
        data, headers["Content-Type"] = bytes(body), MSGPACK
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if sign is not None:
        headers.update(auth.signed_headers(sign[0], sign[1], method, urlsplit(url).path or "/",
                                           data or b""))
    try:
        resp = http.request(method, url, data=data, headers=headers, timeout=timeout,
                            allow_redirects=False)
    except requests.RequestException as err:
        raise Unavailable(f"{method} {url}: {_reason(err)}") from None
    if resp.status_code < 400:
        return resp.content
    try:
        message = resp.json()["error"]
    except Exception:  # noqa: BLE001 - not our JSON (a proxy, the HTTP server itself)
        message = resp.content[:200].decode("utf-8", "replace")
    if resp.status_code >= 500:
        raise Unavailable(f"{method} {url}: HTTP {resp.status_code}: {message}")
    raise HttpError(resp.status_code, message)


def _reason(err: BaseException) -> BaseException:
    """The innermost cause of a requests/urllib3 error (e.g. ``[Errno 111] Connection refused``)."""
    inner = err.args[0] if err.args and isinstance(err.args[0], BaseException) else err
    inner = getattr(inner, "reason", None) or inner      # MaxRetryError -> the last failure
    while inner.__cause__ is not None:
        inner = inner.__cause__
    return inner


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) resolves only to loopback addresses."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback
                               for i in infos)


def check_advertised_url(url: str, server_url: str) -> None:
    """Raises ValueError unless the server at ``server_url`` could reach ``url``.

    Refused: a wildcard address (``0.0.0.0``, ``::``), and a host that
    resolves to loopback while the server's does not (the server would call
    itself).
    """
    host = urlsplit(url).hostname or ""
    if not host or (_is_ip(host) and ipaddress.ip_address(host).is_unspecified):
        raise ValueError(f"client URL {url!r} is not an address the server can reach "
                         "(a wildcard); give --url http(s)://<this machine's address>:PORT "
                         "or set FSJAX_CLIENT_URL")
    server_host = urlsplit(server_url).hostname or ""
    if _is_loopback(host) and not _is_loopback(server_host):
        raise ValueError(f"client URL {url!r} resolves to this machine's loopback but the "
                         f"server ({server_host}) is remote: it would call itself; give "
                         "--url with an address the server can reach (or FSJAX_CLIENT_URL)")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
