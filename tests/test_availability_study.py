"""Tests for the CUP study's availability settings (REFERENCE.md B.5).

- ``traces(start=..., assign=...)``: a seeded random start per run seed, identity
  or random device assignment (populations larger than the trace file);
- ``traces(rule="study_events")``: the study's event-indexed parsing
  (:mod:`fsjax.availability.study_events`), against hand-written trace files;
- ``minority_dropout``: availability probability scaled for clients holding a
  minority class;
- the study's setting on the shipped traces (skipped when the file is missing);
- step time of the models at C = 10^6.
"""

import json
import math
import os
import pathlib
import time

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
    candidates = ([pathlib.Path(env) / "device-traces.json",
                   pathlib.Path(env) / "data" / "device-traces.json"]
                  if env else [ROOT.parent / "shared" / "data" / "device-traces.json"])
    return next((p for p in candidates if p.is_file()), None)


def series(model, key, rounds):
    """bool[rounds, C]: ``model`` stepped ``rounds`` times from ``init(key)``."""
    state = model.init(key)
    out = []
    for r in range(rounds):
        state, a = model.step(state, jax.random.fold_in(key, r))
        out.append(np.asarray(a))
    return np.array(out)


def write_traces(tmp_path, devices, name="traces.json"):
    """``devices``: {id: list of event lines (timestamps added) or a raw messages string}."""
    data = {}
    for k, lines in devices.items():
        if isinstance(lines, str):
            messages = lines
        else:
            messages = "\n".join(f"2020-01-01 00:{i // 60:02d}:{i % 60:02d} \t{e}"
                                 for i, e in enumerate(lines))
        data[str(k)] = {"guid": f"g{k}", "messages": messages, "model": "x"}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------------------
# start and assign.


def test_identity_start0_equals_the_old_replay():
    """C <= D with start=0 is the replay fsjax had before ``start``/``assign``."""
    matrix = av.load_traces(TINY)                     # bool[6, 3]
    for c in (1, 3):
        model = av.traces(num_clients=c, path=str(TINY), start=0)
        for seed in (0, 1):                           # the key does not matter
            got = series(model, jax.random.key(seed), 14)
            want = np.array([[matrix[r % 6, k] for k in range(c)] for r in range(14)])
            np.testing.assert_array_equal(got, want)


def test_random_start_is_deterministic_per_seed_and_differs_across_seeds():
    rng = np.random.default_rng(0)
    matrix = rng.random((97, 5)) < 0.4
    model = av.traces(num_clients=5, matrix=matrix)   # start="random", assign="auto" (identity)
    starts = []
    for seed in range(8):
        key = jax.random.key(seed)
        a, b = series(model, key, 12), series(model, key, 12)
        np.testing.assert_array_equal(a, b)
        offset = np.asarray(model.init(key).offset)
        np.testing.assert_array_equal(offset, offset[0])
        s = int(offset[0])
        np.testing.assert_array_equal(a, matrix[(s + np.arange(12)) % 97])   # all devices, in step
        starts.append(s)
    assert len(set(starts)) >= 6   # 8 draws from 97 slots


def test_fixed_start_ignores_the_key():
    matrix = np.arange(12).reshape(6, 2) % 3 == 0
    model = av.traces(num_clients=2, matrix=matrix, start=4)
    np.testing.assert_array_equal(series(model, jax.random.key(0), 5), series(model, jax.random.key(9), 5))
    np.testing.assert_array_equal(series(model, jax.random.key(0), 5), matrix[[4, 5, 0, 1, 2]])


def test_random_assignment_matches_a_loop_and_is_deterministic():
    rng = np.random.default_rng(1)
    matrix = rng.random((11, 3)) < 0.5
    model = av.traces(num_clients=40, matrix=matrix)   # C > D: auto is random
    for seed in (0, 5):
        key = jax.random.key(seed)
        state = model.init(key)
        dev, off = np.asarray(state.device), np.asarray(state.offset)
        assert dev.shape == off.shape == (40,) and dev.dtype == off.dtype == np.int32
        assert set(dev.tolist()) == {0, 1, 2} and 0 <= off.min() and off.max() < 11
        assert len(set(off.tolist())) > 3   # clients sharing a device are out of step
        got = series(model, key, 15)
        want = np.array([[matrix[(off[c] + r) % 11, dev[c]] for c in range(40)] for r in range(15)])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, series(model, key, 15))
    a, b = (model.init(jax.random.key(s)) for s in (0, 1))
    assert not np.array_equal(a.device, b.device)


