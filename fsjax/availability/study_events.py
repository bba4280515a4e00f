"""The CUP study's event-indexed trace parsing (``traces(rule="study_events")``).

The CUP study (``stefankam/CumulativeParticipationParity``,
``server/availability.py``: ``load_availability_traces``,
``extract_availability_vectors``, ``logical_client_availability``) does not
replay the traces in time. It turns each phone's message list into one bit per
non-empty line and reads one line per round (REFERENCE.md B.5):

- every non-empty line (``str.splitlines``, stripped; timestamp included) is
  one event; two flags start false;
- a line containing ``"wifi"`` sets ``wifi = "off" not in line``; otherwise a
  line containing ``"battery_charged"`` sets ``charging = "off" not in line``;
  nothing else changes a flag, so cellular lines (``4G``, ``3G``, ``2G``,
  ``Unknown``) never reset ``wifi``: once a phone has seen wifi it counts as on
  wifi for the rest of its trace;
- the line's bit is ``wifi and charging`` (written after every line, not only
  after the two kinds above);
- the bits are cut or zero-padded to ``length = max(100, T)`` (T = rounds) and
  round r reads bit ``r mod length``; logical client i reads phone ``"i"``.

Matching is literal and case-sensitive, as the study's; no timestamp is parsed
or checked. :func:`load_study_events` returns these vectors as a matrix whose
columns are in device-id order (numeric ids as numbers), which is the study's
client-to-phone mapping when the ids are ``"0" .. "D-1"``.

Example:
  >>> import json, tempfile
  >>> f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
  >>> json.dump({"0": {"messages": "t\\twifi\\nt\\tbattery_charged_on\\nt\\t4G"}}, f); f.close()
  >>> load_study_events(f.name, length=4)[:, 0].tolist()
  [False, True, True, False]
  >>> os.remove(f.name)
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["STUDY_LENGTH", "event_bits", "load_study_events", "study_length"]

STUDY_LENGTH = 100  # the study keeps max(100, T) lines per phone


def study_length(rounds: int | None = None) -> int:
    """The study's vector length ``max(100, rounds)`` (100 when ``rounds`` is None).

    Raises:
      ValueError: ``rounds`` not None and not an integer >= 1.
    """
    if rounds is None:
        return STUDY_LENGTH
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds={rounds!r}: expected None or an integer >= 1 (the run's "
                         "rounds T; the study keeps max(100, T) event lines per phone)")
    return max(STUDY_LENGTH, int(rounds))


def event_bits(messages: str) -> np.ndarray:
    """One phone's bits, one per non-empty line: ``wifi and charging`` after that line.

    Args:
      messages: the phone's ``messages`` string.

    Returns:
      ``bool[n]``, n = number of non-empty lines.

    Example:
      >>> event_bits("a\\tbattery_charged_on\\nb\\twifi\\nc\\t3G\\nd\\tbattery_charged_off"
      ...            ).tolist()
      [False, True, True, False]
    """
    wifi = charging = False
    bits = []
    for line in messages.splitlines():
        event = line.strip()
        if not event:
            continue
        if "wifi" in event:
            wifi = "off" not in event
        elif "battery_charged" in event:
            charging = "off" not in event
        bits.append(wifi and charging)
    return np.asarray(bits, bool)


def load_study_events(path: str | os.PathLike, length: int = STUDY_LENGTH) -> np.ndarray:
    """The study's per-phone availability vectors as a matrix ``bool[length, D]``.

    Args:
      path: the JSON trace file (``{"<idx>": {"messages": str, ...}}``).
      length: lines kept per phone (the study: ``max(100, T)``,
        :func:`study_length`), >= 1; shorter traces are padded with False.

    Returns:
      ``bool[length, D]``, column d = the d-th device id in numeric order.

    Raises:
      ValueError: missing or unreadable file, wrong structure, bad ``length``.
    """
    from fsjax.availability.device_traces import _read_trace_json, _sorted_ids

    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length={length!r}: expected an integer >= 1")
    data = _read_trace_json(path)
    ids = _sorted_ids(data)
    matrix = np.zeros((int(length), len(ids)), bool)
    for d, k in enumerate(ids):
        bits = event_bits(data[k]["messages"])[:length]
        matrix[:bits.size, d] = bits
    return matrix
