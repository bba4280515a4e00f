"""Client availability models and the study's failure rule.

An availability model is an :class:`Availability` ``(init, step)`` pair of pure
functions: ``init(key) -> state`` and ``step(state, key) -> (state, available)``
with ``available: bool[C]``, stepped once per round inside ``jax.jit``. Factories
close over their hyperparameters and are built from config as
``REGISTRY[name](num_clients=C, **params)``:

- ``always``: every client is always available.
- ``bernoulli(p)``: independent coin flips per client and round.
- ``markov(p_drop, p_return)``: a two-state (on/off) chain per client.
- ``traces(path | matrix)``: replays real device traces (see :func:`load_traces`).
- ``correlated(base, threshold)``: a base model whose strongly correlated
  clients drop out together.

Selected clients can additionally fail during a round; :func:`failure_rule`
implements the study's rule (latency above a threshold or loss at or above a
threshold), :func:`no_failures` the trivial one. Both are in ``FAILURES``.

Example:
  >>> import jax
  >>> model = markov(num_clients=4, p_drop=0.1, p_return=0.3)
  >>> state = model.init(jax.random.key(0))
  >>> state, available = model.step(state, jax.random.key(1))
  >>> available.shape, available.dtype
  ((4,), dtype('bool'))
"""

from __future__ import annotations

import calendar
import json
import math
import os
import re
import time
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Availability(NamedTuple):
    """An availability model: pure functions stepped once per round.

    Attributes:
      init: ``init(key) -> state``; the state is a pytree.
      step: ``step(state, key) -> (state, available)``, ``available: bool[C]``.
    """

    init: Callable[[Array], Any]
    step: Callable[[Any, Array], tuple[Any, Array]]


def _jitted(kind, *fns):
    # jit each function so eager callers compile once per model instead of once
    # per primitive (and per call for lax loops); inside an outer jit it inlines.
    return kind(*(jax.jit(f) for f in fns))


# ---------------------------------------------------------------------------
# Validation helpers (Python side, at the boundary).


def _check_num_clients(num_clients: Any) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients={num_clients!r}: expected an integer >= 1")
    return int(num_clients)


