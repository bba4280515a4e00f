"""Who may do what: the enrolment token, per-client credentials and signatures.

Two kinds of credential (the enrolment flow is in serving/README.md):

- the **enrolment token** ``FSJAX_TOKEN`` (the operator's secret). A client
  proves it may enrol as id ``i`` with either the token itself or
  :func:`enrolment_token` ``(token, i)``, an HMAC of the id under the token:
  give each client only its own derived token, and it cannot enrol as
  another id (``fsjax launch`` does this).
- the **client credential**: a random secret the client generates
  (:func:`new_secret`) and sends with its first registration, over TLS. The
  server binds it to the id and URL. From then on every request of the
  client (``POST /status``, ``GET /model``, ``POST /update``) and every push
  of the server to the client (``POST /train``) carries
  ``X-Fsjax-Client: <id>`` and ``X-Fsjax-Signature:`` :func:`signature`, an
  HMAC-SHA256 of the method, path and body under that secret; the receiver
  checks it in constant time. Registering an id that is already registered
  (e.g. from another URL) needs the same secret.

Example:
  >>> sig = signature("secret", "POST", "/update", b"body")
  >>> verify("secret", "POST", "/update", b"body", sig)
  True
  >>> verify("secret", "POST", "/update", b"other body", sig)
  False
  >>> enrolment_token("tok", 1) == enrolment_token("tok", 2)
  False
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CLIENT_HEADER = "X-Fsjax-Client"
SIGNATURE_HEADER = "X-Fsjax-Signature"


def new_secret() -> str:
    """A fresh client credential (256 random bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def _mac(key: str, message: bytes) -> str:
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def enrolment_token(token: str, client_id: int) -> str:
    """The token that lets exactly client ``client_id`` enrol (derived from ``token``)."""
    return _mac(token, f"fsjax-enrol/{int(client_id)}".encode())


def may_enrol(token: str | None, client_id: int, given: str | None) -> bool:
    """Whether ``given`` (a bearer token) lets ``client_id`` enrol; True when no token is set."""
    if token is None:
        return True
    if not given:
        return False
    given_b = given.encode("utf-8", "surrogatepass")
    return (hmac.compare_digest(given_b, token.encode("utf-8"))
            | hmac.compare_digest(given_b, enrolment_token(token, client_id).encode()))


def same_secret(given: str, stored: str) -> bool:
    """Whether two credentials are equal (constant-time compare)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               stored.encode("utf-8", "surrogatepass"))


def signature(secret: str, method: str, path: str, body: bytes) -> str:
    """HMAC-SHA256 (hex) of ``"METHOD PATH\\n" + body`` under the client's secret."""
    return _mac(secret, f"{method.upper()} {path}\n".encode() + bytes(body))


def verify(secret: str, method: str, path: str, body: bytes, given: str | None) -> bool:
    """Whether ``given`` is :func:`signature` of the request (constant-time compare)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("ascii", "replace"),
                               signature(secret, method, path, body).encode())


def signed_headers(client_id: int, secret: str, method: str, path: str,
                   body: bytes) -> dict[str, str]:
    """The two headers that authenticate a request as client ``client_id``."""
    return {CLIENT_HEADER: str(int(client_id)),
            SIGNATURE_HEADER: signature(secret, method, path, body)}


def main(argv=None) -> int:
    """``python -m fsjax.serving.auth CLIENT_ID``: prints that client's enrolment token
    (derived from ``$FSJAX_TOKEN``), to hand to that client as its ``FSJAX_TOKEN``."""
    import os
    import sys

    args = sys.argv[1:] if argv is None else argv
    token = os.environ.get("FSJAX_TOKEN")
    if len(args) != 1 or not args[0].isdigit() or not token:
        print("usage: FSJAX_TOKEN=... python -m fsjax.serving.auth CLIENT_ID", file=sys.stderr)
        return 2
    print(enrolment_token(token, int(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
