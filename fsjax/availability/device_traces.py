"""Device traces: parsing trace files and replaying them as availability.

- :func:`load_traces` parses the shipped JSON trace format (DESIGN.md section
  5) into a per-slot availability matrix ``bool[T, D]``, a device being
  available in a slot when a rule (``"_"``-joined flags from ``TRACE_FLAGS``,
  e.g. ``"charging_wifi"``) held for enough of it; ``return_info=True`` adds a
  :class:`TraceInfo`.
- :func:`traces` is the availability model that replays such a matrix one slot
  per round (:class:`TraceState`): each client replays one device (``assign``:
  identity, or random devices and offsets for populations larger than the
  file, :func:`assign_traces`) from a start slot that is random per run seed by
  default (``start``). ``rule="study_events"`` replays the CUP study's
  event-indexed vectors instead (:mod:`~fsjax.availability.study_events`).

Example:
  >>> import jax
  >>> m = traces(num_clients=2, matrix=[[True, False], [False, True]], start=1)
  >>> m.step(m.init(jax.random.key(0)), jax.random.key(1))[1].tolist()
  [False, True]
"""

from __future__ import annotations

import calendar
import json
import math
import os
import re
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fsjax.availability._checks import Array, check_num_clients, check_positive, jitted
from fsjax.availability.models import Availability

__all__ = ["ASSIGN", "STUDY_EVENTS", "TRACE_FLAGS", "TraceInfo", "TraceState", "assign_traces",
           "load_traces", "trace_step", "traces"]

# Flags a rule can require; a rule is "_"-joined flag names, e.g. "charging_wifi".
TRACE_FLAGS = ("charging", "wifi", "locked", "screenoff")
_NETWORK = {"wifi": True, "2g": False, "3g": False, "4g": False, "5g": False, "unknown": False}
_LINE = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$")


class TraceInfo(NamedTuple):
    """What :func:`load_traces` read, returned with ``return_info=True``.

    Attributes:
      device_ids: the JSON keys, in matrix column order.
      models: the phone model of each device.
      origin: start of slot 0 as ``"YYYY-MM-DD HH:MM:SS"`` (midnight of the
        earliest day in any trace).
      slot_minutes: slot length.
      first: per device, seconds from ``origin`` to its first line.
      last: per device, seconds from ``origin`` to its last line.
      bad_lines: per device id, the number of lines skipped (only non-empty
        with ``skip_bad_lines=True``).
    """

    device_ids: tuple[str, ...]
    models: tuple[str, ...]
    origin: str
    slot_minutes: float
    first: np.ndarray
    last: np.ndarray
    bad_lines: dict[str, int]


def _rule_flags(rule: str) -> tuple[str, ...]:
    parts = tuple(str(rule).lower().split("_")) if rule else ()
    if not parts or any(p not in TRACE_FLAGS for p in parts):
        raise ValueError(f"rule={rule!r}: expected '_'-joined flags from {TRACE_FLAGS}, "
                         "e.g. 'charging_wifi' or 'charging_wifi_locked' (or, for traces(), "
                         f"{STUDY_EVENTS!r}: the CUP study's one-line-per-round parsing)")
    return parts


def _parse_line(line: str) -> tuple[int, str]:
    """Parses ``YYYY-MM-DD HH:MM:SS<TAB>event`` into (epoch seconds, event)."""
    fields = line.split("\t")
    if len(fields) != 2:
        raise ValueError("expected 'YYYY-MM-DD HH:MM:SS<TAB>event'")
    stamp, event = fields[0].strip(), fields[1].strip().lower()
    m = _LINE.match(stamp)
    if m is None:
        raise ValueError(f"bad timestamp {stamp!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1] and h < 24 and mi < 60 and s < 60):
        raise ValueError(f"bad timestamp {stamp!r}")
    # Naive wall-clock times, read as UTC so no daylight-saving shifts creep in.
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)), event


