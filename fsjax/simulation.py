"""The round loop: wires availability, selection, local training, aggregation,
evaluation and metrics into one compiled round.

One round, as data (DESIGN.md section 2)::

    RoundState -> availability.step -> selection.select -> K slots
      -> engine.train_clients (gathered shards) -> failure rule / NaN check
      -> aggregation.apply -> evaluation (all clients) -> selection.update
      -> metrics.round_metrics

Shapes never change between rounds, so the round compiles once. In
``engine.mode="loop"`` the round is three jitted pieces around a Python loop
over clients; every other mode is a single jitted function.

Example:
  >>> from fsjax import config, simulation
  >>> hist = simulation.run(config.load("experiments/quick.yaml"))  # doctest: +SKIP
  >>> hist.metrics["accuracy_mean"][-1]                            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsjax import (aggregation, allocation_loop, availability, data as data_lib, engine,
                   evaluation, local, metrics as metrics_lib, models, partition, selection)
from fsjax.config import ExperimentConfig

log = logging.getLogger(__name__)

# Modes whose training runs outside jit, between a jitted plan and a jitted finish.
HOST_MODES = ("loop", "networked")


class RoundState(NamedTuple):
    """Everything that changes from round to round (a pytree; checkpointed as is)."""

    params: Any               # global model params
    server_state: Any         # server optimizer state
    avail_state: Any          # availability model state
    select_state: Any         # selector state
    fail_state: Any           # failure rule state
    alloc_state: Any          # in-loop allocation state (learning-curve history)
    cum_utility: jax.Array    # f32[C] utility summed over the rounds each client participated
    participation: jax.Array  # i32[C] rounds each client participated (update used)
    ever_available: jax.Array  # bool[C]
    accuracy: jax.Array       # f32[C] last evaluated per-client accuracy
    loss: jax.Array           # f32[C] last evaluated per-client loss
    class_loss: jax.Array     # f32[L] last evaluated per-class loss
    round: jax.Array          # i32[]  rounds completed
    key: jax.Array            # u32[2] base PRNG key (raw, so it serialises)


class FederatedData(NamedTuple):
    """Device-resident client data (leading axis C) and label statistics."""

    x: jax.Array            # u8[C, N_max, H, W, ch]
    y: jax.Array            # i32[C, N_max]
    n: jax.Array            # i32[C]
    x_test: jax.Array       # u8[C, M_max, H, W, ch]
    y_test: jax.Array       # i32[C, M_max]
    n_test: jax.Array       # i32[C]
    label_hist: jax.Array   # f32[C, L] training label counts per client
    global_dist: jax.Array  # f32[L]    label distribution of all clients' training data


@dataclasses.dataclass
class History:
    """What a run returns.

    Attributes:
      metrics: per-round float arrays, ``metrics[name][r]`` for round r+1.
      params: final global params.
      clients: final per-client arrays (accuracy, loss, participation, ...).
      test_accuracy: ``{round: accuracy}`` of the global model on the test set.
      state: the final :class:`RoundState`.
      config: the resolved config.
      seconds: wall time of the rounds (compile included).
    """

    metrics: dict[str, np.ndarray]
    params: Any
    clients: dict[str, np.ndarray]
    test_accuracy: dict[int, float]
    state: RoundState
    config: ExperimentConfig
    seconds: float = 0.0


class Callback:
    """Hooks called by :func:`run`; override what you need. All are optional."""

    def on_start(self, sim: "Simulation") -> None: ...

    def on_round(self, sim: "Simulation", round_index: int, metrics: dict[str, float],
                 state: RoundState) -> None: ...

    def on_end(self, sim: "Simulation", history: History) -> None: ...

    def on_error(self, sim: "Simulation", error: BaseException) -> None: ...


# ----------------------------------------------------------------------- setup


def load_dataset(cfg: ExperimentConfig) -> tuple[data_lib.Dataset, str]:
    """The data set named by ``cfg.data`` and a one-line description of it."""
    d = cfg.data
    synth = lambda: data_lib.synthetic(d.num_classes, d.n_train, d.n_test, d.image_shape,
                                       d.seed, d.noise)
    if d.source == "synthetic":
        return synth(), f"synthetic ({d.n_train} train, {d.num_classes} classes)"
    source = "auto" if d.source == "cifar10" else d.source
    try:
        ds = data_lib.load_cifar10(source)
        return ds, f"CIFAR-10 from {source}"
    except ValueError as err:
        if d.fallback != "synthetic":
            raise
        warnings.warn(f"CIFAR-10 not found ({err}); using SYNTHETIC data instead "
                      "(data.fallback=synthetic)", stacklevel=2)
        return synth(), "synthetic fallback (CIFAR-10 not found)"


def prepare_data(cfg: ExperimentConfig, ds: data_lib.Dataset) -> FederatedData:
    """Partitions ``ds`` as configured and moves the padded client arrays to the device."""
    p = cfg.partition
    seed = cfg.seed if p.seed is None else p.seed
    if p.name == "iid":
        shards = partition.iid(ds.y_train, p.num_clients, seed)
    elif p.name == "dirichlet":
        shards = partition.dirichlet(ds.y_train, p.num_clients, p.alpha, seed, p.min_size)
    else:
        shards = partition.label_subsets(ds.y_train, p.num_clients, p.labels_per_client, seed)
    cd = partition.to_padded(ds, shards, p.split_test, seed)
    n_test, x_test, y_test = cd.n_test, cd.x_test, cd.y_test
    if p.max_test_per_client:
        n_test = np.minimum(n_test, p.max_test_per_client)
        x_test = x_test[:, :p.max_test_per_client]
        y_test = y_test[:, :p.max_test_per_client]
    if (n_test == 0).any() or (cd.n == 0).any():
        raise ValueError("partition: some client has no training or no test example; "
                         "use fewer clients or a larger partition.split_test")
    hist = np.stack([np.bincount(cd.y[c, :cd.n[c]], minlength=ds.num_classes)
                     for c in range(len(cd.n))]).astype(np.float32)
    return FederatedData(
        *(jnp.asarray(a) for a in (cd.x, cd.y, cd.n, x_test, y_test, n_test)),
        label_hist=jnp.asarray(hist),
        global_dist=jnp.asarray(hist.sum(0) / hist.sum()))


def _client_optimizer(lc) -> optax.GradientTransformation:
    if lc.optimizer == "adam":
        opt = optax.adam(lc.lr)
    else:
        opt = optax.sgd(lc.lr, momentum=lc.momentum or None)
    if lc.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(lc.weight_decay), opt)
    return opt


class Simulation:
    """A configured experiment: data on the device, parts built, round compiled lazily.

    Use :func:`run` for the whole loop; this class is for callers that step
    rounds themselves (the networked server, tests, notebooks).
    """

    def __init__(self, cfg: ExperimentConfig, dataset: data_lib.Dataset | None = None,
                 mesh: "jax.sharding.Mesh | None" = None):
        self.config = cfg
        if dataset is None:
            dataset, self.data_description = load_dataset(cfg)
        else:
            self.data_description = "given dataset"
        self.dataset = dataset
        self.data = prepare_data(cfg, dataset)
        self.num_clients = cfg.partition.num_clients
        self.num_classes = dataset.num_classes

        model_params = dict(cfg.model.params)
        self.model = models.build(cfg.model.name, dataset.num_classes, **model_params)
        self.mode, self.chunk_size = engine.resolve_mode(cfg.engine.mode,
                                                         cfg.engine.chunk_size or None)
        conv = models.resolve_conv(model_params.get("conv", "auto")) \
            if cfg.model.name == "cnn" else "im2col"
        # XLA convolutions inside a rolled loop are ~10x slower on XLA:CPU.
        unroll = True if (conv == "xla" and jax.default_backend() == "cpu") else 1
        self.local_train = local.make_local_train(
            self.model.apply, _client_optimizer(cfg.local), batch_size=cfg.local.batch_size,
            max_steps=allocation_loop.max_steps(cfg.allocation, cfg.local.steps), mu=cfg.local.mu,
            unroll=unroll)
        a = cfg.aggregation
        server_opt = aggregation.server_optimizer(a.server_optimizer, a.server_lr,
                                                  a.server_momentum)
        self.aggregator = aggregation.make(a.name, server_opt, **a.params)
        C = self.num_clients
        self.availability = availability.REGISTRY[cfg.availability.name](
            num_clients=C, **cfg.availability.params)
        self.failure = availability.FAILURES[cfg.failure.name](num_clients=C,
                                                              **cfg.failure.params)
        self.selector = selection.REGISTRY[cfg.selection.name](**cfg.selection.params)
        self.num_slots = C if cfg.selection.name == "full" else cfg.selection.clients_per_round
        if mesh is None and cfg.engine.shard and jax.device_count() > 1 and self.mode != "loop":
            mesh = engine.client_mesh()
        self.mesh = mesh
        self.padded_slots = engine.pad_slots(self.num_slots, mesh)
        self.allocator = allocation_loop.make(cfg.allocation, cfg.local.steps, self.num_slots, C)
        self.evaluate = evaluation.make_evaluator(self.model.apply, dataset.num_classes,
                                                  cfg.eval.chunk)
        self.trace_count = 0  # times the round was traced (a test checks it stays 1)
        self._round_jit = None
        self._pre_jit = self._post_jit = None
        test_x, test_y = dataset.x_test, dataset.y_test
        if cfg.data.test_subset:  # a seeded random subset, whatever the order of the set
            pick = np.sort(np.random.default_rng(0).permutation(len(test_y))[:cfg.data.test_subset])
            test_x, test_y = test_x[pick], test_y[pick]
        self._test = (jnp.asarray(test_x)[None], jnp.asarray(test_y)[None],
                      jnp.asarray([len(test_y)], jnp.int32))
        self._test_eval = jax.jit(self.evaluate)

    def describe(self, max_rows: int = 10) -> str:
        """A few lines on the data, partition and parts (printed at the start of a run)."""
        cfg = self.config
        n = np.asarray(self.data.n)
        hist = np.asarray(self.data.label_hist)
        return "\n".join([
            f"data: {self.data_description}; {self.num_clients} clients "
            f"({cfg.partition.name}), {int(n.sum())} training examples, "
            f"{int(np.asarray(self.data.n_test).sum())} client test examples",
            partition.format_label_table(hist, self.dataset.class_names, max_rows),
            f"model: {cfg.model.name}; engine: {self.mode}"
            + (f" (chunk {self.chunk_size})" if self.chunk_size else "")
            + f" on {jax.device_count()} {jax.default_backend()} device(s); "
            f"selection: {cfg.selection.name} K={self.num_slots}; "
            f"availability: {cfg.availability.name}; failure: {cfg.failure.name}; "
            f"aggregation: {cfg.aggregation.name}",
        ])

    # ------------------------------------------------------------------ state

    def init(self) -> RoundState:
        """The state before round 1 (deterministic in ``config.seed``)."""
        key = jax.random.PRNGKey(self.config.seed)
        k_model, k_av, k_fail = jax.random.split(key, 3)
        params = models.init_params(self.model, k_model, self.dataset.image_shape)
        C, L = self.num_clients, self.num_classes
        return RoundState(
            params=params,
            server_state=self.aggregator.init(params),
            avail_state=self.availability.init(k_av),
            select_state=self.selector.init(self.data.label_hist),
            fail_state=self.failure.init(k_fail),
            alloc_state=self.allocator.init(),
            cum_utility=jnp.zeros(C, jnp.float32),
            participation=jnp.zeros(C, jnp.int32),
            ever_available=jnp.zeros(C, bool),
            accuracy=jnp.zeros(C, jnp.float32),
            loss=jnp.zeros(C, jnp.float32),
            class_loss=jnp.zeros(L, jnp.float32),
            round=jnp.int32(0),
            key=key)

    # ------------------------------------------------------------------ round

    def plan_round(self, state: RoundState, fd: FederatedData):
        """Availability, selection and the per-slot plan (gathered shards, steps, keys).

        Returns ``(state, plan, shards)``; ``plan`` holds ``available`` bool[C],
        ``slots`` i32[K], ``valid`` bool[K], ``steps`` i32[K], ``keys`` [K] and
        ``k_fail``. The networked server calls this, trains remotely, then
        :meth:`finish_round`.
        """
        key_r = jax.random.fold_in(state.key, state.round)
        k_av, k_sel, k_train, k_fail = jax.random.split(key_r, 4)
        avail_state, available = self.availability.step(state.avail_state, k_av)
        sel = self.selector.select(state.select_state, available, k_sel, self.num_slots)
        pad = self.padded_slots - self.num_slots
        slots = jnp.concatenate([sel.slots.astype(jnp.int32), jnp.zeros(pad, jnp.int32)])
        valid = jnp.concatenate([sel.valid, jnp.zeros(pad, bool)])
        steps = self.allocator.steps(state.alloc_state, slots, valid,
                                     jax.random.fold_in(key_r, 0xA110C))
        keys = jax.random.split(k_train, self.num_clients)[slots]
        shards = local.Shard(fd.x[slots], fd.y[slots], fd.n[slots])
        plan = dict(available=available, slots=slots, valid=valid, steps=steps, keys=keys,
                    k_fail=k_fail)
        return state._replace(avail_state=avail_state), plan, shards

    def _train(self, params, shards, plan):
        return engine.train_clients(self.local_train, params, shards, plan["steps"],
                                    plan["keys"], mode=self.mode, chunk_size=self.chunk_size,
                                    mesh=self.mesh)

    def slot_weights(self, state: RoundState, plan, loss, finite, fd: FederatedData):
        """Aggregation weight and failure of each slot, from its training loss.

        Slot-wise throughout (slot k's verdict uses slot k's loss alone), so the
        fused path can call it for one client at a time.

        Returns:
          ``(weight f32[K], failed bool[K])``: weight is the client's examples
          when its update is used (valid, finite, not failed), else 0.
        """
        valid, slots = plan["valid"], plan["slots"]
        failed, _ = self.failure.fails(state.fail_state, plan["k_fail"], slots,
                                       jnp.where(finite, loss, jnp.inf))
        failed = failed & valid & finite
        ok = valid & finite & ~failed
        return jnp.where(ok, fd.n[slots], 0).astype(jnp.float32), failed

    def finish_round(self, state: RoundState, plan, result: local.LocalResult,
                     fd: FederatedData, reported=None):
        """Failure rule and aggregation of K stacked client results, then :meth:`_close`.

        Args:
          reported: optional bool[K], False for slots whose update never
            arrived (networked mode); they count as failed.
        """
        finite = engine.finite_updates(result)
        if reported is not None:
            finite = finite | ~reported
        weights, failed = self.slot_weights(state, plan, result.loss, finite, fd)
        if reported is not None:
            failed = failed | (plan["valid"] & ~reported)
            weights = jnp.where(reported, weights, 0.0)
        params, server_state = self.aggregator.apply(
            state.server_state, state.params, result.delta, weights, result.loss0)
        stats = engine.SlotStats(result.loss, result.loss0, result.steps, finite, weights)
        return self._close(state, plan, params, server_state, stats, failed, fd)

    def _round_fused(self, state: RoundState, fd: FederatedData):
        """A chunked round that sums client terms as it trains (no K-stacked deltas)."""
        state, plan, shards = self.plan_round(state, fd)
        k = plan["slots"].shape[0]

        def weigh(i, res):
            finite = engine.finite_update(res)
            w, _ = self.slot_weights(state, plan, jnp.full(k, res.loss),
                                     jnp.full(k, finite), fd)
            return w[i]

        sum_c_delta, sum_h, stats = engine.train_and_reduce(
            self.local_train, state.params, shards, plan["steps"], plan["keys"], weigh,
            self.aggregator.client_terms, chunk_size=self.chunk_size, mesh=self.mesh)
        params, server_state = self.aggregator.finish(state.server_state, state.params,
                                                      sum_c_delta, sum_h)
        failed = plan["valid"] & stats.finite & (stats.weight == 0)
        return self._close(state, plan, params, server_state, stats, failed, fd)

    def _close(self, state: RoundState, plan, params, server_state, stats: engine.SlotStats,
               failed, fd: FederatedData):
        """Evaluation, selector and allocator updates, and the round's metrics."""
        slots, valid = plan["slots"], plan["valid"]
        ok = stats.weight > 0
        C = self.num_clients
        rnd = state.round + 1
        due = (rnd % self.config.eval.every == 0) | (state.round == 0)
        ev = jax.lax.cond(
            due, lambda: self.evaluate(params, fd.x_test, fd.y_test, fd.n_test),
            lambda: evaluation.Evaluation(state.accuracy, state.loss, state.class_loss,
                                          jnp.zeros_like(state.class_loss)))
        slot_mask = lambda m: jnp.zeros(C, bool).at[slots].max(m)
        selected, participated = slot_mask(valid), slot_mask(ok)
        available = plan["available"]
        cum_utility = state.cum_utility + jnp.where(participated, ev.accuracy, 0.0)
        participation = state.participation + participated.astype(jnp.int32)
        ever_available = state.ever_available | available
        select_state = self.selector.update(state.select_state, selection.Feedback(
            available=available, selected=selected, participated=participated,
            utility=ev.accuracy, loss=ev.loss))
        alloc_state = self.allocator.update(state.alloc_state, slots, ok, plan["steps"],
                                            ev.accuracy, ev.loss)
        selected_counts = jnp.sum(fd.label_hist * selected[:, None], axis=0)
        metrics = metrics_lib.round_metrics(
            accuracy=ev.accuracy, cum_utility=cum_utility, participation=participation,
            ever_available=ever_available, rounds=rnd,
            selected_label_counts=selected_counts, global_label_dist=fd.global_dist,
            class_loss=ev.class_loss)
        n_ok = jnp.sum(ok)
        metrics.update(
            train_loss=jnp.where(n_ok > 0, jnp.sum(jnp.where(ok, stats.loss, 0.0))
                                 / jnp.maximum(n_ok, 1), jnp.nan),
            dropped_updates=jnp.sum(valid & ~stats.finite).astype(jnp.float32),
            failed_updates=jnp.sum(failed).astype(jnp.float32),
            selected=jnp.sum(valid).astype(jnp.float32),
            available=jnp.sum(available).astype(jnp.float32),
            local_steps=jnp.sum(jnp.where(valid, stats.steps, 0)).astype(jnp.float32))
        new_state = state._replace(
            params=params, server_state=server_state, select_state=select_state,
            alloc_state=alloc_state, cum_utility=cum_utility, participation=participation,
            ever_available=ever_available, accuracy=ev.accuracy, loss=ev.loss,
            class_loss=ev.class_loss, round=rnd)
        return new_state, metrics

    def _round(self, state: RoundState, fd: FederatedData):
        self.trace_count += 1
        if self.mode == "chunked":
            return self._round_fused(state, fd)
        state, plan, shards = self.plan_round(state, fd)
        result = self._train(state.params, shards, plan)
        return self.finish_round(state, plan, result, fd)

    def step(self, state: RoundState) -> tuple[RoundState, dict[str, jax.Array]]:
        """Runs one round; compiles on the first call only."""
        if self.mode in HOST_MODES:
            if self._pre_jit is None:
                self._pre_jit = jax.jit(self.plan_round)
                self._post_jit = jax.jit(self.finish_round)
            self.trace_count = max(self.trace_count, 1)
            state, plan, shards = self._pre_jit(state, self.data)
            result, reported = self.train_on_host(state, plan, shards)
            return self._post_jit(state, plan, result, self.data, reported)
        if self._round_jit is None:
            self._round_jit = jax.jit(self._round)
        return self._round_jit(state, self.data)

    def train_on_host(self, state: RoundState, plan, shards):
        """Training outside the compiled round (loop mode; remote clients override it).

        Returns:
          ``(LocalResult with a leading K axis, reported bool[K] or None)``.
        """
        return self._train(state.params, shards, plan), None

    def test_accuracy(self, params) -> float:
        """Accuracy of ``params`` on the (possibly subset) global test set."""
        return float(self._test_eval(params, *self._test).accuracy[0])


