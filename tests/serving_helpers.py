"""Helpers shared by the networked-mode tests: poll a server's ``GET /status``."""

from __future__ import annotations

import json
import time

from fsjax.serving import web


def status(url, **kw):
    """The server's ``/status`` JSON, or None while it cannot be reached."""
    try:
        return json.loads(web.call("GET", f"{url}/status", timeout=2, **kw))
    except (web.Unavailable, web.HttpError):
        return None


def wait_status(url, cond, timeout, procs=(), **kw):
    """Polls ``/status`` until ``cond(status)``; fails if a process in ``procs`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(url, **kw)
        if st is not None and cond(st):
            return st
        for p in procs:
            assert p.poll() is None, f"{p.args[3]} exited with {p.returncode} early"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting on {url}/status; last: {status(url, **kw)}")
