"""StreamStats sequence counters: loss, late (reordered) frames, duplicates and sender restarts."""
from __future__ import annotations

import json

import pytest

from transport.stats import StreamStats

FRAME_NS = 33_333_333
T0 = 10**12


def feed(stats: StreamStats, seqs, *, stream: str = "alice", capture=lambda seq: T0 + seq * FRAME_NS, **kw) -> None:
    for seq in seqs:
        stats.record_frame(stream, seq, 600, capture_ns=None if capture is None else capture(seq), **kw)


def counters(stats: StreamStats) -> dict:
    snap = stats.snapshot()
    return {k: snap[k] for k in ("lost", "reordered", "duplicates", "restarts", "skipped")}


def test_a_swapped_pair_is_reordered_not_lost_nor_a_restart():
    stats = StreamStats()
    feed(stats, [5, 7, 6, 8])
    assert counters(stats) == {"lost": 0, "reordered": 1, "duplicates": 0, "restarts": 0, "skipped": 0}
    assert stats.snapshot()["streams"]["alice"]["last_seq"] == 8  # the late frame did not move the stream back
    json.dumps(stats.snapshot())


def test_late_frames_within_the_window_and_a_gap_that_stays_lost():
    stats = StreamStats()
    feed(stats, [0, 1, 4, 2, 6, 7])  # 3 and 5 never come; 2 comes late
    assert counters(stats) == {"lost": 2, "reordered": 1, "duplicates": 0, "restarts": 0, "skipped": 0}
    feed(stats, [5])  # late after all, two frames behind the newest
    assert counters(stats) == {"lost": 1, "reordered": 2, "duplicates": 0, "restarts": 0, "skipped": 0}
    w = StreamStats.MAX_REORDER
    feed(stats, [8 + w, 8])  # 8 .. 7 + w lost; 8 arrives exactly MAX_REORDER behind the newest: still late
    assert counters(stats) == {"lost": 1 + w - 1, "reordered": 3, "duplicates": 0, "restarts": 0, "skipped": 0}


def test_a_frame_older_than_the_reorder_window_is_a_restart():
    stats = StreamStats()
    w = StreamStats.MAX_REORDER
    feed(stats, [0, w + 2, 0])  # w + 2 behind the newest
    assert stats.restarts == 1 and stats.reordered == 0
    stats = StreamStats()
    feed(stats, [0, w + 2, 1])  # 1 was lost, but lies w + 1 behind the newest: outside the window
    assert stats.restarts == 1 and stats.reordered == 0 and stats.lost == w + 1


def test_a_sender_restart_is_a_restart_even_within_the_window():
    stats = StreamStats()
    feed(stats, [0, 1, 2, 3, 5])  # 4 lost
    stats.record_frame("alice", 4, 600, capture_ns=T0 + 50 * FRAME_NS)  # seq back, captured after the newest: restarted
    assert counters(stats) == {"lost": 1, "reordered": 0, "duplicates": 0, "restarts": 1, "skipped": 0}
    stats.record_frame("alice", 5, 600, capture_ns=T0 + 51 * FRAME_NS)  # the new run goes on from there
    stats.record_frame("alice", 3, 600, capture_ns=T0 + 49 * FRAME_NS)  # the new run's frame before its first: late
    assert (stats.lost, stats.reordered, stats.restarts) == (1, 1, 1)
    stats.record_frame("alice", 2, 600, capture_ns=T0 + 60 * FRAME_NS)  # back again, newer than all: another restart
    assert (stats.lost, stats.reordered, stats.restarts) == (1, 1, 2)


def test_without_capture_times_a_backwards_seq_is_a_restart_as_before():
    stats = StreamStats()
    feed(stats, [5, 7, 6, 8], capture=None)  # 6 moves the stream back, so 8 opens a gap again
    assert counters(stats) == {"lost": 2, "reordered": 0, "duplicates": 0, "restarts": 1, "skipped": 0}


def test_duplicates_stay_duplicates():
    stats = StreamStats()
    feed(stats, [0, 1, 1, 2])  # the newest frame repeated
    assert counters(stats) == {"lost": 0, "reordered": 0, "duplicates": 1, "restarts": 0, "skipped": 0}
    feed(stats, [4, 3, 3, 1])  # 3 late once (reordered), then again, then an old frame replayed
    assert counters(stats) == {"lost": 0, "reordered": 1, "duplicates": 3, "restarts": 0, "skipped": 0}


def test_lost_never_goes_negative_and_is_counted_per_stream():
    stats = StreamStats()
    feed(stats, [0, 2], stream="alice")  # alice lost 1
    feed(stats, [0, 1, 3, 2], stream="bob")  # bob's 2 was late
    feed(stats, [1, 1, 0], stream="alice")  # alice's late 1, then replays: lost back to 0, never below
    assert counters(stats) == {"lost": 0, "reordered": 2, "duplicates": 2, "restarts": 0, "skipped": 0}


def test_frames_skipped_on_purpose_are_not_late_when_they_come():
    stats = StreamStats()
    feed(stats, [0])
    stats.record_frame("alice", 4, 600, capture_ns=T0 + 4 * FRAME_NS, skipped=2)  # 1 lost, 2 and 3 skipped
    assert (stats.lost, stats.skipped) == (1, 2)
    feed(stats, [1])
    assert (stats.lost, stats.reordered) == (0, 1)
    feed(stats, [3])  # a skipped frame is never sent; if one comes anyway it is late, not a loss to take back
    assert (stats.lost, stats.skipped, stats.reordered, stats.duplicates) == (0, 2, 2, 0)


@pytest.mark.parametrize("jump", [StreamStats.MAX_SEQ_JUMP + 2, 2**64 - 1 - 5])
def test_huge_forward_jumps_are_still_restarts(jump):
    stats = StreamStats()
    feed(stats, [5, 5 + jump])
    assert stats.restarts == 1 and stats.lost == 0