# ------------------------------------------------------------------------- run


def append_metrics(history: dict[str, list[float]], row: dict[str, float]) -> None:
    """Appends one round's metrics, keeping every list one entry per round.

    A metric missing from a round (``test_accuracy`` is only measured on some
    rounds) is NaN there, so ``history[k][r]`` is always round r+1.
    """
    done = max((len(v) for v in history.values()), default=0)
    for k in row:
        history.setdefault(k, [float("nan")] * done)
    for k, values in history.items():
        values.append(row.get(k, float("nan")))


def run(cfg: ExperimentConfig, callbacks: Sequence[Callback] = (), *,
        dataset: data_lib.Dataset | None = None, state: RoundState | None = None,
        history: dict[str, list[float]] | None = None,
        sim: Simulation | None = None) -> History:
    """Runs ``cfg.rounds`` rounds and returns the :class:`History`.

    Args:
      cfg: the experiment config.
      callbacks: :class:`Callback` objects (tracking, progress, checkpoints).
      dataset: use this data set instead of loading ``cfg.data``.
      state: resume from this state (e.g. a checkpoint); its ``round`` says
        how many rounds are done.
      history: per-round metrics of the rounds already done (when resuming).
      sim: an already built :class:`Simulation` (skips the set-up).

    Returns:
      The run's :class:`History`.
    """
    sim = sim or Simulation(cfg, dataset)
    state = sim.init() if state is None else state
    values: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).items()}
    test_acc: dict[int, float] = {}
    start = int(state.round)
    t0 = time.perf_counter()
    try:
        for cb in callbacks:
            cb.on_start(sim)
        for r in range(start, cfg.rounds):
            t_round = time.perf_counter()
            state, m = sim.step(state)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            m["round_seconds"] = time.perf_counter() - t_round
            last = r + 1 == cfg.rounds
            ge = cfg.eval.global_every
            if last or (ge and (r + 1) % ge == 0):
                test_acc[r + 1] = sim.test_accuracy(state.params)
                m["test_accuracy"] = test_acc[r + 1]
            append_metrics(values, m)
            for cb in callbacks:
                cb.on_round(sim, r + 1, m, state)
    except BaseException as err:
        for cb in callbacks:
            cb.on_error(sim, err)
        raise
    metrics = {k: np.asarray(v, np.float64) for k, v in values.items()}
    clients = {k: np.asarray(v) for k, v in dict(
        accuracy=state.accuracy, loss=state.loss, participation=state.participation,
        cum_utility=state.cum_utility, num_examples=sim.data.n).items()}
    hist = History(metrics, state.params, clients, test_acc, state, cfg,
                   time.perf_counter() - t0)
    for cb in callbacks:
        cb.on_end(sim, hist)
    return hist


class ProgressBar(Callback):
    """A tqdm bar over rounds showing mean accuracy and the accuracy Jain index."""

    def __init__(self, disable: bool = False):
        self.disable = disable
        self.bar = None

    def on_start(self, sim: Simulation) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=sim.config.rounds, desc=sim.config.name, unit="round",
                        disable=self.disable, mininterval=0.5)

    def on_round(self, sim, round_index, metrics, state) -> None:
        if self.bar is None:
            return
        if self.bar.n == 0 and round_index > 1:   # resumed run
            self.bar.update(round_index - 1)
        self.bar.set_postfix(acc=f"{metrics['accuracy_mean']:.3f}",
                             jain=f"{metrics['accuracy_jain']:.3f}", refresh=False)
        self.bar.update(1)

    def on_end(self, sim, history) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_error(self, sim, error) -> None:
        self.on_end(sim, None)
