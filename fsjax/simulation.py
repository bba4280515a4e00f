"""The round loop: wires availability, selection, local training, aggregation,
evaluation and metrics into one compiled round.

One round, as data (DESIGN.md section 2)::

    RoundState -> availability.step -> selection.select -> RoundPlan (K slots)
      -> backend.train (gathered shards) -> failure rule / NaN check
      -> aggregation.apply -> evaluation (all clients, or eval.clients of them)
      -> selection.update
      -> metrics.round_metrics

This is the only round in fsjax: benchmarks time it and the networked server
drives it. How the K slots are trained is the :class:`~fsjax.backends.Backend`
the simulation is given (vmap, chunked, loop, or remote clients); shapes never
change between rounds, so the round compiles once. An in-jit backend makes
the whole round one jitted function; a host backend (loop, remote) runs
between the jitted :meth:`Simulation.plan_round` and
:meth:`Simulation.finish_round`.

Example:
  >>> from fsjax import config, simulation
  >>> cfg = config.load("experiments/quick.yaml", overrides=("rounds=2",))
  >>> hist = simulation.run(cfg)
  >>> hist.metrics["accuracy_mean"].shape
  (2,)
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsjax import (aggregation, allocation_loop, availability, backends as backends_lib,
                   clients, data as data_lib, engine, evaluation, fair_aggregation, local,
                   metrics as metrics_lib, models, partition, participation, robust, selection)
from fsjax import outputs
from fsjax.callbacks import Callback, ProgressBar, append_metrics  # noqa: F401 (re-exported)
from fsjax.clients import FederatedData, load_dataset  # noqa: F401 (re-exported)
from fsjax.config import ExperimentConfig


class RoundState(NamedTuple):
    """Everything that changes from round to round (a pytree; checkpointed as is)."""

    params: Any               # global model params
    server_state: Any         # server optimizer state
    avail_state: Any          # availability model state
    select_state: Any         # selector state
    fail_state: Any           # failure rule state
    alloc_state: Any          # in-loop allocation state (learning-curve history)
    ledger: participation.Ledger  # per-client A, S, P counts and utility (REFERENCE B.1)
    accuracy: jax.Array       # f32[C] last evaluated per-client accuracy
    loss: jax.Array           # f32[C] last evaluated per-client loss
    class_loss: jax.Array     # f32[L] last evaluated per-class loss
    round: jax.Array          # i32[]  rounds completed
    key: jax.Array            # u32[2] base PRNG key (raw, so it serialises)


class RoundPlan(NamedTuple):
    """What the first half of a round decides for the K client slots."""

    available: jax.Array  # bool[C] clients available this round
    slots: jax.Array      # i32[K]  selected client of each slot (0 in unused slots)
    valid: jax.Array      # bool[K] slot holds a selected, available client (it trains)
    intent: jax.Array     # bool[K] slot holds a selected client, available or not (S)
    probs: jax.Array      # f32[K]  inclusion probability q of the slot's client (cup; else 0)
    steps: jax.Array      # i32[K]  local steps of each slot
    keys: jax.Array       # [K]     PRNG key of each slot's local training
    k_fail: jax.Array     # PRNG key of the round's failure draws
    fail_draw: jax.Array  # f32[K]  the failure rule's per-slot draw (e.g. latency)


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


def prepare_data(cfg: ExperimentConfig, ds: data_lib.Dataset) -> FederatedData:
    """Partitions ``ds`` as ``cfg.partition`` says (:func:`fsjax.clients.prepare`)."""
    p = cfg.partition
    return clients.prepare(ds, p, cfg.seed if p.seed is None else p.seed)


def client_optimizer(lc) -> optax.GradientTransformation:
    """The clients' optax optimizer from the ``local`` config section."""
    if lc.optimizer == "adam":
        opt = optax.adam(lc.lr)
    else:
        opt = optax.sgd(lc.lr, momentum=lc.momentum or None)
    if lc.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(lc.weight_decay), opt)
    if lc.clip_norm:   # the CUP study clips each local gradient at norm 5
        opt = optax.chain(optax.clip_by_global_norm(lc.clip_norm), opt)
    return opt