def test_random_assignment_uses_assign_traces_plus_the_start():
    matrix = np.zeros((13, 4), bool)
    key = jax.random.key(3)
    k_start, k_assign = jax.random.split(key)
    dev, own = av.assign_traces(k_assign, 30, 4, 13)
    fixed = av.traces(num_clients=30, matrix=matrix, assign="random", start=5).init(key)
    np.testing.assert_array_equal(fixed.device, dev)
    np.testing.assert_array_equal(fixed.offset, (np.asarray(own) + 5) % 13)
    drawn = av.traces(num_clients=30, matrix=matrix, assign="random").init(key)
    s = int(jax.random.randint(k_start, (), 0, 13, jnp.int32))
    np.testing.assert_array_equal(drawn.offset, (np.asarray(own) + s) % 13)


def test_assign_auto_identity_and_errors():
    matrix = np.eye(4, dtype=bool)
    ident = av.traces(num_clients=4, matrix=matrix, assign="identity").init(jax.random.key(0))
    np.testing.assert_array_equal(ident.device, [0, 1, 2, 3])
    auto = av.traces(num_clients=4, matrix=matrix).init(jax.random.key(0))
    np.testing.assert_array_equal(auto.device, [0, 1, 2, 3])
    rr = av.traces(num_clients=6, matrix=matrix, assign="round_robin").init(jax.random.key(0))
    np.testing.assert_array_equal(rr.device, [0, 1, 2, 3, 0, 1])
    with pytest.raises(ValueError, match=r"assign='identity'.*num_clients=5.*4 devices"):
        av.traces(num_clients=5, matrix=matrix, assign="identity")
    with pytest.raises(ValueError, match=r"assign='rr'"):
        av.traces(num_clients=2, matrix=matrix, assign="rr")
    with pytest.raises(ValueError, match=r"start=4: expected 'random' or an integer"):
        av.traces(num_clients=2, matrix=matrix, start=4)


def test_trace_state_is_o_c_and_jit_vmap_equal_loop():
    matrix = np.random.default_rng(2).random((9, 3)) < 0.5
    model = av.traces(num_clients=7, matrix=matrix)
    state = model.init(jax.random.key(0))
    sizes = [np.asarray(x).size for x in jax.tree_util.tree_leaves(state)]
    assert sorted(sizes) == [1, 7, 7]

    def run(key):
        def body(s, k):
            return model.step(s, k)
        return jax.lax.scan(body, model.init(key), jax.random.split(key, 6))[1]

    keys = jax.random.split(jax.random.key(4), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    for i, k in enumerate(keys):
        np.testing.assert_array_equal(batched[i], series(model, k, 6))   # step ignores its key


# ---------------------------------------------------------------------------
# rule="study_events".

# Hand-computed bits, one per non-empty line: wifi and charging after the line.
# Device "0": cellular lines never reset wifi; screen/battery-level lines still
#   write a bit; battery_charged_off clears charging.
# Device "2": wifi before charging, then 4G (no effect), then "wifi_off"
#   (a line holding both "wifi" and "off" clears wifi, as the study's test uses).
# Device "10": one line only (padded with False); sorts after "2" as a number.
STUDY_DEVICES = {
    "0": ["screen_on", "battery_charged_on", "4G", "wifi", "3G", "55.0%", "Unknown",
          "battery_charged_off", "screen_off", "battery_charged_on", "2G"],
    "2": ["wifi", "battery_charged_on", "4G", "wifi_off", "battery_low", "wifi"],
    "10": ["battery_charged_on"],
}
STUDY_BITS = {
    "0": [0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1],
    "2": [0, 1, 1, 0, 0, 1],
    "10": [0],
}


def test_event_bits_by_hand():
    for k, lines in STUDY_DEVICES.items():
        messages = "\n".join(f"2020-01-01 00:00:{i:02d} \t{e}" for i, e in enumerate(lines))
        np.testing.assert_array_equal(av.event_bits(messages), np.array(STUDY_BITS[k], bool), k)


def test_event_bits_blank_lines_crlf_and_case():
    # Blank and whitespace-only lines are skipped; \r\n splits like \n; matching is
    # case-sensitive ("WiFi" is no wifi line), and timestamps are not parsed at all.
    messages = "x\tbattery_charged_on\r\n\r\n   \nnot a time\twifi\nWiFi\nwifi_off\n"
    np.testing.assert_array_equal(av.event_bits(messages), [False, True, True, False])


def test_study_matrix_pads_and_orders_devices(tmp_path):
    path = write_traces(tmp_path, STUDY_DEVICES)
    m = av.load_study_events(path, length=13)
    assert m.shape == (13, 3) and m.dtype == bool
    for col, k in enumerate(["0", "2", "10"]):           # numeric order
        bits = np.array(STUDY_BITS[k] + [0] * (13 - len(STUDY_BITS[k])), bool)
        np.testing.assert_array_equal(m[:, col], bits, k)
    np.testing.assert_array_equal(av.load_study_events(path, length=4)[:, 0], [0, 0, 0, 1])


def test_study_events_the_studys_own_example(tmp_path):
    # The study's tests/test_availability.py: length 3, round 4 wraps to bit 1.
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"0": {"messages": "wifi_on\nbattery_charged_on\nwifi_off"},
                                "1": {"messages": "battery_charged_on\nwifi_on\nwifi_off"}}))
    m = av.load_study_events(path, length=3)
    np.testing.assert_array_equal(m.T, [[0, 1, 0], [0, 1, 0]])
    model = av.traces(num_clients=2, matrix=m, start=0)
    got = series(model, jax.random.key(0), 5)
    np.testing.assert_array_equal(got[:, 0], [0, 1, 0, 0, 1])