def _flag_update(event: str) -> dict[str, bool] | None:
    """The flags an event sets; ``{}`` for known events that set none; None if unknown."""
    if event in _NETWORK:
        return {"wifi": _NETWORK[event]}
    if event.endswith("%"):
        try:
            level = float(event[:-1])
        except ValueError:
            return None
        return {} if 0.0 <= level <= 100.0 else None
    return {
        "battery_charged_on": {"charging": True},
        "battery_charged_off": {"charging": False},
        "screen_lock": {"locked": True},
        "screen_unlock": {"locked": False},
        "screen_off": {"screenoff": True},
        "screen_on": {"screenoff": False},
        "battery_low": {}, "battery_okay": {},
        # A phone that is off can do nothing; on power-up the flags are unknown again.
        "phone_off": {"charging": False, "wifi": False, "locked": False, "screenoff": False},
        "phone_on": {},
    }.get(event)


def _device_intervals(device: str, messages: str, flags: tuple[str, ...], skip_bad_lines: bool):
    """Times where the rule holds, for one device.

    Returns:
      (times: i64[n] line times, ok: bool[n] rule holds from line i to line i+1,
      bad: number of skipped lines).
    """
    state = dict.fromkeys(TRACE_FLAGS, False)  # unknown until the trace says so (as FLASH)
    times, ok, bad = [], [], 0
    for lineno, raw in enumerate(messages.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            t, event = _parse_line(raw.strip("\r"))
            update = _flag_update(event)
            if update is None:
                raise ValueError(f"unknown event {event!r}")
            if times and t < times[-1]:
                raise ValueError("timestamp earlier than the previous line")
        except ValueError as e:
            if skip_bad_lines:
                bad += 1
                continue
            raise ValueError(f"device {device}: line {lineno}: {e}: {raw[:80]!r}") from None
        state.update(update)
        times.append(t)
        ok.append(all(state[f] for f in flags))
    return np.asarray(times, np.int64), np.asarray(ok, bool), bad


def _slot_coverage(times: np.ndarray, ok: np.ndarray, edges: np.ndarray, wrap: bool) -> np.ndarray:
    """Seconds of each slot ``[edges[s], edges[s+1])`` during which the rule holds.

    The state after line i holds until line i+1; the trace covers
    ``[times[0], times[-1])``. With ``wrap`` the trace repeats with period
    ``times[-1] - times[0]`` (FLASH's convention; shipped traces span whole days,
    so the time of day is kept); otherwise time outside it counts as unavailable.
    """
    if times.size < 2 or times[-1] == times[0]:
        return np.zeros(edges.size - 1)
    seg = np.diff(times).astype(np.float64) * ok[:-1]
    cum = np.concatenate([[0.0], np.cumsum(seg)])  # available seconds from times[0] to times[i]
    start, span = float(times[0]), float(times[-1] - times[0])
    e = edges.astype(np.float64)
    if wrap:
        periods = np.floor((e - start) / span)
        within = start + (e - start) - periods * span
        covered = periods * cum[-1] + np.interp(within, times.astype(np.float64), cum)
    else:
        covered = np.interp(np.clip(e, start, times[-1]), times.astype(np.float64), cum)
    return np.diff(covered)


def _sorted_ids(data: dict) -> list[str]:
    """Device ids in matrix column order: numeric ids as numbers, then the rest."""
    return sorted(data, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))


def _read_trace_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"path={str(path)!r}: trace file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"path={str(path)!r}: cannot read trace file: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"path={str(path)!r}: not JSON ({e}); expected "
                         '{"<idx>": {"guid": ..., "messages": ..., "model": ...}}') from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"path={str(path)!r}: expected a non-empty JSON object of devices")
    for k, v in data.items():
        if not isinstance(v, dict) or not isinstance(v.get("messages"), str):
            raise ValueError(f"path={str(path)!r}: device {k}: expected an object with a "
                             "'messages' string")
    return data


