"""The receiver's jitter buffer and concealment (runtime.playout), driven with an injected clock."""
from __future__ import annotations

import numpy as np
import pytest

from avcore.errors import UsageError
from encoder.latex import apply_schedule
from runtime.playout import PlayoutBuffer, PlayoutConfig
from transport.impair import ImpairmentModel, ImpairmentSpec

P = 33_333_333  # frame period (ns)
BASE = 5_000_000  # fixed part of capture -> arrival


def code(seq: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth, seq-dependent code and gaze (so extrapolation has something to follow)."""
    t = seq / 30.0
    z = np.sin(t * np.arange(1, 9, dtype=np.float32) * 0.7).astype(np.float32)
    return z, np.array([[np.sin(t), np.cos(t)], [0.1 * t, -0.1 * t]], np.float32)


def drive(arrivals: list[tuple[int, int]], cfg: PlayoutConfig, end_ns: int, step_ns: int = 1_000_000,
          capture: dict[int, int] | None = None):
    """Feed (arrival_ns, seq) events into a buffer, popping every ``step_ns`` (the injected clock) -> outputs
    up to the last sequence number sent (after it the buffer goes on concealing the stream's end). Frame
    ``s`` was captured at ``s * P``, or at ``capture[s]``."""
    pb = PlayoutBuffer(cfg)
    events = sorted(arrivals)
    outs, k, now = [], 0, 0
    while now <= end_ns:
        while k < len(events) and events[k][0] <= now:
            t, s = events[k]
            z, g = code(s)
            pb.push(s, s * P if capture is None else capture[s], t, z, g)
            k += 1
        o = pb.pop(now)
        if o is not None:
            outs.append(o)
        now += step_ns
    last = max(s for _, s in arrivals)
    return pb, [o for o in outs if o.seq <= last]


def test_in_order_and_exactly_the_missing_frames_are_concealed():
    """Jittered, reordered, duplicated arrivals with some frames never arriving: every slot is output once, in
    sequence order, and the concealed ones are exactly the missing sequence numbers."""
    rng = np.random.default_rng(3)
    n = 200
    missing = {17, 18, 40, 41, 42, 90, 150}
    arrivals = []
    for s in range(n):
        if s in missing:
            continue
        t = s * P + BASE + int(rng.uniform(0, 60e6))  # up to 60 ms of jitter: frames overtake each other
        arrivals.append((t, s))
        if s % 23 == 0:
            arrivals.append((t + 7_000_000, s))  # a duplicate
    assert any(a[1] > b[1] for a, b in zip(arrivals, sorted(arrivals)))  # arrival order is not seq order
    pb, outs = drive(arrivals, PlayoutConfig(max_delay_ms=70, min_delay_ms=70), n * P + 200_000_000)
    seqs = [o.seq for o in outs]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))  # never out of order, never twice
    assert seqs == list(range(n))  # a 1 ms clock releases every slot on its own
    assert {o.seq for o in outs if o.concealed} == missing
    assert sum(o.concealed for o in outs) == len(missing) and pb.counts["duplicates"] == n // 23 + 1
    assert pb.counts["late"] == 0  # a 70 ms delay covers 60 ms of jitter


def test_late_frame_is_dropped_never_shown_and_corrects_the_history():
    cfg = PlayoutConfig(max_delay_ms=10, min_delay_ms=10)
    arrivals = [(s * P + BASE, s) for s in range(20) if s != 10]
    arrivals.append((12 * P + BASE, 10))  # two frames after its slot
    pb, outs = drive(arrivals, cfg, 25 * P)
    seqs = [o.seq for o in outs]
    assert seqs == list(range(20))
    assert [o.seq for o in outs if o.concealed] == [10]
    assert pb.counts["late"] == 1
    # the history now holds the true frame 10: the concealed value was replaced
    hist = {s: z for s, z, _ in pb._shown}
    assert 10 not in hist or np.array_equal(hist[10], code(10)[0])


def test_concealment_rebuilds_latex_skipped_frames_exactly():
    """A LATEX-skip sender leaves skipped frames unsent; the receiver's extrapolation must equal the sender's
    (encoder.latex.apply_schedule over the values it had sent)."""
    n = 60
    key = np.ones(n, bool)
    key[[7, 8, 20, 33, 34, 50]] = False  # at most 2 in a row, after the first T = 5
    values = np.stack([code(s)[0] for s in range(n)])
    gazes = np.stack([code(s)[1] for s in range(n)])
    want_z = apply_schedule(key, values, 5)
    want_g = apply_schedule(key, gazes, 5)
    pb = PlayoutBuffer(PlayoutConfig(max_delay_ms=20, min_delay_ms=20, method="latex", history=5, damping=1.0,
                                     interpolate=False))
    outs = []
    for s in range(n):
        if key[s]:
            pb.push(s, s * P, s * P + BASE, values[s], gazes[s])
        for now in range(s * P, (s + 1) * P, 2_000_000):
            o = pb.pop(now)
            if o is not None:
                outs.append(o)
    got = {o.seq: o for o in outs}
    for s in np.flatnonzero(~key):
        assert got[s].concealed
        np.testing.assert_allclose(got[s].z, want_z[s], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[s].gaze, want_g[s], rtol=0, atol=1e-6)


def test_run_bound_then_hold_and_no_concealment_when_off():
    arrivals = [(s * P + BASE, s) for s in range(40) if not 10 <= s < 25]
    cfg = PlayoutConfig(max_delay_ms=5, min_delay_ms=5, max_concealed=4)
    pb, outs = drive(arrivals, cfg, 45 * P)
    assert [o.seq for o in outs if o.concealed] == [10, 11, 12, 13]
    assert pb.counts["held"] == 11
    assert [o.seq for o in outs if not o.concealed] == [s for s in range(40) if not 10 <= s < 25]
    pb, outs = drive(arrivals, PlayoutConfig(max_delay_ms=5, min_delay_ms=5, conceal=False), 45 * P)
    assert not any(o.concealed for o in outs) and pb.counts["held"] == 15


def test_target_delay_follows_the_jitter_and_is_bounded():
    rng = np.random.default_rng(0)
    arr = [(s * P + BASE + int(rng.uniform(0, 40e6)), s) for s in range(300)]
    pb, outs = drive(arr, PlayoutConfig(max_delay_ms=100, jitter_percentile=95), 310 * P)
    assert 30 <= pb.target_delay_ms <= 40  # p95 of U(0, 40 ms)
    pb, _ = drive(arr, PlayoutConfig(max_delay_ms=20), 310 * P)
    assert pb.target_delay_ms == 20  # bounded
    assert pb.counts["late"] > 0  # what the bound leaves out arrives after its slot: concealed, not shown


def test_sender_restart_starts_over():
    arrivals = [(s * P + BASE, s) for s in range(30)]
    arrivals += [((40 + s) * P + BASE, s) for s in range(20)]  # seq back to 0, capture times newer
    pb = PlayoutBuffer(PlayoutConfig(max_delay_ms=5, min_delay_ms=5))
    outs = []
    for t, s in sorted(arrivals):
        pb.push(s, t - BASE, t, *code(s))
        o = pb.pop(t + 6_000_000)
        if o is not None:
            outs.append(o)
    assert pb.counts["resets"] == 1 and pb.counts["late"] == 0
    assert [o.seq for o in outs][-20:] == list(range(20))


def test_a_stalled_sender_is_late_not_restarted():
    """The sender stalls 200 ms after frame 9: slots 10.. are concealed at the estimated period, then frames
    10.. arrive captured later than those slots were estimated. They are late (never shown twice), not a
    sender restart that would present a concealed sequence number again."""
    stall = 200_000_000
    capture = {s: s * P + (stall if s >= 10 else 0) for s in range(40)}
    arrivals = [(c + BASE, s) for s, c in capture.items()]
    pb, outs = drive(arrivals, PlayoutConfig(max_delay_ms=5, min_delay_ms=5, max_concealed=4), capture[39] + 50_000_000,
                     capture=capture)
    seqs = [o.seq for o in outs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert pb.counts["resets"] == 0 and pb.counts["late"] == 4
    assert [o.seq for o in outs if o.concealed] == [10, 11, 12, 13]
    assert [o.seq for o in outs if not o.concealed] == [s for s in range(40) if not 10 <= s < 14]


def test_impaired_stream_through_the_buffer_stays_in_order():
    """The sender's impairment model and the receiver's buffer together (the network bench's in-process path)."""
    model = ImpairmentModel(ImpairmentSpec(loss=0.05, jitter_ms=20, reorder=0.02, dup=0.02, seed=11))
    arrivals, sent = [], set()
    for s in range(600):
        v = model.next()
        for d in v.delays_ms:
            arrivals.append((s * P + BASE + int(d * 1e6), s))
            sent.add(s)
    pb, outs = drive(arrivals, PlayoutConfig(max_delay_ms=60), 610 * P)
    seqs = [o.seq for o in outs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    concealed = {o.seq for o in outs if o.concealed}
    assert set(range(600)) - sent <= concealed | {s for s in range(600) if s not in seqs}
    assert concealed.isdisjoint({o.seq for o in outs if not o.concealed})


def test_config_checks():
    with pytest.raises(UsageError, match="min_delay_ms"):
        PlayoutConfig(min_delay_ms=50, max_delay_ms=20)
    with pytest.raises(UsageError, match="max_concealed"):
        PlayoutConfig(max_concealed=-1)
    assert not PlayoutConfig(max_delay_ms=0).enabled


def _noisy_walks(rng, n_seq: int, length: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes like an encoder's: a smooth random walk (the expression) plus white noise (the encoder's frame-to-frame
    error). (z (N, dim), gaze (N, 2, 2), starts (N,) bool)."""
    zs, gs, starts = [], [], []
    for _ in range(n_seq):
        walk = np.cumsum(rng.normal(0, 0.05, (length, dim + 4)), 0)
        x = walk + rng.normal(0, 0.2, walk.shape)
        zs.append(x[:, :dim])
        gs.append(x[:, dim:].reshape(length, 2, 2))
        st = np.zeros(length, bool)
        st[0] = True
        starts.append(st)
    return np.concatenate(zs), np.concatenate(gs), np.concatenate(starts)


def test_fitted_predictor_beats_holding_on_noisy_codes_and_is_what_the_buffer_shows():
    """The concealment weights fitted on training sequences (encoder.codec_fit.fit_concealment) predict held-out
    noisy codes better than repeating the last value, and the buffer conceals with exactly that prediction."""
    from encoder.codec_fit import fit_concealment
    from runtime.playout import LinearPredictor, predictor_from_codecs

    rng = np.random.default_rng(5)
    dim = 6
    z, g, starts = _noisy_walks(rng, 20, 120, dim)
    entry = fit_concealment(z, g, starts, np.ones(dim + 4), order=4, steps=3)
    pred = LinearPredictor.from_dict(entry)
    assert pred.order == 4 and len(pred.z) == 3
    assert sum(entry["z"][0]) < 0  # noise dominates the steps: the prediction leans back towards the recent mean
    zt, gt, _ = _noisy_walks(np.random.default_rng(6), 5, 120, dim)
    for k in (1, 2, 3):
        err_pred = err_hold = 0.0
        for t in range(10, 120):
            hist = [(zt[t - k - j], gt[t - k - j]) for j in range(4)]
            pz, _ = pred.predict(hist, k)
            err_pred += float(((pz - zt[t]) ** 2).sum())
            err_hold += float(((zt[t - k] - zt[t]) ** 2).sum())
        assert err_pred < 0.97 * err_hold, (k, err_pred, err_hold)

    class Tables:  # what predictor_from_codecs reads of codec tables: their meta
        meta = {"conceal": entry}

    assert predictor_from_codecs({"x": Tables()}) == pred
    pb = PlayoutBuffer(PlayoutConfig(max_delay_ms=5, min_delay_ms=5, interpolate=False), pred)
    for s in range(10):
        pb.push(s, s * P, s * P + BASE, zt[s], gt[s])
    outs = [o for now in range(0, 13 * P, 1_000_000) if (o := pb.pop(now)) is not None]
    conc = [o for o in outs if o.concealed]
    assert [o.seq for o in conc] == [10, 11, 12]
    hist = [(zt[9 - j], gt[9 - j]) for j in range(4)]
    for k, o in enumerate(conc, 1):
        wz, wg = pred.predict(hist, k)
        np.testing.assert_allclose(o.z, wz, atol=1e-6)
        np.testing.assert_allclose(o.gaze, wg, atol=1e-6)


def test_without_weights_a_missing_frame_holds_the_last_value():
    pb, outs = drive([(s * P + BASE, s) for s in range(20) if s != 10],
                     PlayoutConfig(max_delay_ms=5, min_delay_ms=5, interpolate=False), 22 * P)
    (o,) = [o for o in outs if o.concealed]
    assert o.seq == 10 and np.array_equal(o.z, code(9)[0])


def test_a_buffered_later_frame_is_interpolated_towards():
    """Frames 10 and 11 lost, 12 already in the buffer when their slots come (70 ms target delay): they lie on the
    line from frame 9 to frame 12."""
    pb, outs = drive([(s * P + BASE, s) for s in range(30) if s not in (10, 11)],
                     PlayoutConfig(max_delay_ms=70, min_delay_ms=70), 32 * P)
    got = {o.seq: o for o in outs}
    z9, z12 = code(9)[0], code(12)[0]
    np.testing.assert_allclose(got[10].z, z9 + (z12 - z9) / 3, atol=1e-6)
    np.testing.assert_allclose(got[11].z, z9 + 2 * (z12 - z9) / 3, atol=1e-6)
    assert got[10].concealed and got[11].concealed and pb.counts["interpolated"] == 2
    pb, outs = drive([(s * P + BASE, s) for s in range(30) if s not in (10, 11)],
                     PlayoutConfig(max_delay_ms=70, min_delay_ms=70, interpolate=False), 32 * P)
    assert pb.counts["interpolated"] == 0 and pb.counts["concealed"] == 2


def test_malformed_weights_are_refused():
    from runtime.playout import LinearPredictor

    with pytest.raises(ValueError):
        LinearPredictor.from_dict({"z": [[0.1, 0.2]], "gaze": [[0.1]]})
    with pytest.raises(ValueError):
        LinearPredictor.from_dict({"z": [[float("nan")]], "gaze": [[0.1]]})
    with pytest.raises(ValueError):
        LinearPredictor.from_dict({"z": "x"})
