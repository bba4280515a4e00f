"""Participation accounting of a round (REFERENCE.md B.1 steps 2, 4 and 8-11).

Availability A, selection S and participation P = A S are kept apart: a
selector that picks from the whole population (``fedavg_random``) can select
an unavailable client (S = 1, P = 0), and a selected available client whose
update failed or was dropped has P = 0 too (P = "its update was used"). The
:class:`Ledger` counts them per client and accumulates the utility credited
on participation; everything is O(C) and elementwise.

- :func:`availability_estimate`: pi_k(t) = rounds available, round t included, / (t + 1);
- :func:`debt`: d_k(t) = rounds 0..t-1 not participated (never reset);
- :func:`gain`: the utility increment Delta u_k(t) under a named definition;
- :func:`record`: adds one round (counts, u_k += P Delta u_k, the optional surrogate);
- :func:`normalised_utility`: u~_k = u_k / pi_k (NaN where pi_k = 0).

Example:
  >>> led = init(3)
  >>> led = record(led, t=0, available=jnp.array([True, True, False]),
  ...              selected=jnp.array([True, False, True]),
  ...              participated=jnp.array([True, False, False]),
  ...              gain=jnp.array([0.2, 0.5, 0.5]), accuracy=jnp.array([0.4, 0.3, 0.1]))
  >>> led.available.tolist(), led.selected.tolist(), led.participated.tolist(), debt(led, 1).tolist()
  ([1, 1, 0], [1, 0, 1], [1, 0, 0], [0, 1, 1])
  >>> [round(u, 3) for u in led.utility.tolist()]
  [0.2, 0.0, 0.0]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

UTILITIES = ("accuracy_gain", "accuracy_gain_since_last", "loss_reduction")
# accuracy_gain_since_last's clip: one percentage point, accuracies being fractions.
SINCE_LAST_CLIP = 0.01


class Ledger(NamedTuple):
    """Per-client counts and utility after the rounds recorded so far (all [C]).

    Attributes:
      available: i32  # rounds available (A = 1)
      selected: i32  # rounds selected (S = 1), available or not
      participated: i32  # rounds participated (P = A S and the update was used)
      utility: f32  # u_k = sum over rounds of P * Delta u_k
      cum_accuracy: f32  # accuracy summed over the rounds participated (fsjax's older "utility")
      acc_at_part: f32  # accuracy evaluated after the client's last participation
      last_gain: f32  # the client's last credited increment (the surrogate's base)
      last_part: i32  # round (0-based) of the last participation, -1: never
      surrogate: f32  # s_k of B.1 step 11 (0 unless the surrogate is on)
    """

    available: Array
    selected: Array
    participated: Array
    utility: Array
    cum_accuracy: Array
    acc_at_part: Array
    last_gain: Array
    last_part: Array
    surrogate: Array


def init(num_clients: int) -> Ledger:
    """The empty ledger of C clients."""
    zi, zf = jnp.zeros(num_clients, jnp.int32), jnp.zeros(num_clients, jnp.float32)
    return Ledger(zi, zi, zi, zf, zf, zf, zf, jnp.full(num_clients, -1, jnp.int32), zf)


def availability_estimate(ledger: Ledger, available: Any, t: Any) -> Array:
    """pi_k(t) (B.1 step 2): rounds available among 0..t, round t's ``available``
    included, over t + 1 (``ledger`` holds rounds 0..t-1).

    Example:
      >>> availability_estimate(init(2), jnp.array([True, False]), 0).tolist()
      [1.0, 0.0]
    """
    t = jnp.asarray(t, jnp.float32)
    return (ledger.available + jnp.asarray(available, jnp.int32)).astype(jnp.float32) / (t + 1.0)


def debt(ledger: Ledger, rounds: Any) -> Array:
    """d_k (B.1 step 10): rounds not participated among the ``rounds`` recorded
    (unavailable rounds included, never reset); selection in round t uses d_k(t)."""
    return jnp.asarray(rounds, jnp.int32) - ledger.participated


def gain(name: str, *, first_round: Any, accuracy: Any, prev_accuracy: Any, ledger: Ledger,
         loss_before: Any = None, local_loss: Any = None) -> Array:
    """Delta u_k(t) (B.1 step 8) for every client; :func:`record` credits it on P only.

    - ``accuracy_gain``: accuracy now minus at the previous evaluation, signed
      (negative gains kept); 0 in the first round.
    - ``accuracy_gain_since_last``: accuracy now minus after the client's last
      participation, clipped to [0, 0.01] (one percentage point: accuracies are
      fractions in fsjax); 0 for a client that never participated before.
    - ``loss_reduction``: ``max(0, F_k(w_t) - final local loss)``, with
      ``F_k(w_t)`` the global model's mean loss on k's training data before
      local training (``loss_before``) and ``local_loss`` the mean loss of
      its local steps; both are 0 for non-participants.

    NaN and infinite values count as 0.

    Example:
      >>> gain("accuracy_gain", first_round=False, accuracy=jnp.array([0.75, 0.25]),
      ...      prev_accuracy=jnp.array([0.5, 0.5]), ledger=init(2)).tolist()
      [0.25, -0.25]
    """
    acc = jnp.nan_to_num(jnp.asarray(accuracy, jnp.float32), nan=0.0)
    if name == "accuracy_gain":
        g = jnp.where(first_round, 0.0, acc - jnp.asarray(prev_accuracy, jnp.float32))
    elif name == "accuracy_gain_since_last":
        g = jnp.where(ledger.last_part >= 0,
                      jnp.clip(acc - ledger.acc_at_part, 0.0, SINCE_LAST_CLIP), 0.0)
    elif name == "loss_reduction":
        g = jnp.maximum(jnp.asarray(loss_before, jnp.float32)
                        - jnp.asarray(local_loss, jnp.float32), 0.0)
    else:
        raise ValueError(f"utility name={name!r}: expected one of {list(UTILITIES)}")
    return jnp.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def record(ledger: Ledger, *, t: Any, available: Any, selected: Any, participated: Any,
           gain: Any, accuracy: Any, surrogate: tuple[float, float] | None = None) -> Ledger:
    """Adds round t (0-based): counts, u_k += P_k Delta u_k, and the surrogate.

    Args:
      ledger: rounds 0..t-1.
      t: this round's index.
      available, selected, participated: bool[C], A, S and P (P implies A and S).
      gain: f32[C] Delta u_k(t) (:func:`gain`), credited only where P.
      accuracy: f32[C] this round's client accuracy (after aggregation).
      surrogate: ``(eta0, kappa)`` to accrue ``s_k += eta0 exp(-kappa (t - tau_k))
        * last increment`` for clients that participated before but not in round
        t (B.1 step 11; it never touches counts or utility), or None (off).

    Returns:
      The ledger after rounds 0..t.
    """
    a = jnp.asarray(available, bool)
    s = jnp.asarray(selected, bool)
    p = jnp.asarray(participated, bool)
    g = jnp.asarray(gain, jnp.float32)
    acc = jnp.nan_to_num(jnp.asarray(accuracy, jnp.float32), nan=0.0)
    t = jnp.asarray(t, jnp.int32)
    sur = ledger.surrogate
    if surrogate is not None:
        eta0, kappa = surrogate
        idle = ~p & (ledger.last_part >= 0)
        decay = jnp.exp(-kappa * (t - ledger.last_part).astype(jnp.float32))
        sur = sur + jnp.where(idle, eta0 * decay * ledger.last_gain, 0.0)
    return Ledger(
        available=ledger.available + a.astype(jnp.int32),
        selected=ledger.selected + s.astype(jnp.int32),
        participated=ledger.participated + p.astype(jnp.int32),
        utility=ledger.utility + jnp.where(p, g, 0.0),
        cum_accuracy=ledger.cum_accuracy + jnp.where(p, acc, 0.0),
        acc_at_part=jnp.where(p, acc, ledger.acc_at_part),
        last_gain=jnp.where(p, g, ledger.last_gain),
        last_part=jnp.where(p, t, ledger.last_part),
        surrogate=sur)


def normalised_utility(ledger: Ledger, rounds: Any) -> Array:
    """u~_k = u_k / pi_k with pi_k = available_k / rounds (B.1 step 9); NaN where pi_k = 0."""
    from fsjax.cup_metrics import normalised_utility as nu
    return nu(ledger.utility, ledger.available, rounds)
