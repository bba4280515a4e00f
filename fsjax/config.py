"""Experiment configuration: frozen dataclasses loaded from YAML with overrides.

A config file is a YAML mapping whose sections mirror the dataclasses below;
every key has a default, so a file only says what differs. Overrides use
dotted keys and YAML values: ``("rounds=3", "selection.name=fair_select",
"selection.lam=0.7", "model.hidden=[128, 64]")``.

Pluggable parts (model, selection, availability, failure, aggregation) have a
``name`` picked from the part's ``REGISTRY``; any other key of such a section
is a parameter of that factory and is checked against its signature, so a new
strategy needs no change here.

Unknown keys, wrong types and bad values raise ``ValueError`` naming the key.

Example:
  >>> cfg = load(None, overrides=("rounds=3", "engine.mode=loop", "selection.name=fair_select",
  ...                             "selection.lam=0.7"))
  >>> cfg.rounds, cfg.engine.mode, cfg.selection.params   # with fair_select's other defaults
  (3, 'loop', {'lam': 0.7, 'mu': 1.0, 'coverage': True})
  >>> load(None, overrides=("local.lrr=0.1",))  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  ValueError: unknown config key 'local.lrr'; expected one of ['local.batch_size', 'local.clip_norm', ...]
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"        # synthetic | cifar10 (tfds, then $FSJAX_CIFAR10_ZIP) | tfds | PATH
    fallback: str = "error"          # error | synthetic: what to do when CIFAR-10 is not found
    download: str = "never"          # auto | never: let tfds download CIFAR-10 when online
    num_classes: int = 10            # synthetic only
    n_train: int = 2000              # synthetic only
    n_test: int = 500                # synthetic only
    image_shape: tuple[int, ...] = (32, 32, 3)  # synthetic only
    noise: float = 48.0              # synthetic only: pixel noise std
    seed: int = 0                    # synthetic only
    test_subset: int = 0             # global test examples used for test accuracy (0 = all)


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    name: str = "iid"                # iid | dirichlet | label_subsets | label_ring | sample
    num_clients: int = 20
    alpha: float = 0.5               # dirichlet
    min_size: int = 10               # dirichlet
    labels_per_client: int = 2       # label_subsets, label_ring
    examples_per_client: int = 50    # sample: rows each client draws with replacement (test incl.);
                                     # label_ring: rows of its labels (the CUP study: 100)
    split_test: float = 0.2          # fraction of each client's data held out as its test split
    max_test_per_client: int = 0     # cap on a client's test rows (0 = no cap)
    seed: int | None = None          # None = the experiment seed


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"                # models.REGISTRY
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LocalConfig:
    steps: int = 5                   # local steps per round (the static maximum)
    batch_size: int = 10
    optimizer: str = "sgd"           # sgd | adam
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    mu: float = 0.0                  # FedProx proximal weight (0 = off)
    clip_norm: float = 0.0           # clip each local gradient to this global norm (0 = off)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    mode: str = "auto"               # auto | vmap | chunked | loop
    chunk_size: int = 0              # clients per chunk in chunked mode (0 = default)
    shard: bool = True               # split client slots over all local devices (if > 1)


@dataclasses.dataclass(frozen=True)
class AggregationConfig:
    name: str = "fedavg"             # aggregation.REGISTRY: fedavg | fedprox | qffl | median |
                                     # trimmed_mean | krum | horvitz_thompson | afl | fedfv
    server_optimizer: str = "sgd"    # sgd | momentum | adam
    server_lr: float = 1.0
    server_momentum: float = 0.9
    norm_bound: float = 0.0          # bound updates at this x the round's median norm (0 = off)
    norm_bound_mode: str = "clip"    # clip | reject
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    name: str = "random"             # selection.REGISTRY
    clients_per_round: int = 5       # K (full participation uses K = num_clients)
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AvailabilityConfig:
    name: str = "always"             # availability.REGISTRY
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FailureConfig:
    name: str = "none"               # availability.FAILURES: none | latency_loss (fsjax's own)
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AllocationConfig:
    name: str = "none"               # none | fairsynergy | uniform | random | equalizing
    alpha: float = 0.0               # alpha-fairness of FairSynergy (0 utilitarian, 1 proportional)
    budget: float = 0.0              # total local steps per round (0 = clients_per_round * local.steps)
    min_steps: int = 1               # lower bound on a selected client's steps
    max_steps: int = 0               # upper bound (0 = 3 * local.steps); the engine's scan length
    utility: str = "accuracy"        # accuracy | loss: the learning curve that is fitted
    history: int = 8                 # rounds of each client's history used for the fit


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = 1                   # evaluate clients every N rounds (metrics repeat in between)
    global_every: int = 0            # global test accuracy every N rounds (0 = last round only)
    chunk: int = 500                 # examples per forward pass
    clients: int = 0                 # M > 0: evaluate M random clients + the selected ones per round
    full_every: int = 0              # with clients > 0: evaluate every client every N rounds (0 = never)
    client_accuracy: str = "held_out"  # held_out | labels | label_set (REFERENCE B.1 step 7)


@dataclasses.dataclass(frozen=True)
class UtilityConfig:
    """The utility increment credited to participants (REFERENCE B.1 steps 8-11)."""

    name: str = "accuracy_gain"      # accuracy_gain | accuracy_gain_since_last | loss_reduction
    surrogate: bool = False          # also report utility metrics "with surrogate"
    eta0: float = 1.0                # surrogate scale
    kappa: float = 0.1               # surrogate decay per round since the last participation


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    rounds: int = 10
    output_dir: str = "outputs"
    checkpoint_every: int = 0        # write a checkpoint every N rounds (0 = never)
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    model: ModelConfig = ModelConfig()
    local: LocalConfig = LocalConfig()
    engine: EngineConfig = EngineConfig()
    aggregation: AggregationConfig = AggregationConfig()
    selection: SelectionConfig = SelectionConfig()
    availability: AvailabilityConfig = AvailabilityConfig()
    failure: FailureConfig = FailureConfig()
    allocation: AllocationConfig = AllocationConfig()
    eval: EvalConfig = EvalConfig()
    utility: UtilityConfig = UtilityConfig()


# --------------------------------------------------------------------- loading


def load(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Loads a YAML config and applies dotted ``key=value`` overrides.

    Args:
      path: a YAML file, or None for the defaults.
      overrides: ``"a.b=value"`` strings; values are parsed as YAML.

    Returns:
      The validated, frozen :class:`ExperimentConfig`.

    Raises:
      ValueError: missing or malformed file, bad override syntax, unknown key,
        wrong type or bad value; the message names the key.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r}: not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {str(path)!r}: not valid YAML ({err})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"config file {str(path)!r}: expected a mapping at the top level")
        _resolve_trace_paths(raw, path.parent)
    for item in overrides:
        key, value = parse_override(item)
        if key in _TRACE_PATH_KEYS:   # a --set path is relative to where it was typed
            value = _absolute_trace_path(value, Path.cwd())
        _set_dotted(raw, key, value)
    return from_dict(raw)


_TRACE_PATH_KEYS = ("availability.path", "availability.base_params.path")


def _absolute_trace_path(value: Any, base: Path) -> Any:
    """A relative trace path made absolute against ``base`` (``auto`` and non-strings kept)."""
    if isinstance(value, str) and value != "auto" and not Path(value).is_absolute():
        return str((base / value).resolve())
    return value


def _resolve_trace_paths(raw: dict, base: Path) -> None:
    """Makes a relative trace ``path`` in a config file relative to that file's folder."""
    section = raw.get("availability")
    for node in (section, (section or {}).get("base_params") if isinstance(section, dict) else None):
        if isinstance(node, dict) and "path" in node:
            node["path"] = _absolute_trace_path(node["path"], base)


