"""One simulation over several processes: JAX's multi-process runtime (``fsjax run --distributed``).

Every process runs the same program on the same inputs (SPMD, "multi-controller"
JAX): the config and its seed make each process build the same data, the same
initial state and the same round. :func:`initialize` joins the processes
through ``jax.distributed.initialize`` (a coordinator on process 0; CPU
collectives over gloo); :class:`DistributedSimulation` then builds the
``clients`` mesh over *all* processes' devices (``jax.devices()``), so the
round's K client slots are split over them by the engine's ``shard_map``
(:func:`fsjax.engine.train_clients` / :func:`fsjax.engine.train_and_reduce`)
and their aggregation terms summed with a ``psum`` across processes.

What is sharded and what is not:

- sharded: local training of the K client slots (K padded to a multiple of the
  global device count with weightless slots, :func:`fsjax.engine.pad_slots`),
  and the per-slot sums of the aggregation terms;
- replicated (computed identically by every process): the data set and the
  partition, the round state (global params, optimizer, availability,
  selector and per-client arrays), selection, aggregation's server step,
  evaluation and the metrics. Each process therefore holds the whole data set
  and evaluates every client itself; only client training is split.

Only process 0 (:func:`is_primary`) writes the run directory and the MLflow
run; the other processes compute the same rounds and write nothing.

Where the processes come from: ``coordinator``/``num_processes``/``process_id``
arguments (``--coordinator`` etc.), else ``$FSJAX_COORDINATOR``,
``$FSJAX_NUM_PROCESSES``, ``$FSJAX_PROCESS_ID``, else JAX's own detection of
the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU: :func:`settings`).

Example:
  >>> settings(environ={"FSJAX_COORDINATOR": "10.0.0.1:1234",
  ...                   "FSJAX_NUM_PROCESSES": "2", "FSJAX_PROCESS_ID": "1"})
  {'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1}
  >>> settings(environ={})   # nothing given: JAX detects SLURM, Open MPI, ...
  {}

  In every process (what ``fsjax run --distributed`` does):

  >>> initialize()                                            # doctest: +SKIP
  >>> sim = DistributedSimulation(cfg)                        # doctest: +SKIP
  >>> hist = simulation.run(cfg, callbacks if is_primary() else (), sim=sim)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsjax import engine, simulation
from fsjax.config import ExperimentConfig

ENV_COORDINATOR = "FSJAX_COORDINATOR"
ENV_NUM_PROCESSES = "FSJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "FSJAX_PROCESS_ID"


def _int(value, name: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected an integer") from None


def settings(coordinator: str | None = None, num_processes: int | str | None = None,
             process_id: int | str | None = None,
             environ: Mapping[str, str] | None = None) -> dict:
    """The keyword arguments of ``jax.distributed.initialize`` for this process.

    Each of the three comes from its argument, else its environment variable
    (``FSJAX_COORDINATOR``, ``FSJAX_NUM_PROCESSES``, ``FSJAX_PROCESS_ID``);
    one given by neither is left out, so JAX detects it from the cluster
    scheduler (SLURM, Open MPI, Kubernetes, Cloud TPU).

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordinator service.
      num_processes: how many processes take part (>= 1).
      process_id: this process's index in ``[0, num_processes)``.
      environ: the environment to read (default ``os.environ``).

    Returns:
      A dict with any of ``coordinator_address``, ``num_processes``, ``process_id``.

    Raises:
      ValueError: a malformed value, naming the flag and its variable.

    Example:
      >>> settings("127.0.0.1:5000", 2, 0)
      {'coordinator_address': '127.0.0.1:5000', 'num_processes': 2, 'process_id': 0}
      >>> settings(num_processes=2, process_id=2)
      Traceback (most recent call last):
      ...
      ValueError: --process-id/FSJAX_PROCESS_ID=2: expected 0..1 (num_processes=2)
    """
    env = os.environ if environ is None else environ
    coordinator = coordinator if coordinator is not None else env.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None \
        else env.get(ENV_NUM_PROCESSES) or None
    process_id = process_id if process_id is not None else env.get(ENV_PROCESS_ID) or None
    out: dict = {}
    if coordinator is not None:
        host, sep, port = str(coordinator).strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"--coordinator/{ENV_COORDINATOR}={coordinator!r}: "
                             "expected HOST:PORT (port 1..65535)")
        out["coordinator_address"] = f"{host}:{int(port)}"
    if num_processes is not None:
        n = _int(num_processes, f"--num-processes/{ENV_NUM_PROCESSES}")
        if n < 1:
            raise ValueError(f"--num-processes/{ENV_NUM_PROCESSES}={n}: expected >= 1")
        out["num_processes"] = n
    if process_id is not None:
        i = _int(process_id, f"--process-id/{ENV_PROCESS_ID}")
        n = out.get("num_processes")
        if i < 0 or (n is not None and i >= n):
            bound = f"0..{n - 1} (num_processes={n})" if n is not None else ">= 0"
            raise ValueError(f"--process-id/{ENV_PROCESS_ID}={i}: expected {bound}")
        out["process_id"] = i
    return out


def initialize(coordinator: str | None = None, num_processes: int | str | None = None,
               process_id: int | str | None = None, *, timeout: int = 300) -> dict:
    """Joins this process to the others (``jax.distributed.initialize``); once per process.

    Must run before anything touches a JAX device. On CPU the processes'
    collectives go over gloo (JAX's default, set here explicitly unless
    ``$JAX_CPU_COLLECTIVES_IMPLEMENTATION`` names another). A second call in
    the same process changes nothing.

    Args:
      coordinator, num_processes, process_id: as :func:`settings`.
      timeout: seconds to wait for all processes to connect.

    Returns:
      The settings used (see :func:`settings`).

    Raises:
      ValueError: bad settings, or JAX found no cluster and none was given.
    """
    kwargs = settings(coordinator, num_processes, process_id)
    if jax.distributed.is_initialized():
        return kwargs
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):   # e.g. mpi, if asked
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=int(timeout))
    except (RuntimeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(
            f"--distributed: jax.distributed.initialize failed ({first}); give "
            f"--coordinator/--num-processes/--process-id (or ${ENV_COORDINATOR}, "
            f"${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}) unless a cluster scheduler "
            "JAX detects (SLURM, Open MPI, Kubernetes) started the processes") from None
    return kwargs


def is_primary() -> bool:
    """True in process 0 (the one that writes outputs), and when not distributed."""
    return jax.process_index() == 0


def replicate(tree, mesh: Mesh):
    """``tree``'s arrays as global arrays replicated on every device of ``mesh``.

    Every process must pass the same values (they do: same config, same seed).
    """
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


class DistributedSimulation(simulation.Simulation):
    """A :class:`fsjax.simulation.Simulation` whose client slots span all processes' devices.

    The ``clients`` mesh is over ``jax.devices()`` (every process's); the
    data set, the global test set and every round's outputs (state and
    metrics) are replicated global arrays, so each process can read them
    (process 0's CSV, checkpoint and MLflow callbacks included) and pass the
    state to the next round. Build and step it in every process, with the
    same config, for the same rounds.

    Args:
      cfg: the experiment config (``engine.mode`` must not be ``loop``, which
        trains clients outside the compiled round).
      dataset: as :class:`~fsjax.simulation.Simulation`.

    Raises:
      ValueError: ``engine.mode`` is ``loop``.
    """

    def __init__(self, cfg: ExperimentConfig, dataset=None):
        mode, _ = engine.resolve_mode(cfg.engine.mode, cfg.engine.chunk_size or None)
        if mode == "loop":
            raise ValueError("engine.mode=loop: --distributed needs a compiled mode "
                             "(auto, vmap or chunked)")
        mesh = engine.client_mesh(jax.devices())
        super().__init__(cfg, dataset, mesh=mesh)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.data = replicate(self.data, mesh)
        # One replicated copy of the global test set (label modes carry it in data).
        self._test = (self.data.eval_set if self.data.eval_set is not None
                      else replicate(self._test, mesh))
        self._dist_round = None

    def init(self) -> simulation.RoundState:
        """The state before round 1, replicated on every device."""
        return replicate(super().init(), self.mesh)

    def step(self, state: simulation.RoundState):
        """One round over all processes' devices (every process must call it)."""
        if self._dist_round is None:
            self._dist_round = jax.jit(self._round, out_shardings=self.replicated)
        # A no-op for the previous round's state; a restored checkpoint (host
        # arrays) is replicated first, so a resumed run compiles the round once too.
        state = jax.device_put(state, self.replicated)
        return self._dist_round(state, self.data)
