"""`pipeline bench memory` prints AMRB's time floor beside the measured AMRB/BPTT ratio."""

import pytest

from rmaat.benchmarks.memory_bench import format_table, summarise


def _row(mode, step_cpu, **extra):
    return {"segments": 8, "mode": mode, "peak_bytes": 1000 if mode == "bptt" else 200, "step_seconds": step_cpu,
            "step_cpu_seconds": step_cpu, "method": "live_tensor_bytes", "device": "cpu", **extra}


def test_floor_is_one_plus_the_forward_share_of_the_replayed_segments():
    rows = [_row("bptt", 2.0, forward_seconds=0.9, forward_cpu_seconds=0.8), _row("amrb", 3.0)]
    (entry,) = summarise(rows)["per_segments"]
    assert entry["forward_share"] == pytest.approx(0.4)                  # 0.8 s of a 2.0 s step
    assert entry["floor"] == pytest.approx(1 + 0.4 * 7 / 8)              # 7 of 8 segments re-run
    assert entry["cpu_time_ratio"] == pytest.approx(1.5)
    assert format_table(rows).splitlines()[5].split()[-2:] == ["1.35", "0.40"]  # floor, forward share


def test_no_floor_without_a_forward_measurement():
    (entry,) = summarise([_row("bptt", 2.0), _row("amrb", 3.0)])["per_segments"]
    assert "floor" not in entry