def parse_override(item: str) -> tuple[str, Any]:
    """Splits ``"a.b=value"`` into the key and the YAML-parsed value."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ValueError(f"override {item!r}: expected key=value with a dotted key, "
                         "e.g. rounds=3 or selection.name=fair_select")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {key}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Builds and validates a config from a nested mapping."""
    cfg = _with_factory_defaults(_build(ExperimentConfig, raw, ""))
    validate(cfg)
    return cfg


def _with_factory_defaults(cfg: ExperimentConfig) -> ExperimentConfig:
    """Fills each pluggable section's ``params`` with its factory's defaults.

    So ``config.yaml`` and the MLflow params name every value a run used
    (``fair_select``'s ``lam``, ``mu``, ``coverage``; ``markov``'s
    ``p_return``). Only plain YAML values are filled, tuples as lists (they
    load back equal); an unknown ``name`` is left to :func:`validate`.
    """
    from fsjax import aggregation, availability, models, selection

    parts = {"model": (models.REGISTRY, ("parent", "name", "num_classes")),
             "aggregation": (aggregation.REGISTRY, ("opt", "num_clients")),
             "selection": (selection.REGISTRY, ()),
             "availability": (availability.REGISTRY, ("num_clients", "label_hist", "rounds")),
             "failure": (availability.FAILURES, ("num_clients",))}
    plain = (type(None), bool, int, float, str)
    changes = {}
    for section, (registry, skip) in parts.items():
        part = getattr(cfg, section)
        if part.name not in registry:
            continue
        params = {}
        for p in inspect.signature(registry[part.name]).parameters.values():
            value = part.params.get(p.name, _plain(p.default))
            if p.name in part.params or (
                    p.name not in skip and p.default is not p.empty
                    and (isinstance(value, plain) or isinstance(value, list)
                         and all(isinstance(v, plain) for v in value))):
                params[p.name] = value
        params.update(part.params)   # **kwargs factories keep every given key
        if params != dict(part.params):
            changes[section] = dataclasses.replace(part, params=params)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _build(cls, raw: Any, prefix: str):
    where = prefix.rstrip(".") or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    has_params = "params" in fields
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key in fields and key != "params":
            kwargs[key] = _coerce(hints[key], value, name)
        elif has_params and key == "params":
            if not isinstance(value, Mapping):
                raise ValueError(f"config key {name!r}: expected a mapping, got {value!r}")
            extra.update(value)
        elif has_params:  # a parameter of the section's factory, checked in validate()
            extra[key] = value
        else:
            raise ValueError(f"unknown config key {name!r}; expected one of "
                             f"{sorted(prefix + f for f in fields)}")
    if has_params:
        kwargs["params"] = dict(extra)
    return cls(**kwargs)