def test_traces_study_events_replays_one_line_per_round(tmp_path):
    path = write_traces(tmp_path, STUDY_DEVICES)
    model = av.traces(num_clients=3, path=str(path), rule="study_events", start=0)
    got = series(model, jax.random.key(0), 102)
    for col, k in enumerate(["0", "2", "10"]):
        want = np.zeros(100, bool)
        want[:len(STUDY_BITS[k])] = STUDY_BITS[k]
        np.testing.assert_array_equal(got[:100, col], want, k)
    np.testing.assert_array_equal(got[100:], got[:2])   # length max(100, T) = 100: wraps


def test_study_events_length_is_max_100_rounds(tmp_path):
    lines = ["wifi"] + ["battery_charged_on", "battery_charged_off"] * 70    # 141 lines
    path = write_traces(tmp_path, {"0": lines})
    bits = np.array([0] + [1, 0] * 70, bool)
    short = av.traces(num_clients=1, path=str(path), rule="study_events", start=0, rounds=50)
    long = av.traces(num_clients=1, path=str(path), rule="study_events", start=0, rounds=120)
    a, b = series(short, jax.random.key(0), 130)[:, 0], series(long, jax.random.key(0), 130)[:, 0]
    np.testing.assert_array_equal(a, bits[np.arange(130) % 100])
    np.testing.assert_array_equal(b, bits[np.arange(130) % 120])
    np.testing.assert_array_equal(a[:100], b[:100])   # rounds <= length: the same replay
    assert av.study_length(None) == 100 and av.study_length(50) == 100 and av.study_length(120) == 120
    with pytest.raises(ValueError, match=r"rounds=0"):
        av.traces(num_clients=1, path=str(path), rule="study_events", rounds=0)


def test_study_events_random_start_rotates_the_vectors(tmp_path):
    path = write_traces(tmp_path, STUDY_DEVICES)
    model = av.traces(num_clients=3, path=str(path), rule="study_events")
    m = av.load_study_events(path, length=100)
    offsets = set()
    for seed in range(6):
        key = jax.random.key(seed)
        s = int(model.init(key).offset[0])
        offsets.add(s)
        np.testing.assert_array_equal(series(model, key, 20), m[(s + np.arange(20)) % 100])
    assert len(offsets) > 1


def test_bad_rule_mentions_study_events():
    with pytest.raises(ValueError, match=r"rule='events'.*study_events"):
        av.traces(num_clients=1, path=str(TINY), rule="events")


# ---------------------------------------------------------------------------
# minority_dropout.


def test_minority_clients_and_classes_by_hand():
    hist = np.array([[50, 50, 0, 0], [0, 50, 50, 0], [0, 0, 50, 2], [50, 0, 0, 0]])
    # Totals 100, 100, 100, 2; mean 75.5: class 3 is below half the mean.
    np.testing.assert_array_equal(av.minority_classes_of(hist), [3])
    np.testing.assert_array_equal(av.minority_classes_of(hist, threshold=1.4), [0, 1, 2, 3])
    np.testing.assert_array_equal(av.minority_clients(hist, [3]), [False, False, True, False])
    np.testing.assert_array_equal(av.minority_clients(hist, [0, 2]), [True, True, True, True])
    np.testing.assert_array_equal(av.minority_clients(hist, []), [False] * 4)


def test_minority_dropout_frequencies():
    # Client 1 holds the minority class 3 (count > 0); client 3 holds none of it.
    hist = np.array([[5, 5, 0, 0], [0, 5, 0, 1], [0, 0, 9, 0], [5, 0, 0, 0]], np.float32)
    model = av.minority_dropout(4, hist, p=[0.8, 0.8, 0.6, 1.0], factor=0.5)
    keys = jax.random.split(jax.random.key(0), 6000)
    run = jax.jit(jax.vmap(lambda k: model.step(model.init(k), k)[1]))
    freq = np.asarray(run(keys)).mean(0)
    np.testing.assert_allclose(freq, [0.8, 0.4, 0.6, 1.0], atol=0.025)
    explicit = av.minority_dropout(4, hist, p=0.8, factor=0.0, minority_classes=[0])
    a = np.asarray(jax.vmap(lambda k: explicit.step(explicit.init(k), k)[1])(keys[:500]))
    assert not a[:, 0].any() and not a[:, 3].any() and a[:, 1].mean() > 0.7


