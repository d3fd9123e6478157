"""Shared fixtures: short neuro_sim protocols (numpy target, cached runs) and torch threading.

Brian2's numpy target needs no compiler (CI stays free of minute-long compiles) but
costs ~1 ms per time step, so the fixtures use short protocols and a 10 ms step and each network
run is shared by every test that only reads it (session scope).
"""

from __future__ import annotations

import pytest

from neuro_sim.protocol import SegmentProtocol


@pytest.fixture(scope="session")
def short_protocol() -> SegmentProtocol:
    """4 segments after a 30 s warm-up: past the spontaneous Ca2+ event (~17 s) of the
    initial state, with x_A recovered (> 0.999) before the first burst."""
    return SegmentProtocol(n_segments=4, warmup_s=30.0)


#: Step for the numpy-target tests: 10 ms halves their cost; the tripartite curve agrees
#: with the default 5 ms to ~1e-4 (test_halving_dt_changes_curve_less_than_1_percent).
TEST_DT_S = 0.01


@pytest.fixture(scope="session")
def tripartite_short(short_protocol):
    """simulate((2, 4)) of the tripartite model on the short protocol (numpy, 10 ms step)."""
    from neuro_sim import simulate

    return simulate(
        (4, 2), "tripartite", protocol=short_protocol, codegen="numpy", dt_s=TEST_DT_S, progress=False
    )


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """One torch intra-op thread for a module of tiny-tensor tests: on a 2-core CI machine extra
    threads only add synchronisation (3-4x slower under load). Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread_packaged_table(monkeypatch):
    """One torch thread and the packaged retention table as the user's (no user table of this
    machine is read) for a test that trains in-process; the thread count is restored afterwards."""
    import torch

    from retention.table import packaged_table_path

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
    yield
    torch.set_num_threads(threads)