def _probabilities(name: str, value: Any, num_clients: int) -> np.ndarray:
    """A scalar or per-client probability as float32[C], checked to lie in [0, 1]."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a probability in [0, 1] or a list of "
                         f"{num_clients} of them") from None
    if arr.ndim == 0:
        arr = np.full((num_clients,), float(arr))
    elif arr.shape != (num_clients,):
        raise ValueError(f"{name} has shape {arr.shape}: expected a scalar or a list of "
                         f"num_clients={num_clients} probabilities")
    bad = ~((arr >= 0.0) & (arr <= 1.0))  # also catches NaN
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}={value!r}: expected probabilities in [0, 1], "
                         f"got {float(arr[i])!r} at client {i}")
    return arr.astype(np.float32)


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    ok = (v >= 0.0) if allow_zero else (v > 0.0)
    if not (ok and math.isfinite(v)):
        expect = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r}: expected a finite number {expect}")
    return v


# ---------------------------------------------------------------------------
# Simple models.


class CounterState(NamedTuple):
    """State of the stateless models.

    Attributes:
      t: i32[]  # rounds stepped so far
    """

    t: Array


def always(num_clients: int) -> Availability:
    """Every client is available in every round.

    Args:
      num_clients: number of clients C.

    Returns:
      An :class:`Availability` whose ``step`` returns ``ones(C, bool)``.

    Example:
      >>> m = always(3); s, a = m.step(m.init(jax.random.key(0)), jax.random.key(1))
      >>> a.tolist()
      [True, True, True]
    """
    c = _check_num_clients(num_clients)

    def init(key):
        del key
        return CounterState(t=jnp.zeros((), jnp.int32))

    def step(state, key):
        del key
        return CounterState(t=state.t + 1), jnp.ones((c,), bool)

    return _jitted(Availability, init, step)


def bernoulli(num_clients: int, p: float | Sequence[float] = 0.5) -> Availability:
    """Independent availability: client k is available with probability ``p_k``.

    Args:
      num_clients: number of clients C.
      p: probability in [0, 1], one for all clients or a list of C.

    Returns:
      An :class:`Availability`; each round ``available_k ~ Bernoulli(p_k)``
      independently across clients and rounds.

    Raises:
      ValueError: ``p`` outside [0, 1] or of the wrong length.

    Example:
      >>> m = bernoulli(num_clients=3, p=[0.0, 1.0, 1.0])
      >>> m.step(m.init(jax.random.key(0)), jax.random.key(1))[1].tolist()
      [False, True, True]
    """
    c = _check_num_clients(num_clients)
    probs = jnp.asarray(_probabilities("p", p, c))

    def init(key):
        del key
        return CounterState(t=jnp.zeros((), jnp.int32))

    def step(state, key):
        available = jax.random.uniform(key, (c,)) < probs
        return CounterState(t=state.t + 1), available

    return _jitted(Availability, init, step)


class MarkovState(NamedTuple):
    """State of :func:`markov`.

    Attributes:
      on: bool[C]  # available in the last round stepped (or the initial draw)
      t: i32[]     # rounds stepped so far
    """

    on: Array
    t: Array


def markov(num_clients: int, p_drop: float | Sequence[float] = 0.1,
           p_return: float | Sequence[float] = 0.3,
           p_init: float | Sequence[float] | None = None) -> Availability:
    """Two-state Markov chain per client (Gilbert-Elliott on/off model).

    Each round an available client becomes unavailable with probability
    ``p_drop`` and an unavailable one returns with probability ``p_return``.
    The long-run availability is ``p_return / (p_drop + p_return)``; by default
    the initial state is drawn from that stationary law, so the chain is
    stationary from the first round (a chain with ``p_drop = p_return = 0``
    never moves and starts available).

    Args:
      num_clients: number of clients C.
      p_drop: P(on -> off) per round, scalar or list of C, in [0, 1].
      p_return: P(off -> on) per round, scalar or list of C, in [0, 1].
      p_init: probability of starting available; default: stationary.

    Returns:
      An :class:`Availability` with :class:`MarkovState`.

    Raises:
      ValueError: a probability outside [0, 1] or a list of the wrong length.

    Example:
      >>> m = markov(num_clients=2, p_drop=0.0, p_return=1.0)
      >>> m.step(m.init(jax.random.key(0)), jax.random.key(1))[1].tolist()
      [True, True]
    """
    c = _check_num_clients(num_clients)
    drop = _probabilities("p_drop", p_drop, c)
    ret = _probabilities("p_return", p_return, c)
    if p_init is None:
        total = drop + ret
        start = np.where(total > 0, ret / np.where(total > 0, total, 1.0), 1.0).astype(np.float32)
    else:
        start = _probabilities("p_init", p_init, c)
    drop, ret, start = jnp.asarray(drop), jnp.asarray(ret), jnp.asarray(start)

    def init(key):
        return MarkovState(on=jax.random.uniform(key, (c,)) < start, t=jnp.zeros((), jnp.int32))

    def step(state, key):
        u = jax.random.uniform(key, (c,))
        on = jnp.where(state.on, u >= drop, u < ret)
        return MarkovState(on=on, t=state.t + 1), on

    return _jitted(Availability, init, step)


# ---------------------------------------------------------------------------
# Device traces.

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
                         "e.g. 'charging_wifi' or 'charging_wifi_locked'")
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
    slot = _check_positive("slot_minutes", slot_minutes)
    flags = _rule_flags(rule)
    try:
        cov = float(min_coverage)
    except (TypeError, ValueError):
        cov = float("nan")
    if not 0.0 <= cov <= 1.0:
        raise ValueError(f"min_coverage={min_coverage!r}: expected a fraction in [0, 1]")
    data = _read_trace_json(path)
    ids = sorted(data, key=lambda k: (0, int(k), "") if k.isdigit() else (1, 0, k))

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
    """State of :func:`traces`.

    Attributes:
      t: i32[]  # rounds stepped so far
      start: i32[]  # slot replayed in the first round
    """

    t: Array
    start: Array


def traces(num_clients: int, path: str | os.PathLike | None = None, *, matrix: Any = None,
           slot_minutes: float = 60.0, rule: str = "charging_wifi", start: int = 0,
           random_start: bool = False, min_coverage: float = 0.5, wrap: bool = True,
           skip_bad_lines: bool = False) -> Availability:
    """Replays a device-trace availability matrix, one slot per round.

    Client k follows device ``k mod D`` (round-robin, so with C > D several
    clients share a device's trace); round r replays slot ``(start + r) mod T``,
    wrapping at the end of the matrix.

    Args:
      num_clients: number of clients C.
      path: trace JSON, parsed by :func:`load_traces` (with ``slot_minutes``,
        ``rule``, ``min_coverage``, ``wrap``, ``skip_bad_lines``).
      matrix: instead of ``path``, a precomputed ``bool[T, D]``.
      slot_minutes, rule, min_coverage, wrap, skip_bad_lines: see :func:`load_traces`.
      start: slot of the first round, in [0, T).
      random_start: draw the first slot uniformly in ``init`` instead (one start
        for all clients, so the devices' mutual timing is kept).

    Returns:
      An :class:`Availability` with :class:`TraceState`.

    Raises:
      ValueError: neither or both of ``path``/``matrix``, a matrix that is not
        2-D, or ``start`` out of range.

    Example:
      >>> m = traces(num_clients=3, matrix=[[True, False], [False, True]])
      >>> s = m.init(jax.random.key(0)); s, a = m.step(s, jax.random.key(1))
      >>> a.tolist()
      [True, False, True]
    """
    c = _check_num_clients(num_clients)
    if (path is None) == (matrix is None):
        raise ValueError(f"path={path!r}, matrix={'given' if matrix is not None else None}: "
                         "expected exactly one of them")
    if path is not None:
        mat = load_traces(path, slot_minutes, rule, min_coverage=min_coverage, wrap=wrap,
                          skip_bad_lines=skip_bad_lines)
    else:
        mat = np.asarray(matrix)
        if mat.ndim != 2 or mat.shape[0] < 1 or mat.shape[1] < 1:
            raise ValueError(f"matrix has shape {mat.shape}: expected bool[T, D] with T, D >= 1")
        mat = mat.astype(bool)
    num_slots, num_devices = mat.shape
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < num_slots:
        raise ValueError(f"start={start!r}: expected an integer slot in [0, {num_slots})")
    # Clients x slots, so a round is one dynamic row gather.
    per_client = jnp.asarray(mat[:, np.arange(c) % num_devices])

    def init(key):
        s = jax.random.randint(key, (), 0, num_slots) if random_start else jnp.asarray(start)
        return TraceState(t=jnp.zeros((), jnp.int32), start=s.astype(jnp.int32))

    def step(state, key):
        del key
        row = (state.start + state.t) % num_slots
        return TraceState(t=state.t + 1, start=state.start), per_client[row]

    return _jitted(Availability, init, step)


# ---------------------------------------------------------------------------
# Correlated groups.


class CorrelatedState(NamedTuple):
    """State of :func:`correlated`.

    Attributes:
      base: the base model's state.
      group: i32[C]  # group id = smallest client index in the client's group
      grouped: bool[C]  # client is in a group of >= 2 correlated clients
    """

    base: Any
    group: Array
    grouped: Array


def correlation_groups(series: Array, threshold: float) -> Array:
    """Groups clients whose availability series correlate above ``threshold``.

    Two clients are linked when the Pearson correlation of their series is
    ``> threshold`` (a constant series correlates with nothing); groups are the
    connected components of that graph (single linkage), found by min-label
    propagation with pointer jumping. Costs O(C^2) memory: for very large C pass
    explicit ``groups`` to :func:`correlated`.

    Args:
      series: ``bool[W, C]`` or ``f32[W, C]`` availability over W rounds.
      threshold: correlation threshold in [-1, 1].

    Returns:
      ``i32[C]``: each client's group id, the smallest client index in its group.

    Example:
      >>> s = jnp.array([[1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
      >>> correlation_groups(s, 0.35).tolist()
      [0, 0, 2]
    """
    x = jnp.asarray(series, jnp.float32)
    z = x - x.mean(axis=0)
    norm = jnp.sqrt((z * z).sum(axis=0))
    z = jnp.where(norm > 0, z / jnp.where(norm > 0, norm, 1.0), 0.0)
    corr = z.T @ z
    c = x.shape[1]
    adj = (corr > threshold) | jnp.eye(c, dtype=bool)
    idx = jnp.arange(c, dtype=jnp.int32)

    def body(carry):
        labels, _ = carry
        nxt = jnp.min(jnp.where(adj, labels[None, :], c), axis=1)
        nxt = nxt[nxt]  # pointer jumping: converges in O(log diameter) more steps
        return nxt, jnp.any(nxt != labels)

    labels, _ = jax.lax.while_loop(lambda cl: cl[1], body, (idx, jnp.array(True)))
    return labels


def correlated(num_clients: int, base: str = "markov", base_params: dict | None = None,
               threshold: float = 0.35, *, p_group_drop: float = 0.1, mode: str = "shock",
               warmup: int = 200, groups: Sequence[int] | None = None) -> Availability:
    """A base model whose correlated clients drop out together.

    Groups: ``init`` runs the base model for ``warmup`` rounds (from an
    independent copy of its state) and links clients whose availability series
    correlate above ``threshold`` (:func:`correlation_groups`); or ``groups``
    gives each client's group label directly. Only groups of two or more clients
    are affected. How a group fails together (``mode``):

    - ``"shock"``: every round each group independently suffers an outage with
      probability ``p_group_drop`` that takes all its members offline, on top of
      the base availability.
    - ``"any"``: a grouped client is available only when every member of its
      group is available under the base model (one member's drop takes the
      whole group down).

    Independent base models (``bernoulli``, ``markov``) give practically no
    pairs above 0.35 (the sample correlation of independent series over 200
    rounds has standard deviation ~0.07), so the groups come from ``traces``
    (on the shipped traces, 60-minute slots, 0.35 links 28 of the 100 devices
    into 8 groups; clients sharing a device when C > D always group) or from
    explicit ``groups``.

    Args:
      num_clients: number of clients C.
      base: name of the base model in ``REGISTRY`` (not ``correlated``).
      base_params: its parameters (without ``num_clients``).
      threshold: correlation threshold in [-1, 1] (study: 0.35).
      p_group_drop: per-round outage probability of a group (``"shock"`` mode).
      mode: ``"shock"`` or ``"any"``.
      warmup: rounds of base history used to estimate correlations, >= 2.
      groups: optional list of C group labels (any hashable values); skips the
        correlation estimate.

    Returns:
      An :class:`Availability` with :class:`CorrelatedState`.

    Raises:
      ValueError: unknown ``base`` or ``mode``, threshold outside [-1, 1],
        probability outside [0, 1], ``warmup < 2``, ``groups`` of wrong length.

    Example:
      >>> m = correlated(num_clients=4, base="bernoulli", base_params={"p": 1.0},
      ...                groups=[0, 0, 1, 2], p_group_drop=1.0)
      >>> m.step(m.init(jax.random.key(0)), jax.random.key(1))[1].tolist()
      [False, False, True, True]
    """
    c = _check_num_clients(num_clients)
    if base not in REGISTRY or base == "correlated":
        raise ValueError(f"base={base!r}: expected one of "
                         f"{sorted(k for k in REGISTRY if k != 'correlated')}")
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        thr = float("nan")
    if not -1.0 <= thr <= 1.0:
        raise ValueError(f"threshold={threshold!r}: expected a correlation in [-1, 1]")
    p_shock = float(_probabilities("p_group_drop", p_group_drop, 1)[0])
    if mode not in ("shock", "any"):
        raise ValueError(f"mode={mode!r}: expected 'shock' or 'any'")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 2:
        raise ValueError(f"warmup={warmup!r}: expected an integer >= 2")
    model = REGISTRY[base](num_clients=c, **dict(base_params or {}))
    fixed = None
    if groups is not None:
        if len(groups) != c:
            raise ValueError(f"groups has {len(groups)} labels: expected num_clients={c}")
        first_index: dict = {}
        fixed = jnp.asarray([first_index.setdefault(g, i) for i, g in enumerate(groups)], jnp.int32)

    def init(key):
        k_base, k_hist = jax.random.split(key)
        state = model.init(k_base)
        if fixed is not None:
            group = fixed
        else:
            _, series = jax.lax.scan(model.step, model.init(k_base), jax.random.split(k_hist, warmup))
            group = correlation_groups(series, thr)
        size = jax.ops.segment_sum(jnp.ones((c,), jnp.int32), group, num_segments=c)
        return CorrelatedState(base=state, group=group, grouped=size[group] >= 2)

    def step(state, key):
        k_base, k_group = jax.random.split(key)
        base_state, available = model.step(state.base, k_base)
        if mode == "shock":
            # One draw per group id (ids are client indices), shared by its members.
            down = (jax.random.uniform(k_group, (c,)) < p_shock)[state.group]
        else:
            group_up = jax.ops.segment_min(available.astype(jnp.int32), state.group, num_segments=c)
            down = group_up[state.group] == 0
        available = available & ~(down & state.grouped)
        return state._replace(base=base_state), available

    return _jitted(Availability, init, step)


# ---------------------------------------------------------------------------
# Failures of selected clients.


class Failure(NamedTuple):
    """A failure rule for the K selected clients of a round.

    Attributes:
      init: ``init(key) -> state`` (per-client parameters).
      fails: ``fails(state, key, slots: i32[K], losses: f32[K])
        -> (failed: bool[K], latency: f32[K])``.
    """

    init: Callable[[Array], Any]
    fails: Callable[[Any, Array, Array, Array], tuple[Array, Array]]


class LatencyState(NamedTuple):
    """State of :func:`failure_rule`.

    Attributes:
      median: f32[C]  # each client's median round latency (device speed)
    """

    median: Array


def failure_rule(num_clients: int, latency_threshold: float = 90.0, loss_threshold: float = 40.0,
                 *, latency_median: float = 30.0, latency_client_sigma: float = 0.5,
                 latency_round_sigma: float = 0.3) -> Failure:
    """The study's rule: a selected client fails when it is too slow or diverged.

    Client k fails in a round when its latency ``> latency_threshold`` or its
    local loss ``>= loss_threshold`` (a NaN loss also fails). Latency is
    log-normal at two levels, the usual model of heterogeneous device speed:
    each client's median ``m_k = latency_median * exp(latency_client_sigma * z_k)``
    is drawn once in ``init``, and each round
    ``latency = m_k * exp(latency_round_sigma * e)``, ``z_k, e ~ N(0, 1)``. With the
    defaults about 3% of rounds exceed 90, concentrated on the slow clients.

    Args:
      num_clients: number of clients C.
      latency_threshold: latency above which a client fails (study: 90), > 0.
      loss_threshold: loss at or above which a client fails (study: 40), > 0.
      latency_median: median latency over clients, > 0.
      latency_client_sigma: spread of client medians (log scale), >= 0.
      latency_round_sigma: round-to-round spread (log scale), >= 0.

    Returns:
      A :class:`Failure` with :class:`LatencyState`.

    Example:
      >>> rule = failure_rule(num_clients=3, latency_client_sigma=0.0, latency_round_sigma=0.0)
      >>> failed, latency = rule.fails(rule.init(jax.random.key(0)), jax.random.key(1),
      ...                              jnp.array([0, 2]), jnp.array([1.0, 40.0]))
      >>> failed.tolist(), latency.tolist()
      ([False, True], [30.0, 30.0])
    """
    c = _check_num_clients(num_clients)
    lat_thr = _check_positive("latency_threshold", latency_threshold)
    loss_thr = _check_positive("loss_threshold", loss_threshold)
    median = _check_positive("latency_median", latency_median)
    s_client = _check_positive("latency_client_sigma", latency_client_sigma, allow_zero=True)
    s_round = _check_positive("latency_round_sigma", latency_round_sigma, allow_zero=True)

    def init(key):
        z = jax.random.normal(key, (c,))
        return LatencyState(median=median * jnp.exp(s_client * z))

    def fails(state, key, slots, losses):
        e = jax.random.normal(key, jnp.shape(slots))
        latency = state.median[slots] * jnp.exp(s_round * e)
        losses = jnp.asarray(losses, jnp.float32)
        failed = (latency > lat_thr) | ~(losses < loss_thr)  # ~(<) so NaN fails
        return failed, latency.astype(jnp.float32)

    return _jitted(Failure, init, fails)


def no_failures(num_clients: int, **unused: Any) -> Failure:
    """No selected client ever fails; latency is reported as 0.

    Args:
      num_clients: number of clients C.
      **unused: ignored, so configs can switch rules without editing params.

    Returns:
      A :class:`Failure` whose ``fails`` returns all-False and zeros.

    Example:
      >>> r = no_failures(2); r.fails(r.init(jax.random.key(0)), None, jnp.array([1]), jnp.array([99.0]))[0].tolist()
      [False]
    """
    _check_num_clients(num_clients)

    def init(key):
        del key
        return ()

    def fails(state, key, slots, losses):
        del state, key, losses
        k = jnp.shape(slots)
        return jnp.zeros(k, bool), jnp.zeros(k, jnp.float32)

    return _jitted(Failure, init, fails)


REGISTRY: dict[str, Callable[..., Availability]] = {
    "always": always,
    "bernoulli": bernoulli,
    "markov": markov,
    "traces": traces,
    "correlated": correlated,
}

FAILURES: dict[str, Callable[..., Failure]] = {
    "none": no_failures,
    "study": failure_rule,
}