def test_minority_dropout_even_split_is_bernoulli(caplog):
    ring = np.zeros((10, 10))
    for i in range(10):
        ring[i, [i, (i + 1) % 10]] = 50      # the label ring: every class equally common
    model = av.minority_dropout(10, ring, p=0.8)
    bern = av.bernoulli(10, p=0.8)
    for s in range(5):
        k = jax.random.key(s)
        np.testing.assert_array_equal(model.step(model.init(k), k)[1], bern.step(bern.init(k), k)[1])
    assert any("no client holds a minority class" in r.getMessage() for r in caplog.records)


def test_minority_dropout_is_registered_and_takes_label_hist():
    import inspect
    assert av.REGISTRY["minority_dropout"] is av.minority_dropout
    assert "label_hist" in inspect.signature(av.REGISTRY["minority_dropout"]).parameters


# ---------------------------------------------------------------------------
# The study's setting on the shipped traces (100 clients, 50 rounds, seeds 0..4).


def _study_summary(model, rounds=50, seeds=range(5)):
    out = []
    for seed in seeds:
        k_av = jax.random.split(jax.random.PRNGKey(seed), 3)[1]   # Simulation's availability key
        x = series(model, k_av, rounds)
        out.append((int(x.any(0).sum()), float(x.sum(1).mean())))
    return out


def test_shipped_traces_in_the_studys_setting():
    path = shipped_traces_path()
    if path is None:
        pytest.skip("device-traces.json not found (set FSJAX_SHARED)")
    for rule in ("charging_wifi", "study_events"):
        fixed = _study_summary(av.traces(100, path=str(path), rule=rule, start=0, rounds=50))
        drawn = _study_summary(av.traces(100, path=str(path), rule=rule, rounds=50))
        print(f"\n{rule}: start=0 (ever, mean per round) {fixed}; random start {drawn}")
        assert len(set(fixed)) == 1          # start=0: every seed replays the same
        assert len(set(drawn)) > 1           # a random start per seed: seeds differ
    # REFERENCE.md B.5: with the study's parsing 53 of 100 clients are never
    # available in the first 50 rounds.
    assert fixed[0][0] == 100 - 53
    # The study's own code (server/availability.py), transcribed, gives the same matrix.
    data = json.loads(pathlib.Path(path).read_text())

    def extract_vector(trace, length):
        wifi, charging = False, False
        vector = []
        for event in trace:
            if "wifi" in event:
                wifi = "off" not in event
            elif "battery_charged" in event:
                charging = "off" not in event
            vector.append(int(wifi and charging))
        return vector[:length] + [0] * max(0, length - len(vector))

    ours = av.load_study_events(path, length=100)
    for i in range(100):
        events = [line.strip() for line in data[str(i)]["messages"].splitlines() if line.strip()]
        np.testing.assert_array_equal(ours[:, i], np.array(extract_vector(events, 100), bool))


# ---------------------------------------------------------------------------
# Vectorised over C: 10^6 clients.


def _step_seconds(model, repeats=7):
    state = model.init(jax.random.key(0))
    state, a = model.step(state, jax.random.key(1))
    a.block_until_ready()
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        state, a = model.step(state, jax.random.key(i))
        a.block_until_ready()
        times.append(time.perf_counter() - t0)
    return min(times), a


@pytest.mark.parametrize("name", ["traces", "bernoulli", "markov", "minority_dropout"])
def test_million_clients_step_fast(name):
    c = 10 ** 6
    matrix = np.random.default_rng(0).random((288, 100)) < 0.1
    model = {"traces": lambda: av.traces(c, matrix=matrix),
             "bernoulli": lambda: av.bernoulli(c, p=0.8),
             "markov": lambda: av.markov(c, p_drop=0.1, p_return=0.25),
             "minority_dropout": lambda: av.minority_dropout(
                 c, np.eye(10, dtype=np.float32)[np.arange(c) % 10], minority_classes=[0])}[name]()
    seconds, a = _step_seconds(model)
    print(f"\n{name}: C=10^6 step {seconds * 1e3:.1f} ms")
    assert a.shape == (c,) and a.dtype == bool
    expect = {"traces": 0.1, "bernoulli": 0.8, "markov": 0.25 / 0.35, "minority_dropout": 0.76}[name]
    assert abs(float(a.mean()) - expect) < 0.02
    assert seconds < 0.1
