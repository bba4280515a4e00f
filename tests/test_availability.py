"""Tests for fsjax.availability: trace parsing, availability models, failure rules.

One file for the package (models, device_traces, correlation, failures): each
test goes through the public names ``fsjax.availability.X``, as callers do.
"""

import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import availability as av

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny_traces.json"


def shipped_traces_path():
    """$FSJAX_SHARED (the shared dir or its data dir) if set, else ../shared/data."""
    env = os.environ.get("FSJAX_SHARED")
    candidates = ([pathlib.Path(env) / "device-traces.json", pathlib.Path(env) / "data" / "device-traces.json"]
                  if env else [ROOT.parent / "shared" / "data" / "device-traces.json"])
    return next((p for p in candidates if p.is_file()), None)


# ---------------------------------------------------------------------------
# Trace parsing.

# Hand-computed from tests/data/tiny_traces.json (60-minute slots from
# 2020-03-01 00:00, T = ceil(5.5 h) = 6; columns are devices "0", "1", "2").
# Device 0: charging 00:20-02:20 and 03:00-04:10, wifi except 01:40-02:00,
#   trace 00:10-05:00 (so slot 5 wraps to 00:10-01:10: 50 min available).
# Device 1: charging+wifi 00:00-02:30 and 03:40-05:30, locked 00:00-00:45 and
#   from 04:00, trace 00:00-05:30 (slot 5's last half wraps to 00:00-00:30).
# Device 2: never on wifi; charging 01:00-03:00, trace 01:00-04:00.
HAND = {
    "default": (dict(), [[1, 1, 0, 1, 0, 1], [1, 1, 1, 0, 1, 1], [0, 0, 0, 0, 0, 0]]),
    "locked": (dict(rule="charging_wifi_locked"),
               [[0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]),
    "charging": (dict(rule="charging"), [[1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 1]]),
    "charging_nowrap": (dict(rule="charging", wrap=False),
                        [[1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]),
    "any_time": (dict(min_coverage=0.0), [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]),
    "whole_slot": (dict(min_coverage=1.0), [[0, 0, 0, 1, 0, 0], [1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]),
}


@pytest.mark.parametrize("case", sorted(HAND))
def test_tiny_trace_gives_hand_computed_slots(case):
    kwargs, expected_by_device = HAND[case]
    matrix = av.load_traces(TINY, slot_minutes=60, **kwargs)
    assert matrix.dtype == bool
    np.testing.assert_array_equal(matrix, np.array(expected_by_device, bool).T)


def test_tiny_trace_info_and_slot_length():
    matrix, info = av.load_traces(TINY, slot_minutes=120, return_info=True)
    assert info.device_ids == ("0", "1", "2")  # numeric order, not file order
    assert info.models == ("phone-a", "phone-b", "never-wifi")
    assert info.origin == "2020-03-01 00:00:00"
    np.testing.assert_array_equal(info.first, [600, 0, 3600])
    np.testing.assert_array_equal(info.last, [18000, 19800, 14400])
    # 2-hour slots need 60 available minutes: device 0 has 80, 20 + 60 and
    # 10 + 50 (wrapped); device 1 has 120, 30 + 20 and 90 + 30 (wrapped).
    np.testing.assert_array_equal(matrix.T, [[1, 1, 1], [1, 0, 1], [0, 0, 0]])


def test_shipped_traces_matrix():
    path = shipped_traces_path()
    if path is None:
        pytest.skip("device-traces.json not found (set FSJAX_SHARED)")
    matrix, info = av.load_traces(path, return_info=True)
    frac = float(matrix.mean())
    ever = int(matrix.any(axis=0).sum())
    print(f"\nshipped traces, rule=charging_wifi, 60-min slots: T={matrix.shape[0]}, "
          f"availability fraction={frac:.4f}, devices ever available={ever}/100, "
          f"origin={info.origin}")
    assert matrix.shape[1] == 100 and matrix.shape[0] > 1
    assert 0.0 < frac < 1.0
    # A stricter rule can only remove available slots.
    strict = av.load_traces(path, rule="charging_wifi_locked")
    assert strict.shape == matrix.shape and not (strict & ~matrix).any()


def _write(tmp_path, text, name="t.json"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _devices(**messages):
    return json.dumps({k.lstrip("d"): {"guid": k, "messages": m, "model": "x"} for k, m in messages.items()})


GOOD = "2020-01-01 00:00:00\twifi\n2020-01-01 00:00:00\tbattery_charged_on\n2020-01-01 02:00:00\tscreen_on"


@pytest.mark.parametrize("bad_line, why", [
    ("2020-01-01 00:30:00 wifi", "TAB"),
    ("2020-13-01 00:30:00\twifi", "timestamp"),
    ("2020-01-01 0:30\twifi", "timestamp"),
    ("2020-01-01 00:30:00\tteleported", "unknown event"),
    ("2020-01-01 00:30:00\t120.0%", "unknown event"),
    ("2019-12-31 23:00:00\twifi", "earlier"),
])
def test_unparsable_line_names_device_and_line(tmp_path, bad_line, why):
    lines = GOOD.split("\n")
    text = "\n".join(lines[:2] + [bad_line] + lines[2:])
    path = _write(tmp_path, _devices(d0=GOOD, d7=text))
    with pytest.raises(ValueError, match=r"device 7: line 3: .*" + why):
        av.load_traces(path)


def test_skip_bad_lines_counts_them(tmp_path):
    lines = GOOD.split("\n")
    text = "\n".join(lines[:2] + ["garbage", "2020-01-01 00:30:00\tteleported"] + lines[2:])
    path = _write(tmp_path, _devices(d0=GOOD, d7=text))
    with pytest.warns(UserWarning, match="skipped 2 unparsable lines"):
        matrix, info = av.load_traces(path, skip_bad_lines=True, return_info=True)
    assert info.bad_lines == {"7": 2}
    np.testing.assert_array_equal(matrix, [[True, True], [True, True]])


@pytest.mark.parametrize("content, match", [
    (None, "not found"),
    ("{not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"0": {"guid": "a"}}', "device 0: expected an object with a 'messages'"),
])
def test_bad_trace_files(tmp_path, content, match):
    path = tmp_path / "missing.json" if content is None else _write(tmp_path, content)
    with pytest.raises(ValueError, match=match):
        av.load_traces(path)


@pytest.mark.parametrize("kwargs, match", [
    (dict(slot_minutes=0), "slot_minutes=0"),
    (dict(rule="charging_bluetooth"), "rule='charging_bluetooth'"),
    (dict(min_coverage=1.5), "min_coverage=1.5"),
])
def test_bad_load_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        av.load_traces(TINY, **kwargs)


# ---------------------------------------------------------------------------
# Models.


def _run(model, key, rounds):
    """Steps a model `rounds` times from init; returns bool[rounds, C]."""
    k0, k1 = jax.random.split(key)

    def body(state, k):
        return model.step(state, k)

    _, series = jax.lax.scan(body, model.init(k0), jax.random.split(k1, rounds))
    return series


def test_traces_replays_matrix_round_robin_and_wraps():
    matrix = av.load_traces(TINY)
    model = av.traces(num_clients=5, path=str(TINY), start=4, assign="round_robin")
    series = np.asarray(jax.jit(lambda k: _run(model, k, 8))(jax.random.key(0)))
    rows = [(4 + r) % 6 for r in range(8)]
    expected = matrix[rows][:, [0, 1, 2, 0, 1]]
    np.testing.assert_array_equal(series, expected)


def test_traces_random_start_depends_on_key():
    matrix = np.eye(7, dtype=bool)
    model = av.traces(num_clients=7, matrix=matrix)   # start="random" is the default
    starts = set()
    for s in range(20):
        offset = np.asarray(model.init(jax.random.key(s)).offset)
        assert (offset == offset[0]).all()   # identity: one start, the devices' timing kept
        starts.add(int(offset[0]))
    assert len(starts) > 1 and all(0 <= s < 7 for s in starts)
    state = model.init(jax.random.key(3))
    _, a = model.step(state, None)
    np.testing.assert_array_equal(a, matrix[int(state.offset[0])])


def test_bernoulli_frequencies_match_p():
    p = [0.0, 0.2, 0.5, 0.9, 1.0]
    series = np.asarray(_run(av.bernoulli(num_clients=5, p=p), jax.random.key(1), 4000))
    np.testing.assert_allclose(series.mean(0), p, atol=0.025)


@pytest.mark.parametrize("p_drop, p_return", [(0.1, 0.3), (0.5, 0.05), (0.02, 0.02)])
def test_markov_long_run_availability(p_drop, p_return):
    c, rounds = 400, 1500
    # Start everyone off, so the test sees the chain converge, not just its start.
    model = av.markov(num_clients=c, p_drop=p_drop, p_return=p_return, p_init=0.0)
    series = np.asarray(jax.jit(lambda k: _run(model, k, rounds))(jax.random.key(2)))
    burn = 300
    stationary = p_return / (p_drop + p_return)
    assert abs(series[burn:].mean() - stationary) < 0.02
    # Transition frequencies are the chain's parameters.
    on, nxt = series[:-1], series[1:]
    assert abs((on & ~nxt).sum() / on.sum() - p_drop) < 0.01
    assert abs((~on & nxt).sum() / (~on).sum() - p_return) < 0.01


def test_markov_starts_stationary_and_per_client():
    p_drop = np.array([0.1, 0.4, 0.9])
    p_return = np.array([0.9, 0.4, 0.1])
    model = av.markov(num_clients=3, p_drop=p_drop.tolist(), p_return=p_return.tolist())
    starts = jax.vmap(lambda k: model.init(k).on)(jax.random.split(jax.random.key(0), 20000))
    np.testing.assert_allclose(np.asarray(starts).mean(0), p_return / (p_drop + p_return), atol=0.015)


def test_correlation_groups_by_hand():
    # Clients 0 and 1 identical, 2 anti-correlated with them, 3 constant,
    # 4 correlates with 2 only above a low threshold.
    s = np.array([[1, 1, 0, 1, 0], [0, 0, 1, 1, 1], [1, 1, 0, 1, 0], [0, 0, 1, 1, 0]], bool)
    z = (s - s.mean(0)) / np.where(s.std(0) > 0, s.std(0), 1)
    corr = z.T @ z / len(s)
    assert corr[2, 4] == pytest.approx(0.57735, abs=1e-4)
    np.testing.assert_array_equal(av.correlation_groups(s, 0.35), [0, 0, 2, 3, 2])
    np.testing.assert_array_equal(av.correlation_groups(s, 0.6), [0, 0, 2, 3, 4])


def test_correlated_groups_from_shared_devices_fail_together():
    # 6 clients on 3 devices: clients k and k+3 replay the same trace, so they
    # correlate perfectly and form groups; device 2's column is constant.
    matrix = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]] * 5, bool)
    lockstep = {"matrix": matrix.tolist(), "assign": "round_robin", "start": 0}
    model = av.correlated(num_clients=6, base="traces", base_params=lockstep,
                          threshold=0.35, p_group_drop=1.0, warmup=20)
    state = model.init(jax.random.key(0))
    # corr(device 0, device 1) = 0; a constant series correlates with nothing.
    np.testing.assert_array_equal(state.group, [0, 1, 2, 0, 1, 5])
    np.testing.assert_array_equal(state.grouped, [True, True, False, True, True, False])
    _, a = model.step(state, jax.random.key(1))
    np.testing.assert_array_equal(a, [False, False, True, False, False, True])

    shock = av.correlated(num_clients=6, base="traces", base_params=lockstep,
                          p_group_drop=0.3, warmup=20)
    series = np.asarray(_run(shock, jax.random.key(4), 4000))
    np.testing.assert_array_equal(series[:, :3], series[:, 3:])  # members drop together
    base_rate = matrix[:, 0].mean()
    assert abs(series[:, 0].mean() - 0.7 * base_rate) < 0.03
    assert series[:, 2].all()  # ungrouped client untouched


def test_correlated_any_mode_and_explicit_groups():
    p = [0.5, 0.5, 0.5, 0.5]
    model = av.correlated(num_clients=4, base="bernoulli", base_params={"p": p},
                          groups=["a", "a", "b", "c"], mode="any")
    series = np.asarray(_run(model, jax.random.key(5), 3000))
    np.testing.assert_array_equal(series[:, 0], series[:, 1])
    assert abs(series[:, 0].mean() - 0.25) < 0.03  # both members must be up
    assert abs(series[:, 2].mean() - 0.5) < 0.03


def test_failure_rule_thresholds():
    rule = av.failure_rule(num_clients=4, latency_threshold=90.0, loss_threshold=40.0,
                           latency_median=50.0, latency_client_sigma=0.0, latency_round_sigma=0.0)
    state = rule.init(jax.random.key(0))
    failed, latency = rule.fails(state, jax.random.key(1), jnp.array([0, 1, 2, 3]),
                                 jnp.array([39.9, 40.0, jnp.nan, 1.0]))
    np.testing.assert_array_equal(failed, [False, True, True, False])
    np.testing.assert_allclose(latency, 50.0)
    slow = av.failure_rule(num_clients=2, latency_median=91.0, latency_client_sigma=0.0,
                           latency_round_sigma=0.0)
    failed, _ = slow.fails(slow.init(jax.random.key(0)), jax.random.key(1), jnp.array([0, 1]),
                           jnp.zeros(2))
    assert failed.all()


def test_failure_rule_latency_distribution():
    c = 20000
    rule = av.failure_rule(num_clients=c)
    state = rule.init(jax.random.key(0))
    slots = jnp.arange(c)
    failed, latency = jax.jit(rule.fails)(state, jax.random.key(1), slots, jnp.zeros(c))
    log_lat = np.log(np.asarray(latency))
    assert abs(np.median(log_lat) - math.log(30.0)) < 0.02
    assert abs(log_lat.std() - math.sqrt(0.5 ** 2 + 0.3 ** 2)) < 0.01
    z = math.log(90.0 / 30.0) / math.sqrt(0.5 ** 2 + 0.3 ** 2)
    expected = 0.5 * math.erfc(z / math.sqrt(2))
    assert abs(float(failed.mean()) - expected) < 0.005
    # The same client is slow in every round: its median is a device property.
    _, again = rule.fails(state, jax.random.key(2), slots, jnp.zeros(c))
    assert np.corrcoef(log_lat, np.log(np.asarray(again)))[0, 1] > 0.6


def test_no_failures():
    rule = av.FAILURES["none"](num_clients=3, latency_threshold=1.0)
    failed, latency = jax.jit(rule.fails)(rule.init(jax.random.key(0)), jax.random.key(1),
                                          jnp.array([0, 2]), jnp.array([1e9, jnp.nan]))
    assert not failed.any() and (latency == 0).all()


@pytest.mark.parametrize("name, params", [
    ("latency_loss", {}),
    ("latency_loss", dict(latency_threshold=40.0, loss_threshold=1.0, latency_client_sigma=1.0,
                   latency_round_sigma=1.0)),
    ("none", {}),
])
def test_failure_judge_slot_by_slot_on_draw_equals_fails(name, params):
    """``judge`` per slot on one round's ``draw`` is ``fails`` (the fused round's use)."""
    c, k = 30, 9
    rule = av.FAILURES[name](num_clients=c, **params)

    @jax.jit
    def both(key):
        k_init, k_slots, k_loss, k_round = jax.random.split(key, 4)
        state = rule.init(k_init)
        slots = jax.random.randint(k_slots, (k,), 0, c)
        losses = jax.random.uniform(k_loss, (k,), maxval=3.0) ** 4  # straddles 1.0 and 40.0
        losses = losses.at[0].set(jnp.nan).at[1].set(jnp.inf)
        failed, latency = rule.fails(state, k_round, slots, losses)
        drawn = rule.draw(state, k_round, slots)
        # One slot at a time, as a loop over clients weighs them: scalar in, scalar out.
        per_slot = jax.lax.map(lambda lat_loss: rule.judge(*lat_loss), (drawn, losses))
        return failed, latency, drawn, per_slot, rule.judge(drawn, losses)

    n_failed = 0
    for seed in range(6):
        failed, latency, drawn, per_slot, whole = both(jax.random.key(seed))
        assert failed.shape == per_slot.shape == (k,) and per_slot.dtype == bool
        assert latency.dtype == drawn.dtype == jnp.float32
        np.testing.assert_array_equal(drawn, latency)  # bitwise: the same normals
        np.testing.assert_array_equal(per_slot, failed)
        np.testing.assert_array_equal(whole, failed)
        assert bool(failed[0]) == (name == "latency_loss")  # a NaN loss fails the rule
        n_failed += int(failed.sum())
    if name == "latency_loss":
        assert n_failed > 12  # more than the NaN/inf slots: the verdicts are exercised
    else:
        assert n_failed == 0 and not np.asarray(drawn).any()


def test_failure_draw_ignores_losses_and_matches_formula():
    rule = av.failure_rule(num_clients=5, latency_median=20.0, latency_client_sigma=0.4,
                           latency_round_sigma=0.7)
    state = rule.init(jax.random.key(0))
    slots = jnp.array([4, 0, 4, 2])
    latency = rule.draw(state, jax.random.key(1), slots)
    e = np.asarray(jax.random.normal(jax.random.key(1), (4,)))
    np.testing.assert_allclose(latency, np.asarray(state.median)[[4, 0, 4, 2]] * np.exp(0.7 * e),
                               rtol=1e-6)
    np.testing.assert_array_equal(rule.judge(jnp.array([90.0, 90.5, 1.0]), jnp.array([0.0, 0.0, 40.0])),
                                  [False, True, True])


# ---------------------------------------------------------------------------
# Config construction, jit and vmap.

CONFIGS = {
    "always": {},
    "bernoulli": {"p": [0.1, 0.5, 0.9, 0.3, 0.7, 1.0]},
    "markov": {"p_drop": 0.2, "p_return": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]},
    "traces": {"path": str(TINY), "slot_minutes": 30, "rule": "charging", "start": 2,
               "assign": "round_robin"},
    "minority_dropout": {"label_hist": [[3, 0], [0, 2], [1, 1], [4, 0], [0, 0], [2, 5]],
                         "p": 0.7, "minority_classes": [1]},
    "correlated": {"base": "markov", "base_params": {"p_drop": 0.3, "p_return": 0.3},
                   "threshold": 0.35, "warmup": 16, "mode": "any"},
}


def test_registry_covers_all_models():
    assert set(av.REGISTRY) == set(CONFIGS)
    assert set(av.FAILURES) == {"none", "latency_loss"}


def test_models_jit_and_vmap_equal_loop():
    # All models in one program: compile time, not run time, dominates here.
    models = {name: av.REGISTRY[name](num_clients=6, **CONFIGS[name]) for name in sorted(CONFIGS)}

    def run(key):
        return {name: _run(m, jax.random.fold_in(key, i), 5) for i, (name, m) in enumerate(models.items())}

    keys = jax.random.split(jax.random.key(7), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    run_jit = jax.jit(run)
    looped = [run_jit(k) for k in keys]
    for name in models:
        assert batched[name].shape == (3, 5, 6) and batched[name].dtype == bool, name
        for i in range(len(keys)):
            np.testing.assert_array_equal(batched[name][i], looped[i][name], err_msg=name)


def test_failure_rule_jit_and_vmap_equal_loop():
    rule = av.FAILURES["latency_loss"](num_clients=10)

    def one(key):
        k0, k1 = jax.random.split(key)
        return rule.fails(rule.init(k0), k1, jnp.array([0, 3, 9]), jnp.array([1.0, 50.0, 2.0]))

    keys = jax.random.split(jax.random.key(0), 4)
    one_jit = jax.jit(one)
    failed, latency = jax.jit(jax.vmap(one))(keys)
    for i, k in enumerate(keys):
        f, lat = one_jit(k)
        np.testing.assert_array_equal(failed[i], f)
        np.testing.assert_allclose(latency[i], lat, rtol=1e-6)
    assert failed[:, 1].all()


@pytest.mark.parametrize("factory, kwargs, match", [
    (av.bernoulli, dict(p=1.5), r"p=1\.5: expected probabilities in \[0, 1\]"),
    (av.bernoulli, dict(p=[0.5, -0.1, 0.5]), r"p=.*got -0\.1 at client 1"),
    (av.bernoulli, dict(p=[0.5, 0.5]), r"p has shape \(2,\).*num_clients=3"),
    (av.bernoulli, dict(p=float("nan")), r"p=nan"),
    (av.markov, dict(p_drop=2.0), r"p_drop=2\.0"),
    (av.markov, dict(p_return=-1), r"p_return=-1"),
    (av.markov, dict(p_init=1.01), r"p_init=1\.01"),
    (av.correlated, dict(p_group_drop=1.2), r"p_group_drop=1\.2"),
    (av.correlated, dict(threshold=2.0), r"threshold=2\.0"),
    (av.correlated, dict(base="correlated"), r"base='correlated'"),
    (av.correlated, dict(mode="all"), r"mode='all'"),
    (av.correlated, dict(groups=[0, 1]), r"groups has 2 labels"),
    (av.traces, dict(), r"exactly one"),
    (av.traces, dict(matrix=[1, 0]), r"matrix has shape"),
    (av.traces, dict(matrix=[[1], [0]], start=2, assign="random"), r"start=2"),
    (av.traces, dict(matrix=[[1], [0]], start="first", assign="random"), r"start='first'"),
    (av.traces, dict(matrix=[[1, 0]], assign="identity"), r"assign='identity'.*num_clients=3"),
    (av.traces, dict(matrix=[[1, 0, 1]], assign="shuffle"), r"assign='shuffle'"),
    (av.minority_dropout, dict(), r"label_hist=None"),
    (av.minority_dropout, dict(label_hist=[[1, 0]]), r"label_hist has shape \(1, 2\)"),
    (av.minority_dropout, dict(label_hist=np.ones((3, 2)), factor=1.5), r"factor=1\.5"),
    (av.minority_dropout, dict(label_hist=np.ones((3, 2)), minority_classes=[2]),
     r"minority_classes=\[2\]"),
    (av.failure_rule, dict(latency_threshold=0.0), r"latency_threshold=0\.0"),
    (av.failure_rule, dict(latency_round_sigma=-1.0), r"latency_round_sigma=-1\.0"),
    (av.always, dict(num_clients=0), r"num_clients=0"),
])
def test_bad_arguments_raise(factory, kwargs, match):
    kwargs = {"num_clients": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)
