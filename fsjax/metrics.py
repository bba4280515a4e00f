"""Accuracy and fairness metrics (REFERENCE.md section B), pure and jit-able.

Every function is ``jax.jit``-compiled (so eager calls compile once; inside an
outer jit it inlines) and maps arrays to a scalar with the formula in its docstring;
variances and standard deviations are population ones (ddof = 0), and edge
cases (all zeros, empty masks) have a fixed documented value so a round never
produces an exception. :func:`round_metrics` returns fsjax's own nine metrics it
logs per round under ``METRIC_NAMES``; the CUP study's six
(REFERENCE B.6) are :func:`cup_metrics` (``CUP_METRIC_NAMES``), also logged
every round.

Example:
  >>> import jax.numpy as jnp
  >>> float(jain(jnp.array([1.0, 1.0, 1.0])))
  1.0
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fsjax.cup_metrics import CUP_METRIC_NAMES, cup_metrics  # noqa: F401 (REFERENCE B.6)

Array = jax.Array

# fsjax's own per-round metrics (round_metrics): accuracy, and fairness measures that
# predate the CUP study, named after what they measure.
METRIC_NAMES = ("accuracy_mean", "accuracy_jain", "cum_accuracy_cv", "cum_accuracy_jain",
                "participation_rate_gap", "accuracy_variance", "label_kl", "unseen_labels",
                "class_loss_variance")
# The CUP study's metrics that use utility, also reported "with surrogate" (suffix _surrogate).
UTILITY_METRICS = ("utility_cv", "utility_jain", "worst10_utility")
# Every fairness column a round can log (MLflow files them under fairness/).
FAIRNESS_NAMES = (METRIC_NAMES[1:] + CUP_METRIC_NAMES
                  + tuple(f"{k}_surrogate" for k in UTILITY_METRICS))


def _f32(x: Any) -> Array:
    return jnp.asarray(x, jnp.float32)


@jax.jit
def jain(x: Any) -> Array:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)``.

    In [1/n, 1] for non-negative x: 1 when all values are equal, 1/n when one
    client has everything. All zeros count as equal: 1.

    Args:
      x: f32[n], non-negative (e.g. accuracies, cumulative utilities).

    Returns:
      f32 scalar.

    Example:
      >>> float(jain(jnp.array([1.0, 0.0])))
      0.5
    """
    x = _f32(x)
    sq = jnp.sum(x * x)
    return jnp.where(sq > 0, jnp.sum(x) ** 2 / (x.size * jnp.where(sq > 0, sq, 1.0)), 1.0)


@jax.jit
def gini(x: Any) -> Array:
    """Gini coefficient ``sum_i sum_j |x_i - x_j| / (2 n^2 mean(x))``.

    Computed in O(n log n) from the sorted values ``x_(1) <= ... <= x_(n)`` as
    ``(2 sum_i i x_(i)) / (n sum x) - (n + 1) / n``. 0 for equal values,
    ``(n - 1) / n`` when one holds everything; all zeros: 0.

    Args:
      x: f32[n] non-negative (e.g. participation counts).

    Returns:
      f32 scalar.

    Example:
      >>> float(gini(jnp.array([0.0, 0.0, 0.0, 4.0])))
      0.75
    """
    x = jnp.sort(_f32(x))
    n = x.size
    total = jnp.sum(x)
    ranks = jnp.arange(1, n + 1, dtype=jnp.float32)
    g = 2.0 * jnp.sum(ranks * x) / (n * jnp.where(total > 0, total, 1.0)) - (n + 1.0) / n
    return jnp.where(total > 0, g, 0.0)