def _coerce(tp, value, name):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner, _) = typing.get_args(tp)
        return tuple(_coerce(inner, v, name) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ValueError(f"config key {name!r}: expected {getattr(tp, '__name__', tp)}, "
                     f"got {value!r}")


# ------------------------------------------------------------------ validation


def _check(cond: bool, key: str, value: Any, expected: str) -> None:
    if not cond:
        raise ValueError(f"config key {key!r} = {value!r}: expected {expected}")


def _check_factory_params(section: str, registry: Mapping, name: str, params: Mapping,
                          skip: tuple[str, ...] = ()) -> None:
    _check(name in registry, f"{section}.name", name, f"one of {sorted(registry)}")
    sig = inspect.signature(registry[name])
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [p for p in sig.parameters if p not in skip]
    for key in params:
        if key not in allowed:
            raise ValueError(f"unknown config key '{section}.{key}' for {section}.name={name!r}; "
                             f"expected one of {sorted(allowed)}")


def _check_factory_values(section: str, factory, params: Mapping, **fixed) -> None:
    """Builds a part once so that its own ``ValueError`` names the config key."""
    try:
        factory(**fixed, **params)
    except ValueError as err:
        arg = re.match(r"(\w+)[= ]", str(err))
        key = f"{section}.{arg.group(1)}" if arg and arg.group(1) in params else section
        raise ValueError(f"config key {key!r}: {err}") from None


def validate(cfg: ExperimentConfig) -> None:
    """Checks values and cross-field rules; raises ValueError naming the key."""
    from fsjax import aggregation, availability, models, partition, participation, selection

    _check(cfg.rounds >= 1, "rounds", cfg.rounds, "an integer >= 1")
    _check(cfg.checkpoint_every >= 0, "checkpoint_every", cfg.checkpoint_every, ">= 0")
    d = cfg.data
    _check(d.download in ("auto", "never"), "data.download", d.download, "'auto' or 'never'")
    _check(d.fallback in ("error", "synthetic"), "data.fallback", d.fallback,
           "'error' or 'synthetic'")
    _check(d.num_classes >= 2, "data.num_classes", d.num_classes, ">= 2")
    _check(d.n_train >= 1 and d.n_test >= 1, "data.n_train", d.n_train, "positive sizes")
    _check(len(d.image_shape) == 3 and all(s >= 1 for s in d.image_shape),
           "data.image_shape", d.image_shape, "three positive sizes (H, W, C)")
    _check(d.test_subset >= 0, "data.test_subset", d.test_subset, ">= 0")
    p = cfg.partition
    _check(p.name in partition.REGISTRY, "partition.name", p.name,
           f"one of {sorted(partition.REGISTRY)}")
    _check(p.num_clients >= 1, "partition.num_clients", p.num_clients, ">= 1")
    _check(p.alpha > 0, "partition.alpha", p.alpha, "> 0")
    _check(p.labels_per_client >= 1, "partition.labels_per_client", p.labels_per_client, ">= 1")
    _check(p.examples_per_client >= 2, "partition.examples_per_client", p.examples_per_client,
           ">= 2")
    _check(0 <= p.split_test < 1, "partition.split_test", p.split_test, "a fraction in [0, 1)")
    _check(p.split_test > 0 or cfg.eval.client_accuracy != "held_out", "partition.split_test",
           p.split_test, "> 0 with eval.client_accuracy held_out (clients need held-out rows;"
           " eval.client_accuracy labels or label_set evaluate on the global test set)")
    _check(p.max_test_per_client >= 0, "partition.max_test_per_client",
           p.max_test_per_client, ">= 0")
    _check_factory_params("model", models.REGISTRY, cfg.model.name, cfg.model.params,
                          skip=("parent", "name", "num_classes"))
    models.build(cfg.model.name, d.num_classes, **cfg.model.params)   # names a bad model.<key>
    lc = cfg.local
    _check(lc.steps >= 1, "local.steps", lc.steps, ">= 1")
    _check(lc.batch_size >= 1, "local.batch_size", lc.batch_size, ">= 1")
    _check(lc.optimizer in ("sgd", "adam"), "local.optimizer", lc.optimizer, "'sgd' or 'adam'")
    _check(lc.lr > 0, "local.lr", lc.lr, "> 0")
    _check(0 <= lc.momentum < 1, "local.momentum", lc.momentum, "in [0, 1)")
    _check(lc.weight_decay >= 0, "local.weight_decay", lc.weight_decay, ">= 0")
    _check(lc.mu >= 0, "local.mu", lc.mu, ">= 0")
    _check(lc.clip_norm >= 0, "local.clip_norm", lc.clip_norm, ">= 0 (0 = off)")
    e = cfg.engine
    _check(e.mode in ("auto", "vmap", "chunked", "loop"), "engine.mode", e.mode,
           "one of auto, vmap, chunked, loop")
    _check(e.chunk_size >= 0, "engine.chunk_size", e.chunk_size, ">= 0")
    a = cfg.aggregation
    _check_factory_params("aggregation", aggregation.REGISTRY, a.name, a.params,
                          skip=("opt", "num_clients"))
    _check(a.name != "horvitz_thompson" or cfg.selection.name == "cup", "aggregation.name",
           a.name, "a selector that reports inclusion probabilities with horvitz_thompson "
           "(selection.name cup)")
    _check(a.server_optimizer in ("sgd", "momentum", "adam"), "aggregation.server_optimizer",
           a.server_optimizer, "'sgd', 'momentum' or 'adam'")
    _check(a.server_lr > 0, "aggregation.server_lr", a.server_lr, "> 0")
    _check(a.norm_bound >= 0, "aggregation.norm_bound", a.norm_bound,
           "a multiple of the median update norm > 0, or 0 (off)")
    _check(a.norm_bound_mode in ("clip", "reject"), "aggregation.norm_bound_mode",
           a.norm_bound_mode, "'clip' or 'reject'")
    s = cfg.selection
    _check_factory_params("selection", selection.REGISTRY, s.name, s.params)
    _check(1 <= s.clients_per_round <= p.num_clients, "selection.clients_per_round",
           s.clients_per_round, f"an integer in [1, partition.num_clients={p.num_clients}]")
    _check_factory_params("availability", availability.REGISTRY, cfg.availability.name,
                          cfg.availability.params, skip=("num_clients", "label_hist", "rounds"))
    _check_factory_params("failure", availability.FAILURES, cfg.failure.name,
                          cfg.failure.params, skip=("num_clients",))
    # The parts' own range checks, at load time and naming the key (availability.p_drop).
    # traces/correlated read trace files; minority_dropout needs the partition's labels.
    if cfg.availability.name not in ("traces", "correlated", "minority_dropout"):
        _check_factory_values("availability", availability.REGISTRY[cfg.availability.name],
                              cfg.availability.params, num_clients=p.num_clients)
    _check_factory_values("failure", availability.FAILURES[cfg.failure.name],
                          cfg.failure.params, num_clients=p.num_clients)
    _check_factory_values("selection", selection.REGISTRY[s.name], s.params)
    al = cfg.allocation
    _check(al.name in ("none", "fairsynergy", "uniform", "random", "equalizing"),
           "allocation.name", al.name, "none, fairsynergy, uniform, random or equalizing")
    _check(al.alpha >= 0, "allocation.alpha", al.alpha, ">= 0")
    _check(al.budget >= 0, "allocation.budget", al.budget, ">= 0")
    _check(al.min_steps >= 0, "allocation.min_steps", al.min_steps, ">= 0")
    _check(al.max_steps >= 0, "allocation.max_steps", al.max_steps, ">= 0")
    if al.name != "none":
        budget = al.budget or s.clients_per_round * lc.steps
        _check(al.min_steps * s.clients_per_round <= budget, "allocation.min_steps",
               al.min_steps, f"min_steps * clients_per_round <= the budget ({budget:g} steps)")
        top = al.max_steps or 3 * lc.steps
        _check(top * s.clients_per_round >= budget, "allocation.max_steps", al.max_steps,
               f"max_steps * clients_per_round >= the budget ({budget:g} steps)")
    _check(al.utility in ("accuracy", "loss"), "allocation.utility", al.utility,
           "'accuracy' or 'loss'")
    _check(al.history >= 3, "allocation.history", al.history, ">= 3 (three curve parameters)")
    ev = cfg.eval
    _check(ev.every >= 1, "eval.every", ev.every, ">= 1")
    _check(ev.global_every >= 0, "eval.global_every", ev.global_every, ">= 0")
    _check(ev.chunk >= 1, "eval.chunk", ev.chunk, ">= 1")
    _check(ev.clients >= 0, "eval.clients", ev.clients, ">= 0 (0 = every client)")
    _check(ev.full_every >= 0, "eval.full_every", ev.full_every, ">= 0")
    _check(ev.client_accuracy in ("held_out", "labels", "label_set"), "eval.client_accuracy",
           ev.client_accuracy, "'held_out', 'labels' or 'label_set'")
    _check(ev.client_accuracy == "held_out" or not ev.clients, "eval.clients", ev.clients,
           "0 with eval.client_accuracy labels/label_set (one pass over the test set "
           "evaluates every client)")
    u = cfg.utility
    _check(u.name in participation.UTILITIES, "utility.name", u.name,
           f"one of {', '.join(participation.UTILITIES)}")
    _check(u.eta0 >= 0, "utility.eta0", u.eta0, ">= 0")
    _check(u.kappa >= 0, "utility.kappa", u.kappa, ">= 0")


# ------------------------------------------------------------------ utilities


def to_dict(cfg) -> dict[str, Any]:
    """The config as plain nested dicts/lists (YAML-able); params flattened into sections."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif f.name == "params":
            out.update({k: _plain(v) for k, v in value.items()})
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def flatten(cfg) -> dict[str, Any]:
    """``{"selection.name": "random", "local.lr": 0.1, ...}`` for run parameters."""
    flat: dict[str, Any] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(to_dict(cfg), "")
    return flat


def dump(cfg) -> str:
    """The resolved config as YAML text (loads back to an equal config)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
