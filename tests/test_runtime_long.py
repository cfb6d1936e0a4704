"""Long runs (``pytest -m slow``): latency must not grow over a 60 s call."""
from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_latency_does_not_grow_over_a_60_s_call(tmp_path):
    from runtime.bench import E2EBenchConfig, bench_e2e

    r = bench_e2e(E2EBenchConfig(seconds=60.0, two_way=True, out_dir=str(tmp_path / "b")))  # the embedded default models
    for name, s in r["streams"].items():
        d = s["drift"]
        assert d["last_p99_ms"] <= 1.2 * d["first_p99_ms"], (name, d)
        assert s["dropped"]["lost_in_network"] == 0
    assert all(v <= 150 for v in r["bandwidth_kbps"].values()), r["bandwidth_kbps"]