def load_traces(path: str | os.PathLike, slot_minutes: float = 60.0, rule: str = "charging_wifi",
                *, min_coverage: float = 0.5, wrap: bool = True, skip_bad_lines: bool = False,
                return_info: bool = False):
    """Parses device traces into a per-slot availability matrix.

    The file is ``{"<idx>": {"guid", "messages", "model"}}`` where ``messages`` holds
    ``YYYY-MM-DD HH:MM:SS<TAB>event`` lines (DESIGN.md section 5). Each device's
    flags (``charging``, ``wifi``, ``locked``, ``screenoff``) start false (unknown)
    and change on events: ``battery_charged_on/off``, ``wifi`` vs
    ``2G/3G/4G/5G/Unknown``, ``screen_lock/unlock``, ``screen_off/on``; battery
    levels ``<n>%`` and ``battery_low/okay`` are read and ignored. A flag state
    holds from its line to the next; the trace covers its first to last line.

    Time is wall clock: slot 0 starts at midnight of the earliest day in the
    file, slot s covers ``[origin + s*slot, origin + (s+1)*slot)``, and
    ``T = ceil((latest line - origin) / slot)``. Device d is available in slot s
    when ``rule`` held for at least ``min_coverage`` of the slot (and for some
    positive time). Outside its own span a device's trace repeats (``wrap``, as
    in FLASH; the shipped traces span whole days so time of day is kept) or
    counts as unavailable (``wrap=False``).

    Args:
      path: the JSON trace file.
      slot_minutes: slot (round) length in minutes, > 0.
      rule: ``"_"``-joined flags that must all hold, from ``TRACE_FLAGS``:
        ``"charging_wifi"`` (default), ``"charging_wifi_locked"`` (also idle:
        the usual production condition), ``"charging"``, ...
      min_coverage: fraction of a slot the rule must hold, in [0, 1]
        (0 = any positive time, 1 = the whole slot).
      wrap: repeat each trace outside its span instead of marking it unavailable.
      skip_bad_lines: skip and count unparsable lines (reported in a warning and
        in ``TraceInfo.bad_lines``) instead of raising.
      return_info: also return a :class:`TraceInfo`.

    Returns:
      ``bool[T, D]``, columns in device-id order (numeric ids sorted as numbers);
      with ``return_info``, ``(matrix, TraceInfo)``.

    Raises:
      ValueError: missing file, not JSON, wrong structure, an unparsable line
        (naming the device id and the 1-based line number), or bad arguments.

    Example:
      >>> m = load_traces("tests/data/tiny_traces.json", slot_minutes=60)
      >>> m.shape
      (6, 3)
    """
    slot = check_positive("slot_minutes", slot_minutes)
    flags = _rule_flags(rule)
    try:
        cov = float(min_coverage)
    except (TypeError, ValueError):
        cov = float("nan")
    if not 0.0 <= cov <= 1.0:
        raise ValueError(f"min_coverage={min_coverage!r}: expected a fraction in [0, 1]")
    data = _read_trace_json(path)
    ids = _sorted_ids(data)

    parsed, bad_lines = [], {}
    for k in ids:
        times, ok, bad = _device_intervals(k, data[k]["messages"], flags, skip_bad_lines)
        parsed.append((times, ok))
        if bad:
            bad_lines[k] = bad
    if bad_lines:
        warnings.warn(f"{path}: skipped {sum(bad_lines.values())} unparsable lines "
                      f"(per device: {bad_lines})", stacklevel=2)
    nonempty = [t for t, _ in parsed if t.size]
    if not nonempty:
        raise ValueError(f"path={str(path)!r}: no device has a valid line")
    earliest = min(int(t[0]) for t in nonempty)
    latest = max(int(t[-1]) for t in nonempty)
    origin = earliest - earliest % 86400  # midnight, so slots line up with clock time
    step = slot * 60.0
    num_slots = max(1, math.ceil((latest - origin) / step))
    edges = origin + step * np.arange(num_slots + 1)
    threshold = cov * step
    cols = []
    for times, ok in parsed:
        covered = _slot_coverage(times, ok, edges, wrap)
        cols.append((covered > 0) & (covered >= threshold - 1e-6))
    matrix = np.stack(cols, axis=1)
    if not return_info:
        return matrix
    info = TraceInfo(
        device_ids=tuple(ids),
        models=tuple(str(data[k].get("model", "")) for k in ids),
        origin=_format_epoch(origin), slot_minutes=slot,
        first=np.array([float(t[0] - origin) if t.size else np.nan for t, _ in parsed]),
        last=np.array([float(t[-1] - origin) if t.size else np.nan for t, _ in parsed]),
        bad_lines=bad_lines)
    return matrix, info