@jax.jit
def coefficient_of_variation(x: Any) -> Array:
    """Coefficient of variation ``std(x) / mean(x)`` (population std).

    0 when all values are equal (including all zeros); ``inf`` when the mean
    is 0 but the values differ (possible only with signed inputs).

    Args:
      x: f32[n].

    Returns:
      f32 scalar.

    Example:
      >>> float(coefficient_of_variation(jnp.array([1.0, 3.0])))
      0.5
    """
    x = _f32(x)
    mean, std = jnp.mean(x), jnp.std(x)
    safe = jnp.where(mean != 0, jnp.abs(mean), 1.0)
    return jnp.where(std == 0, 0.0, jnp.where(mean != 0, std / safe, jnp.inf))


@jax.jit
def participation_rate(participation: Any, rounds: Any) -> Array:
    """Participation rate: rounds participated / rounds completed (0 before any round).

    Example:
      >>> participation_rate(jnp.array([1, 4]), 4).tolist()
      [0.25, 1.0]
    """
    r = _f32(rounds)
    return _f32(participation) / jnp.where(r > 0, r, 1.0)


@jax.jit
def participation_rate_gap(participation: Any, rounds: Any, ever_available: Any) -> Array:
    """Max minus min participation rate among clients ever available.

    fsjax's older "selection gap" (logged as ``participation_rate_gap``); the CUP
    study's ``selection_gap`` is :func:`fsjax.cup_metrics.cup_metrics`'.

    Rate = participation count / rounds completed (:func:`participation_rate`).
    Clients never available cannot be selected and are left out; with none
    ever available the gap is 0.

    Args:
      participation: i32[C] rounds each client participated so far.
      rounds: scalar, rounds completed so far.
      ever_available: bool[C].

    Returns:
      f32 scalar in [0, 1].

    Example:
      >>> float(participation_rate_gap(jnp.array([1, 3, 0]), 4, jnp.array([True, True, False])))
      0.5
    """
    rate = participation_rate(participation, rounds)
    mask = jnp.asarray(ever_available, bool)
    hi = jnp.max(jnp.where(mask, rate, -jnp.inf))
    lo = jnp.min(jnp.where(mask, rate, jnp.inf))
    return jnp.where(jnp.any(mask), hi - lo, 0.0)


@jax.jit
def label_kl(selected_label_counts: Any, global_label_dist: Any, eps: float = 1e-8) -> Array:
    """KL divergence ``KL(P || Q) = sum_l P_l log(P_l / Q_l)`` of selected vs global labels.

    P is the label distribution of the round's selected (participating) data,
    Q the global one; this direction (the standard "how far is the sampled
    data from the population") stays finite when the selection misses labels
    (0 log 0 = 0). Q is smoothed as ``(Q + eps) / (1 + L eps)`` so a label absent
    globally cannot give ``inf``. Both inputs may be counts or distributions
    (they are normalised). With no selected data the divergence is undefined:
    NaN.

    Args:
      selected_label_counts: f32[L] label counts of the selected data.
      global_label_dist: f32[L] global label counts or distribution.
      eps: smoothing of Q.

    Returns:
      f32 scalar >= 0, or NaN when no data was selected.

    Example:
      >>> round(float(label_kl(jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5]))), 4)
      0.6931
    """
    p_counts = _f32(selected_label_counts)
    q = _f32(global_label_dist)
    p_total = jnp.sum(p_counts)
    p = p_counts / jnp.where(p_total > 0, p_total, 1.0)
    q = q / jnp.where(jnp.sum(q) > 0, jnp.sum(q), 1.0)
    q = (q + eps) / (1.0 + q.size * eps)
    terms = jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(q)), 0.0)
    return jnp.where(p_total > 0, jnp.sum(terms), jnp.nan)


@jax.jit
def unseen_labels(selected_label_counts: Any) -> Array:
    """Number of labels with no example in the selected data.

    Args:
      selected_label_counts: f32[L].

    Returns:
      i32 scalar in [0, L].

    Example:
      >>> int(unseen_labels(jnp.array([3.0, 0.0, 1.0])))
      1
    """
    return jnp.sum(_f32(selected_label_counts) <= 0).astype(jnp.int32)