def _needs_client_loss(cfg: ExperimentConfig) -> bool:
    """Whether a part reads F_k(w_t), the global model's loss on a client's whole
    shard before training (one extra forward pass per client): q-FFL, AFL,
    FairFedCS and the loss_reduction utility. Others get the first batch's loss."""
    return (cfg.aggregation.name in ("qffl", "afl") or cfg.selection.name == "fairfedcs"
            or cfg.utility.name == "loss_reduction")


def _with_population(factory, params, **given):
    """``factory(**params)`` plus those of ``given`` (num_clients, label_hist) it takes."""
    names = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in given.items() if k in names}, **params)


class Simulation:
    """A configured experiment: data on the device, parts built, round compiled lazily.

    Use :func:`run` for the whole loop; this class is for callers that step
    rounds themselves (the networked server, benchmarks, tests, notebooks).

    Args:
      cfg: the experiment config.
      dataset: use this data set instead of loading ``cfg.data``.
      mesh: a ``"clients"`` device mesh (default: all local devices when
        ``engine.shard`` and there are several).
      backend: how the K slots are trained (default:
        ``backends.local(cfg.engine.mode, ...)``); the networked server passes
        a host backend that trains on remote clients.
    """

    def __init__(self, cfg: ExperimentConfig, dataset: data_lib.Dataset | None = None,
                 mesh: "jax.sharding.Mesh | None" = None,
                 backend: backends_lib.Backend | None = None):
        self.config = cfg
        if dataset is None:
            dataset, self.data_description = load_dataset(cfg.data)
        else:
            self.data_description = "given dataset"
        self.dataset = dataset
        self.data = prepare_data(cfg, dataset)
        self.num_clients = C = cfg.partition.num_clients
        self.num_classes = dataset.num_classes

        model_params = dict(cfg.model.params)
        self.model = models.build(cfg.model.name, dataset.num_classes, **model_params)
        conv = models.resolve_conv(model_params.get("conv", "auto")) \
            if cfg.model.name == "cnn" else "im2col"
        # XLA convolutions inside a rolled loop are ~10x slower on XLA:CPU.
        unroll = True if (conv == "xla" and jax.default_backend() == "cpu") else 1
        self.local_train = local.make_local_train(
            self.model.apply, client_optimizer(cfg.local), batch_size=cfg.local.batch_size,
            max_steps=allocation_loop.max_steps(cfg.allocation, cfg.local.steps), mu=cfg.local.mu,
            unroll=unroll, loss0="shard" if _needs_client_loss(cfg) else "first_batch")
        a = cfg.aggregation
        server_opt = aggregation.server_optimizer(a.server_optimizer, a.server_lr,
                                                  a.server_momentum)
        self.aggregator = _with_population(aggregation.REGISTRY[a.name], a.params,
                                           opt=server_opt, num_clients=C)
        # The CUP study's aggregators (fsjax.fair_aggregation) read the round's SlotContext.
        self._agg_context = "context" in inspect.signature(self.aggregator.apply).parameters
        self.availability = _with_population(
            availability.REGISTRY[cfg.availability.name], cfg.availability.params,
            num_clients=C, label_hist=np.asarray(self.data.label_hist), rounds=cfg.rounds)
        self.failure = availability.FAILURES[cfg.failure.name](num_clients=C,
                                                              **cfg.failure.params)
        self.selector = selection.REGISTRY[cfg.selection.name](**cfg.selection.params)
        self.num_slots = selection.round_slots(self.selector, C, cfg.selection.clients_per_round)
        if backend is None:
            mode, _ = engine.resolve_mode(cfg.engine.mode, cfg.engine.chunk_size or None)
            if mesh is None and cfg.engine.shard and jax.device_count() > 1 and mode != "loop":
                mesh = engine.client_mesh()
            backend = backends_lib.local(mode, self.local_train,
                                         chunk_size=cfg.engine.chunk_size or None, mesh=mesh)
        self.backend = backend
        self.mode, self.chunk_size = backend.name, backend.chunk_size
        self.mesh = mesh
        self.padded_slots = engine.pad_slots(self.num_slots, mesh)
        self.allocator = allocation_loop.make(cfg.allocation, cfg.local.steps, self.num_slots, C)
        self.evaluate = evaluation.make_evaluator(self.model.apply, dataset.num_classes,
                                                  cfg.eval.chunk)
        self._round_jit = self._plan_jit = self._finish_jit = None
        self._test = clients.global_test_set(dataset, cfg.data.test_subset)
        if cfg.eval.client_accuracy != "held_out":   # the round reads it: an argument
            self.data = dataclasses.replace(self.data, eval_set=self._test)
        # eval.client_accuracy labels / label_set: one pass over the test set per round.
        self._count_classes = evaluation.make_class_counter(
            self.model.apply, dataset.num_classes, cfg.eval.chunk)
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
            ledger=participation.init(C),
            accuracy=jnp.zeros(C, jnp.float32),
            loss=jnp.zeros(C, jnp.float32),
            class_loss=jnp.zeros(L, jnp.float32),
            round=jnp.int32(0),
            key=key)

    # ------------------------------------------------------------------ round

    def plan_round(self, state: RoundState, fd: FederatedData
                   ) -> tuple[RoundState, RoundPlan, local.Shard]:
        """The first half of a round: availability, selection and the per-slot plan.

        Returns:
          ``(state, plan, shards)``: the state with the availability model
          advanced, the :class:`RoundPlan`, and the K selected clients' data.
        """
        key_r = jax.random.fold_in(state.key, state.round)
        k_av, k_sel, k_train, k_fail = jax.random.split(key_r, 4)
        avail_state, available = self.availability.step(state.avail_state, k_av)
        sel = self.selector.select(state.select_state, available, k_sel, self.num_slots)
        pad = self.padded_slots - self.num_slots
        slots = jnp.concatenate([sel.slots.astype(jnp.int32), jnp.zeros(pad, jnp.int32)])
        valid = jnp.concatenate([sel.valid, jnp.zeros(pad, bool)])
        intent = valid if sel.intent is None else jnp.concatenate([sel.intent, jnp.zeros(pad, bool)])
        probs = (jnp.zeros(self.padded_slots, jnp.float32) if sel.probs is None else
                 jnp.concatenate([sel.probs.astype(jnp.float32), jnp.zeros(pad, jnp.float32)]))
        steps = self.allocator.steps(state.alloc_state, slots, valid,
                                     jax.random.fold_in(key_r, 0xA110C))
        # Client c trains with fold_in(k_train, c): O(K), whatever the population.
        keys = jax.vmap(lambda c: jax.random.fold_in(k_train, c))(slots)
        plan = RoundPlan(available, slots, valid, intent, probs, steps, keys, k_fail,
                         self.failure.draw(state.fail_state, k_fail, slots))
        shards = local.Shard(*fd.gather(slots))   # only the K selected clients' rows
        return state._replace(avail_state=avail_state), plan, shards

    def _verdict(self, valid, num_examples, fail_draw, loss, finite):
        """Aggregation weight and failure of slots, elementwise (one slot or all K).

        A slot's weight is its client's examples when its update is used
        (valid, finite, not failed by the failure rule), else 0.
        """
        failed = self.failure.judge(fail_draw, jnp.where(finite, loss, jnp.inf))
        failed = failed & valid & finite
        ok = valid & finite & ~failed
        return jnp.where(ok, num_examples, 0).astype(jnp.float32), failed

    def finish_round(self, state: RoundState, plan: RoundPlan, result: local.LocalResult,
                     fd: FederatedData, reported=None):
        """The second half: failure rule, aggregation of K stacked results, evaluation.

        Args:
          reported: optional bool[K], False for slots whose update never
            arrived (networked mode); they count as failed.

        Returns:
          ``(new RoundState, metrics dict of scalars)``.
        """
        finite = engine.finite_updates(result)
        if reported is not None:
            finite = finite | ~reported
        weights, failed = self._verdict(plan.valid, fd.n[plan.slots], plan.fail_draw,
                                        result.loss, finite)
        if reported is not None:
            failed = failed | (plan.valid & ~reported)
            weights = jnp.where(reported, weights, 0.0)
        delta, a = result.delta, self.config.aggregation
        if a.norm_bound:   # off: nothing changes, not even the metrics' columns
            delta, weights, bounded = robust.bound_updates(delta, weights, a.norm_bound,
                                                           a.norm_bound_mode)
        context = {}
        if self._agg_context:
            pi = participation.availability_estimate(state.ledger, plan.available, state.round)
            context["context"] = fair_aggregation.SlotContext(plan.slots, plan.probs,
                                                              pi[plan.slots])
        params, server_state = self.aggregator.apply(
            state.server_state, state.params, delta, weights, result.loss0, **context)
        stats = engine.SlotStats(result.loss, result.loss0, result.steps, finite, weights)
        new_state, metrics = self._close(state, plan, params, server_state, stats, failed, fd)
        if a.norm_bound:
            metrics["norm_bounded_updates"] = bounded
        return new_state, metrics

    def _round_fused(self, state: RoundState, plan: RoundPlan, shards, fd: FederatedData):
        """Trains and sums client terms in one pass (no K-stacked deltas)."""
        def weigh(i, res):
            w, _ = self._verdict(plan.valid[i], fd.n[plan.slots[i]], plan.fail_draw[i],
                                 res.loss, engine.finite_update(res))
            return w

        sum_c_delta, sum_h, stats = self.backend.reduce(
            state.params, plan, shards, weigh, self.aggregator.client_terms)
        params, server_state = self.aggregator.finish(state.server_state, state.params,
                                                      sum_c_delta, sum_h)
        failed = plan.valid & stats.finite & (stats.weight == 0)
        return self._close(state, plan, params, server_state, stats, failed, fd)

    def _close(self, state: RoundState, plan: RoundPlan, params, server_state,
               stats: engine.SlotStats, failed, fd: FederatedData):
        """Evaluation, selector and allocator updates, and the round's metrics."""
        slots, valid, available = plan.slots, plan.valid, plan.available
        ok = stats.weight > 0
        C = self.num_clients
        rnd = state.round + 1
        due = (rnd % self.config.eval.every == 0) | (state.round == 0)
        ev, acc_global = jax.lax.cond(
            due, lambda: self._evaluate_clients(state, plan, params, fd),
            lambda: (evaluation.Evaluation(state.accuracy, state.loss, state.class_loss,
                                           jnp.zeros_like(state.class_loss)),
                     jnp.float32(jnp.nan)))
        selected = selection.slot_mask(slots, plan.intent, C)   # S (available or not)
        participated = selection.slot_mask(slots, ok, C)        # P = A S, update used
        to_clients = lambda x: jnp.zeros(C, jnp.float32).at[jnp.where(ok, slots, C)].set(
            jnp.asarray(x, jnp.float32), mode="drop")
        loss_before, local_loss = to_clients(stats.loss0), to_clients(stats.loss)
        u = self.config.utility
        gain = participation.gain(u.name, first_round=state.round == 0, accuracy=ev.accuracy,
                                  prev_accuracy=state.accuracy, ledger=state.ledger,
                                  loss_before=loss_before, local_loss=local_loss)
        ledger = participation.record(
            state.ledger, t=state.round, available=available, selected=selected,
            participated=participated, gain=gain, accuracy=ev.accuracy,
            surrogate=(u.eta0, u.kappa) if u.surrogate else None)
        select_state = self.selector.update(state.select_state, selection.Feedback(
            available=available, selected=selected, participated=participated,
            utility=ev.accuracy, loss=ev.loss, gain=gain, loss_before=loss_before,
            local_loss=local_loss, budget=jnp.int32(self.num_slots)))
        alloc_state = self.allocator.update(state.alloc_state, slots, ok, plan.steps,
                                            ev.accuracy, ev.loss)
        # Valid slots name distinct clients: O(K L), not O(C L).
        selected_counts = jnp.sum(fd.label_hist[slots] * valid[:, None], axis=0)
        metrics = metrics_lib.round_metrics(
            accuracy=ev.accuracy, cum_accuracy=ledger.cum_accuracy,
            participation=ledger.participated, ever_available=ledger.available > 0, rounds=rnd,
            selected_label_counts=selected_counts, global_label_dist=fd.global_dist,
            class_loss=ev.class_loss)
        counts = (ledger.selected, ledger.available, ledger.participated)
        metrics.update(metrics_lib.cup_metrics(*counts, ledger.utility, self.num_slots, rnd))
        if u.surrogate:
            with_s = metrics_lib.cup_metrics(*counts, ledger.utility + ledger.surrogate,
                                             self.num_slots, rnd)
            metrics.update({f"{k}_surrogate": with_s[k] for k in metrics_lib.UTILITY_METRICS})
        n_ok = jnp.sum(ok)
        metrics.update(
            train_loss=jnp.where(n_ok > 0, jnp.sum(jnp.where(ok, stats.loss, 0.0))
                                 / jnp.maximum(n_ok, 1), jnp.nan),
            dropped_updates=jnp.sum(valid & ~stats.finite).astype(jnp.float32),
            failed_updates=jnp.sum(failed).astype(jnp.float32),
            selected=jnp.sum(plan.intent).astype(jnp.float32),
            participants=n_ok.astype(jnp.float32),
            available=jnp.sum(available).astype(jnp.float32),
            local_steps=jnp.sum(jnp.where(valid, stats.steps, 0)).astype(jnp.float32))
        if self.config.eval.client_accuracy != "held_out":
            metrics["accuracy_global"] = acc_global
        new_state = state._replace(
            params=params, server_state=server_state, select_state=select_state,
            alloc_state=alloc_state, ledger=ledger, accuracy=ev.accuracy, loss=ev.loss,
            class_loss=ev.class_loss, round=rnd)
        return new_state, metrics

    def _evaluate_clients(self, state: RoundState, plan: RoundPlan, params,
                          fd: FederatedData) -> tuple[evaluation.Evaluation, jax.Array]:
        """``(Evaluation, test accuracy or NaN)`` of every client (default), or ``eval.clients`` random ones plus the selected
        ones, with every client at ``eval.full_every`` (an estimate in between);
        with ``eval.client_accuracy`` labels/label_set, every client from one
        pass over the test set (:func:`fsjax.evaluation.from_class_counts`)."""
        C, e = self.num_clients, self.config.eval
        if e.client_accuracy != "held_out":   # REFERENCE B.1 step 7: per-class counts
            counts = self._count_classes(params, *fd.eval_set)
            return evaluation.from_class_counts(counts, fd.label_hist, e.client_accuracy)
        nan = jnp.float32(jnp.nan)
        full = lambda: (self.evaluate(params, *fd.gather(jnp.arange(C), test=True)), nan)
        if not e.clients or e.clients >= C:
            return full()
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.round), 0xE7A1)
        ids = evaluation.sample_clients(key, C, e.clients, plan.slots)
        sampled = lambda: (evaluation.merge(
            state.accuracy, state.loss, ids,
            self.evaluate(params, *fd.gather(ids, test=True))), nan)
        if not e.full_every:
            return sampled()
        return jax.lax.cond((state.round + 1) % e.full_every == 0, full, sampled)

    def _round(self, state: RoundState, fd: FederatedData):
        """One whole round for an in-jit backend (traced once, inside ``jax.jit``)."""
        state, plan, shards = self.plan_round(state, fd)
        # The norm bound needs the round's median norm before summing, and robust
        # aggregators (client_terms None) are not sums: both take the stacked path.
        if (self.backend.reduce is not None and self.aggregator.client_terms is not None
                and not self.config.aggregation.norm_bound):
            return self._round_fused(state, plan, shards, fd)
        result, reported = self.backend.train(state, plan, shards)
        return self.finish_round(state, plan, result, fd, reported)

    def step(self, state: RoundState) -> tuple[RoundState, dict[str, jax.Array]]:
        """Runs one round; compiles on the first call only."""
        if self.backend.on_host:
            if self._plan_jit is None:
                self._plan_jit = jax.jit(self.plan_round)
                self._finish_jit = jax.jit(self.finish_round)
            state, plan, shards = self._plan_jit(state, self.data)
            result, reported = self.backend.train(state, plan, shards)
            return self._finish_jit(state, plan, result, self.data, reported)
        if self._round_jit is None:
            self._round_jit = jax.jit(self._round)
        return self._round_jit(state, self.data)

    def test_accuracy(self, params) -> float:
        """Accuracy of ``params`` on the (possibly subset) global test set."""
        return float(self._test_eval(params, *self._test).accuracy[0])


# ------------------------------------------------------------------------- run


def run(cfg: ExperimentConfig, callbacks: Sequence[Callback] = (), *,
        dataset: data_lib.Dataset | None = None, state: RoundState | None = None,
        history: dict[str, list[float]] | None = None,
        sim: Simulation | None = None) -> History:
    """Runs ``cfg.rounds`` rounds and returns the :class:`History`.

    Args:
      cfg: the experiment config.
      callbacks: :class:`~fsjax.callbacks.Callback` objects (tracking,
        progress, checkpoints).
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
    client_arrays = outputs.client_arrays(sim, state)
    hist = History(metrics, state.params, client_arrays, test_acc, state, cfg,
                   time.perf_counter() - t0)
    for cb in callbacks:
        cb.on_end(sim, hist)
    return hist