def _format_epoch(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


class TraceState(NamedTuple):
    """State of :func:`traces`: O(C) integers, no copy of the matrix.

    Client c is available in round r when ``matrix[(offset[c] + r) % T, device[c]]``.

    Attributes:
      t: i32[]  # rounds stepped so far
      device: i32[C]  # matrix column (device) the client replays
      offset: i32[C]  # slot the client replays in the first round
    """

    t: Array
    device: Array
    offset: Array


ASSIGN = ("auto", "identity", "random", "round_robin")
STUDY_EVENTS = "study_events"


def _check_start(start: Any, num_slots: int) -> int | None:
    """``start`` as an int slot in [0, T), or None for ``"random"``."""
    if isinstance(start, str) and start == "random":
        return None
    ok = not isinstance(start, bool) and isinstance(start, (int, np.integer))
    if not (ok and 0 <= start < num_slots):
        raise ValueError(f"start={start!r}: expected 'random' or an integer slot in "
                         f"[0, {num_slots})")
    return int(start)


def _resolve_assign(assign: Any, num_clients: int, num_devices: int) -> str:
    if assign not in ASSIGN:
        raise ValueError(f"assign={assign!r}: expected one of {ASSIGN}")
    if assign == "auto":
        return "identity" if num_clients <= num_devices else "random"
    if assign == "identity" and num_clients > num_devices:
        raise ValueError(f"assign='identity' needs num_clients <= devices, got num_clients="
                         f"{num_clients} and {num_devices} devices: use assign='random' "
                         "(or 'auto') for populations larger than the trace file")
    return assign


def traces(num_clients: int, path: str | os.PathLike | None = None, *, matrix: Any = None,
           slot_minutes: float = 60.0, rule: str = "charging_wifi", start: int | str = "random",
           assign: str = "auto", rounds: int | None = None, min_coverage: float = 0.5,
           wrap: bool = True, skip_bad_lines: bool = False,
           download: str | bool = "never") -> Availability:
    """Replays a device-trace availability matrix ``bool[T, D]``, one slot per round.

    Client c replays column ``device[c]`` from slot ``offset[c]``: round r reads
    ``matrix[(offset[c] + r) mod T, device[c]]`` (wrapping at the end). The
    assignment (``assign``) and the offsets are drawn in ``init`` from its key,
    so each run seed replays a different part of the traces:

    - ``start``: ``"random"`` (default) draws one slot s uniformly in [0, T)
      from the key; an int s is fixed (0 = replay from the first slot).
    - ``assign="identity"``: client i replays device i, all from slot s (the
      devices' mutual timing is kept; needs C <= D).
    - ``assign="random"``: client c replays a device drawn uniformly from the
      key, from its own offset ``(s + u_c) mod T``, ``u_c`` uniform: clients
      sharing a device are out of step (:func:`assign_traces`); for C > D.
    - ``assign="auto"`` (default): identity when C <= D, else random.
    - ``assign="round_robin"``: client c replays device ``c mod D`` from slot s
      (clients sharing a device move in lockstep; fsjax's behaviour before
      ``assign`` existed).

    The state is O(C) integers (:class:`TraceState`) and ``step`` is one
    gather, vectorised over C.

    Args:
      num_clients: number of clients C.
      path: trace JSON, parsed by :func:`load_traces` (with ``slot_minutes``,
        ``rule``, ``min_coverage``, ``wrap``, ``skip_bad_lines``); ``"auto"``
        searches ``$FSJAX_TRACES``, ``../shared/data`` and the download cache
        (:mod:`~fsjax.availability.trace_fallback`) and, when nothing is found,
        returns the Markov model with the traces' rates (saying so in one line).
      matrix: instead of ``path``, a precomputed ``bool[T, D]``.
      slot_minutes, min_coverage, wrap, skip_bad_lines: see :func:`load_traces`.
      rule: the time-slot rule of :func:`load_traces` (default
        ``"charging_wifi"``), or ``"study_events"``: the CUP study's
        event-indexed parsing (one event line = one round, the matrix of
        :func:`~fsjax.availability.study_events.load_study_events` with
        ``max(100, rounds)`` lines; use ``start=0`` and ``assign="identity"``
        (the default for C <= D) to replay exactly what the study replays).
      start: ``"random"`` or a slot in [0, T).
      assign: ``"auto"``, ``"identity"``, ``"random"`` or ``"round_robin"``.
      rounds: the run's rounds T, used by ``rule="study_events"`` only (the
        study keeps ``max(100, T)`` lines per phone; None = 100 lines). With
        ``start=0`` every T >= rounds replays the same bits, since the study
        never wraps within a run.
      download: with ``path="auto"``: ``"auto"`` downloads the study's public
        trace file into the cache when online; ``"never"`` (default) does not.

    Returns:
      An :class:`Availability` with :class:`TraceState`.

    Raises:
      ValueError: neither or both of ``path``/``matrix``, a matrix that is not
        2-D, ``start`` out of range, an unknown ``assign``, or
        ``assign="identity"`` with more clients than devices.

    Example:
      >>> m = traces(num_clients=2, matrix=[[True, False], [False, True]], start=0)
      >>> s = m.init(jax.random.key(0)); s, a = m.step(s, jax.random.key(1))
      >>> a.tolist()
      [True, False]
    """
    c = check_num_clients(num_clients)
    if download not in ("auto", "never", True, False):
        raise ValueError(f"download={download!r}: expected 'auto' or 'never'")
    if isinstance(path, str) and path == "auto" and matrix is None:
        from fsjax.availability import trace_fallback
        found = trace_fallback.find_traces(download=download in ("auto", True))
        if found is None:
            return trace_fallback.markov_fallback(c)
        trace_fallback.log.info("device traces: %s", found)
        path = found
    if (path is None) == (matrix is None):
        raise ValueError(f"path={path!r}, matrix={'given' if matrix is not None else None}: "
                         "expected exactly one of them")
    if path is not None and rule == STUDY_EVENTS:
        from fsjax.availability.study_events import load_study_events, study_length
        mat = load_study_events(path, study_length(rounds))
    elif path is not None:
        mat = load_traces(path, slot_minutes, rule, min_coverage=min_coverage, wrap=wrap,
                          skip_bad_lines=skip_bad_lines)
    else:
        mat = np.asarray(matrix)
        if mat.ndim != 2 or mat.shape[0] < 1 or mat.shape[1] < 1:
            raise ValueError(f"matrix has shape {mat.shape}: expected bool[T, D] with T, D >= 1")
        mat = mat.astype(bool)
    num_slots, num_devices = mat.shape
    fixed_start = _check_start(start, num_slots)
    how = _resolve_assign(assign, c, num_devices)
    table = jnp.asarray(mat)

    def init(key):
        k_start, k_assign = jax.random.split(key)
        s = (jnp.asarray(fixed_start, jnp.int32) if fixed_start is not None
             else jax.random.randint(k_start, (), 0, num_slots, jnp.int32))
        if how == "random":
            device, own = assign_traces(k_assign, c, num_devices, num_slots)
            offset = (own + s) % num_slots
        else:
            idx = jnp.arange(c, dtype=jnp.int32)
            device = idx if how == "identity" else idx % num_devices
            offset = jnp.full((c,), s, jnp.int32)
        return TraceState(t=jnp.zeros((), jnp.int32), device=device, offset=offset)

    def step(state, key):
        del key
        available = trace_step(table, state.device, state.offset, state.t)
        return state._replace(t=state.t + 1), available

    return jitted(Availability, init, step)


def assign_traces(key: jax.Array, num_clients: int, num_devices: int,
                  num_slots: int) -> tuple[jax.Array, jax.Array]:
    """Each client's trace and start offset, deterministic in ``key``: O(C) integers.

    For populations larger than the traces (C > D): client c replays device
    ``device[c]`` from slot ``offset[c]``, so clients sharing a device are out
    of step; round r is then ``matrix[(offset + r) % T, device]`` (:func:`trace_step`),
    with no ``[T, C]`` copy of the matrix.

    Example:
      >>> dev, off = assign_traces(jax.random.key(0), 10**6, 100, 720)
      >>> dev.shape, int(dev.max()) < 100, int(off.max()) < 720
      ((1000000,), True, True)
    """
    k_dev, k_off = jax.random.split(key)
    device = jax.random.randint(k_dev, (num_clients,), 0, num_devices, jnp.int32)
    offset = jax.random.randint(k_off, (num_clients,), 0, num_slots, jnp.int32)
    return device, offset


def trace_step(matrix: jax.Array, device: jax.Array, offset: jax.Array, t: jax.Array) -> jax.Array:
    """bool[C]: availability in round ``t`` of clients assigned by :func:`assign_traces`."""
    return matrix[(offset + t) % matrix.shape[0], device]
