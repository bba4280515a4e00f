"""Counting real XLA compilations, for tests that assert "no recompilation".

JAX reports every backend compilation (including one served from the
persistent compilation cache) as a ``/jax/core/compile/backend_compile_duration``
event through :mod:`jax.monitoring`, with the compiled function's name. A
listener registered for the duration of a ``with`` block records them, so a
test can run a few rounds and assert that nothing was compiled: this fails if
any jitted function (the round, a host-side helper, an eager op on a new
shape) is compiled again, whatever the code under test counts itself.

Example:
  >>> import jax, jax.numpy as jnp
  >>> f = jax.jit(lambda x: x * 2)
  >>> with count_compilations() as compiled:
  ...     _ = f(jnp.ones(3)); _ = f(jnp.ones(3)); _ = f(jnp.ones(4))
  >>> compiled.count("jit(<lambda>)")   # once per shape, not per call
  2
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax.monitoring

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations() -> Iterator[list[str]]:
    """Records the name of every function XLA compiles inside the block.

    Yields:
      A list, filled while the block runs, with one entry per compilation:
      the name JAX gives the computation (e.g. ``"jit(_round)"``).
    """
    compiled: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            compiled.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