@jax.jit
def class_loss_variance(class_loss: Any) -> Array:
    """Population variance across classes of the global model's per-class loss.

    Classes whose loss is NaN (e.g. no test example) are ignored; NaN if all are.

    Args:
      class_loss: f32[L].

    Returns:
      f32 scalar.

    Example:
      >>> float(class_loss_variance(jnp.array([1.0, 3.0])))
      1.0
    """
    return jnp.nanvar(_f32(class_loss))


@jax.jit
def variance(x: Any) -> Array:
    """Population variance ``mean((x - mean x)^2)``.

    Example:
      >>> float(variance(jnp.array([0.0, 1.0])))
      0.25
    """
    return jnp.var(_f32(x))


def round_metrics(*, accuracy: Any, cum_accuracy: Any, participation: Any, ever_available: Any,
                  rounds: Any, selected_label_counts: Any, global_label_dist: Any,
                  class_loss: Any) -> dict[str, Array]:
    """fsjax's own nine per-round metrics (the CUP study's six: :func:`cup_metrics`).

    1. ``accuracy_mean``: mean per-client accuracy.
    2. ``accuracy_jain``: :func:`jain` of per-client accuracy.
    3. ``cum_accuracy_cv``: :func:`coefficient_of_variation` of the accuracy
       levels summed over each client's participations (un-normalised; mostly
       measures participation counts; was ``utility_cv``).
    4. ``cum_accuracy_jain``: :func:`jain` of the same (was ``utility_jain``).
    5. ``participation_rate_gap``: :func:`participation_rate_gap` (ever-available
       clients; was ``selection_gap``).
    6. ``accuracy_variance``: :func:`variance` of per-client accuracy.
    7. ``label_kl``: :func:`label_kl` of this round's selected data vs global.
    8. ``unseen_labels``: :func:`unseen_labels` of this round's selected data.
    9. ``class_loss_variance``: :func:`class_loss_variance`.

    (``participation_gini`` moved to :func:`cup_metrics`, with the same formula.)

    Args:
      accuracy: f32[C] global-model accuracy on each client's test data.
      cum_accuracy: f32[C] accuracy summed over the rounds each client participated.
      participation: i32[C] rounds each client participated so far.
      ever_available: bool[C] available in at least one round so far.
      rounds: scalar, rounds completed so far (>= 1).
      selected_label_counts: f32[L] label counts of this round's selected clients.
      global_label_dist: f32[L] global label distribution (or counts).
      class_loss: f32[L] global model's loss per class.

    Returns:
      ``{name: f32 scalar}`` with exactly the keys of ``METRIC_NAMES``, in order.

    Example:
      >>> m = round_metrics(accuracy=jnp.array([0.5, 0.5]), cum_accuracy=jnp.array([1.0, 1.0]),
      ...     participation=jnp.array([2, 2]), ever_available=jnp.array([True, True]), rounds=2,
      ...     selected_label_counts=jnp.array([1.0, 1.0]), global_label_dist=jnp.array([0.5, 0.5]),
      ...     class_loss=jnp.array([0.3, 0.3]))
      >>> float(m["participation_rate_gap"]), float(m["accuracy_jain"])
      (0.0, 1.0)
    """
    values = _round_values(accuracy, cum_accuracy, participation, ever_available, rounds,
                           selected_label_counts, global_label_dist, class_loss)
    # Built outside jit: a jitted function's dict output comes back key-sorted.
    return dict(zip(METRIC_NAMES, values))


@jax.jit
def _round_values(accuracy, cum_accuracy, participation, ever_available, rounds,
                  selected_label_counts, global_label_dist, class_loss):
    acc = _f32(accuracy)
    values = (
        jnp.mean(acc),
        jain(acc),
        coefficient_of_variation(cum_accuracy),
        jain(cum_accuracy),
        participation_rate_gap(participation, rounds, ever_available),
        variance(acc),
        label_kl(selected_label_counts, global_label_dist),
        unseen_labels(selected_label_counts),
        class_loss_variance(class_loss),
    )
    return tuple(_f32(v) for v in values)
