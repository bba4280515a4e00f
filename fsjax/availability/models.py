"""The availability interface and the simple stochastic models.

An availability model is an :class:`Availability` ``(init, step)`` pair of pure
functions: ``init(key) -> state`` and ``step(state, key) -> (state, available)``
with ``available: bool[C]``, stepped once per round inside ``jax.jit``. This
module holds that type and the models without outside data:

- ``always``: every client is always available (:class:`CounterState`).
- ``bernoulli(p)``: independent coin flips per client and round.
- ``markov(p_drop, p_return)``: a two-state (on/off) chain per client
  (:class:`MarkovState`).

Trace replay lives in :mod:`fsjax.availability.device_traces`, correlated
drop-outs in :mod:`fsjax.availability.correlation`.

Example:
  >>> import jax
  >>> model = markov(num_clients=4, p_drop=0.1, p_return=0.3)
  >>> state = model.init(jax.random.key(0))
  >>> state, available = model.step(state, jax.random.key(1))
  >>> available.shape, available.dtype
  ((4,), dtype('bool'))
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fsjax.availability._checks import Array, check_num_clients, jitted, probabilities

__all__ = ["Availability", "CounterState", "MarkovState", "always", "bernoulli", "markov"]


class Availability(NamedTuple):
    """An availability model: pure functions stepped once per round.

    Attributes:
      init: ``init(key) -> state``; the state is a pytree.
      step: ``step(state, key) -> (state, available)``, ``available: bool[C]``.
    """

    init: Callable[[Array], Any]
    step: Callable[[Any, Array], tuple[Any, Array]]



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
    c = check_num_clients(num_clients)

    def init(key):
        del key
        return CounterState(t=jnp.zeros((), jnp.int32))

    def step(state, key):
        del key
        return CounterState(t=state.t + 1), jnp.ones((c,), bool)

    return jitted(Availability, init, step)


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
    c = check_num_clients(num_clients)
    probs = jnp.asarray(probabilities("p", p, c))

    def init(key):
        del key
        return CounterState(t=jnp.zeros((), jnp.int32))

    def step(state, key):
        available = jax.random.uniform(key, (c,)) < probs
        return CounterState(t=state.t + 1), available

    return jitted(Availability, init, step)


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
    c = check_num_clients(num_clients)
    drop = probabilities("p_drop", p_drop, c)
    ret = probabilities("p_return", p_return, c)
    if p_init is None:
        total = drop + ret
        start = np.where(total > 0, ret / np.where(total > 0, total, 1.0), 1.0).astype(np.float32)
    else:
        start = probabilities("p_init", p_init, c)
    drop, ret, start = jnp.asarray(drop), jnp.asarray(ret), jnp.asarray(start)

    def init(key):
        return MarkovState(on=jax.random.uniform(key, (c,)) < start, t=jnp.zeros((), jnp.int32))

    def step(state, key):
        u = jax.random.uniform(key, (c,))
        on = jnp.where(state.on, u >= drop, u < ret)
        return MarkovState(on=on, t=state.t + 1), on

    return jitted(Availability, init, step)

