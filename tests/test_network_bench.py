"""Concealment under injected loss with real processes, and the network bench's in-process half."""
from __future__ import annotations

import json


from runtime.config import PlayoutConfig
from runtime.telemetry import CONCEALED
from runtime_support import presented, receiver_config, sender_config
from transport.impair import ImpairmentModel, parse_impairment

UP = 60.0


def test_concealment_flags_where_the_impaired_sender_dropped_frames(tiny_models, pattern_hmc, workers, tmp_path):
    """A sender with ``--impair loss=...`` (seeded): the receiver's report flags CONCEALED exactly on sequence
    numbers that never arrived (dropped by the impairment, or late), never on a frame it received."""
    spec = "loss=15%,seed=3"
    rc = receiver_config(tiny_models, tmp_path, playout=PlayoutConfig(min_delay_ms=30, max_delay_ms=60))
    rx = workers("rx", rc, tmp_path)
    st = rx.wait_status(lambda s: bool(s.get("endpoint")), UP)
    tx = workers("tx", sender_config(tiny_models, pattern_hmc, tmp_path, st, seconds=4.0, impair=spec), tmp_path)
    rx.wait_status(lambda s: presented(s) >= 30, UP)
    assert tx.wait(UP) == 0
    rx.stop()
    rep = json.loads((tmp_path / "rx.report.json").read_text())
    txr = json.loads((tmp_path / "tx.report.json").read_text())
    cols = rep["frames_columns"]
    seq_i, flag_i = cols.index("seq"), cols.index("flags")
    rows = rep["frames"]
    concealed = {r[seq_i] for r in rows if r[flag_i] & CONCEALED}
    received = {r[seq_i] for r in rows if not r[flag_i] & CONCEALED}
    model = ImpairmentModel(parse_impairment(spec))
    dropped = {k for k in range(txr["frames_sent"]) if model.next().dropped}
    assert txr["impairment"]["dropped"] == len(dropped) > 0  # the sender applied the seeded model
    assert concealed and concealed.isdisjoint(received)
    # Past the last frame received, nothing arrived in time: sent after the receiver stopped, or in flight then.
    after_end = set(range(max(received) + 1, txr["frames_sent"] + rep["playout"]["max_concealed"]))
    never_arrived = dropped | set(rep["playout"]["late_seqs"]) | after_end
    if not rep["dropped"]["bad_messages"]:
        # only where frames never arrived in time (dropped, late, or after the sender stopped)
        assert concealed <= never_arrived
    else:  # a coded stream also refuses the frames after a loss until its next intra frame (counted bad)
        assert min(never_arrived & concealed, default=None) is not None
    inside = {s for s in dropped if min(received) < s < max(received)}
    assert len(concealed & inside) >= len(inside) // 2  # most losses inside the stream were concealed
    assert rep["playout"]["concealed"] >= len(concealed) and rep["latency"]["concealed"] == len(concealed)
    seqs = [r[seq_i] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # presented in sequence order, each once


def test_network_options_reach_the_configs(tmp_path):
    from avcall.call_cmds import call_config, receive_config, send_config
    from avcall.cli import build_parser
    from runtime.bench import E2EBenchConfig

    parse = lambda *a: build_parser().parse_args([str(x) for x in a])  # noqa: E731
    cfg = send_config(parse("send", "--connect", "tcp://127.0.0.1:6000", "--impair", "loss=5%,jitter=20ms,seed=3"))
    assert cfg.impair == "loss=5%,jitter=20ms,seed=3"
    rc = receive_config(parse("receive", "--bind", "tcp://127.0.0.1:*", "--no-conceal", "--jitter-max-ms", "0",
                              "--max-concealed", "2"))
    assert (rc.playout.conceal, rc.playout.enabled, rc.playout.max_concealed) == (False, False, 2)
    assert receive_config(parse("receive", "--bind", "tcp://127.0.0.1:*")).playout == PlayoutConfig()
    cc = call_config(parse("call", "--out", tmp_path / "c", "--impair", "loss=1%", "--jitter-min-ms", "10"))
    assert cc.impair == "loss=1%" and cc.playout.min_delay_ms == 10
    args = parse("bench", "e2e", "--impair", "jitter=10ms", "--no-conceal")
    assert (args.impair, args.conceal) == ("jitter=10ms", False)
    assert E2EBenchConfig(impair=args.impair).impair == "jitter=10ms"
    from avcall.call_cmds import bench_e2e_config

    assert bench_e2e_config(parse("bench", "e2e", "--plain")).codec.coded is False
    assert bench_e2e_config(parse("bench", "e2e")).codec.coded is True
