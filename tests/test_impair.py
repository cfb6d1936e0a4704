"""In-process network impairment (transport.impair): the spec grammar, the seeded model, the delay line."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from transport.impair import DelayLine, ImpairmentError, ImpairmentModel, ImpairmentSpec, parse_impairment

ROOT = Path(__file__).resolve().parent.parent


def verdicts(spec: ImpairmentSpec, n: int):
    m = ImpairmentModel(spec)
    return [m.next() for _ in range(n)]


def test_spec_grammar():
    s = parse_impairment("loss=5%,burst=3,jitter=20ms,reorder=1%,dup=1%,seed=7")
    assert s == ImpairmentSpec(loss=0.05, burst=3.0, jitter_ms=20.0, reorder=0.01, dup=0.01, seed=7)
    assert parse_impairment("jitter=0.02s, loss=2") == ImpairmentSpec(loss=0.02, jitter_ms=20.0)
    assert parse_impairment("") == ImpairmentSpec() and not ImpairmentSpec().active
    assert parse_impairment(s.describe()) == s


@pytest.mark.parametrize("text, words", [
    ("loss=5x", "bad value for loss"),
    ("loss=150%", "0..100%"),
    ("lose=5%", "unknown key 'lose'"),
    ("loss=5%,loss=6%", "given twice"),
    ("jitter", "KEY=VALUE"),
    ("burst=0.5", "burst"),
    ("burst=3%", "bad value for burst"),
    ("seed=-1", "bad value for seed"),
    ("jitter=-3ms", "bad value for jitter"),
])
def test_spec_errors_are_one_line(text, words):
    with pytest.raises(ImpairmentError, match=words) as info:
        parse_impairment(text)
    assert "\n" not in str(info.value)


def test_impossible_loss_and_burst_pair_is_refused():
    with pytest.raises(ImpairmentError, match="impossible"):
        ImpairmentModel(parse_impairment("loss=90%,burst=1.05"))


def test_same_seed_same_verdicts_other_seed_others():
    spec = ImpairmentSpec(loss=0.05, burst=3, jitter_ms=20, reorder=0.01, dup=0.01, seed=42)
    a, b = verdicts(spec, 5000), verdicts(spec, 5000)
    assert a == b
    c = verdicts(ImpairmentSpec(**{**spec.to_dict(), "seed": 43}), 5000)
    assert [v.dropped for v in a] != [v.dropped for v in c]


def _runs(dropped: np.ndarray) -> np.ndarray:
    """Lengths of the runs of True."""
    d = np.concatenate([[0], dropped.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(d))
    return edges[1::2] - edges[::2]


@pytest.mark.parametrize("loss, burst", [(0.05, 1), (0.10, 1), (0.05, 3), (0.10, 4)])
def test_loss_rate_and_burst_length_on_a_long_sequence(loss, burst):
    n = 200_000
    v = verdicts(ImpairmentSpec(loss=loss, burst=burst, seed=5), n)
    dropped = np.array([x.dropped for x in v])
    assert dropped.mean() == pytest.approx(loss, rel=0.08)
    runs = _runs(dropped)
    want = burst if burst > 1 else 1 / (1 - loss)  # independent losses: geometric runs
    assert runs.mean() == pytest.approx(want, rel=0.08)


def test_jitter_reorder_and_dup_statistics():
    n = 100_000
    v = verdicts(ImpairmentSpec(jitter_ms=20, reorder=0.02, dup=0.03, seed=9), n)
    plain = np.array([x.delays_ms[0] for x in v if not x.reordered])
    assert plain.min() >= 0 and plain.max() <= 40 and plain.mean() == pytest.approx(20, rel=0.03)
    assert np.mean([x.reordered for x in v]) == pytest.approx(0.02, rel=0.1)
    assert np.mean([len(x.delays_ms) == 2 for x in v]) == pytest.approx(0.03, rel=0.1)
    assert not any(x.dropped for x in v)


def test_delay_line_releases_in_due_order_and_drops():
    got, lock = [], threading.Lock()

    def sink(data: bytes) -> None:
        with lock:
            got.append((time.monotonic(), data))

    spec = ImpairmentSpec(loss=0.2, jitter_ms=15, seed=3)
    line = DelayLine(spec, sink)
    expected = verdicts(spec, 60)
    t_sent = {}
    for k in range(60):  # the line stamps its own send time somewhere in [before, after]
        before = time.monotonic()
        line.send(k.to_bytes(2, "big"))
        t_sent[k] = (before, time.monotonic())
    deadline = time.monotonic() + 10
    survivors = [k for k, v in enumerate(expected) if not v.dropped]
    while time.monotonic() < deadline:
        with lock:
            if len(got) == len(survivors):
                break
        time.sleep(0.01)
    line.close()
    seqs = [int.from_bytes(d, "big") for _, d in got]
    assert sorted(seqs) == survivors  # exactly the model's survivors, each once
    for t, d in got:  # none released before its delay
        k = int.from_bytes(d, "big")
        assert t - t_sent[k][0] >= expected[k].delays_ms[0] / 1000 - 1e-3

    def due(k: int, i: int) -> float:  # earliest (i = 0) or latest (i = 1) due time the line can have given k
        return t_sent[k][i] + expected[k].delays_ms[0] / 1000

    # released by due time (a busy machine may stretch a send, so compare what each due time can be) ...
    assert all(due(a, 0) <= due(b, 1) for a, b in zip(seqs, seqs[1:])), seqs
    assert seqs != survivors  # ... and jitter lets messages overtake each other
    assert line.report()["dropped"] == 60 - len(survivors)


def test_delay_line_without_delay_keeps_the_order():
    got = []
    line = DelayLine(ImpairmentSpec(loss=0.3, seed=1), got.append)
    for k in range(200):
        line.send(bytes([k % 256]))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(got) < 200 - line.stats.dropped:
        time.sleep(0.01)
    line.close()
    assert [b[0] for b in got] == sorted(b[0] for b in got)


@pytest.mark.parametrize("argv", [
    ["send", "--connect", "tcp://127.0.0.1:6000", "--impair", "loss=5x"],
    ["bench", "e2e", "--impair", "lose=5%"],
    ["call", "--impair", "jitter=20ms,jitter=10ms"],
])
def test_a_bad_impair_spec_is_a_one_line_usage_error(argv, tmp_path):
    if argv[0] == "call":
        argv = [*argv, "--out", str(tmp_path / "call")]
    r = subprocess.run([sys.executable, "-m", "avcall.cli", *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "impairment spec" in lines[0] and "Traceback" not in r.stderr, r.stderr
