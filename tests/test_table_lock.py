"""Concurrent updates of one retention table keep every row: the read-merge-write of
``pipeline simulate --out TABLE`` runs under the table's lock (``.TABLE.lock``,
:mod:`retention.lock`), and a second update waits for the first instead of overwriting it.

Real processes throughout; the simulator is a fake (milliseconds instead of minutes) that
sleeps, as a real simulation takes time between the command's start and its write."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from retention import read_table

HELPER = textwrap.dedent('''
    """Subprocess helper: `cli SLEEP ARGS...`, `hold TABLE [T]`, `update TABLE T TIMEOUT`."""
    import json
    import sys
    import time

    import numpy as np
    import xarray as xr

    import neuro_sim


    def fake_simulate(total_segments=(16,), model="tripartite", *, protocol=None, params=None,
                      codegen="auto", dt_s=None, progress=True, seed=0, sleep_s=0.0):
        """neuro_sim.simulate's output (Contract 1): an exponential LTP curve, after sleep_s."""
        time.sleep(sleep_s)
        if sleep_s:
            print("simulated", flush=True)  # the command's update of the table comes next
        n = max(total_segments)
        seg = np.arange(1, n + 1)
        y = 0.607 * (1 - np.exp(-0.209 * seg)) + np.random.default_rng(seed).normal(0, 0.002, n)
        totals = np.array(sorted(set(total_segments)))
        return xr.Dataset(
            {"ltp_end": ("segment", y, {"units": "1"}),
             "ltp": (("total_segments", "segment"), np.where(seg[None] <= totals[:, None], y[None], np.nan),
                     {"units": "1"})},
            coords={"segment": seg, "total_segments": totals},
            attrs={"model": model, "model_params": json.dumps({"O_G": 0.1}),
                   "protocol": json.dumps({"n_segments": int(n)}), "codegen": "numpy", "dt_s": 1e-3,
                   "brian2_version": "2.9.0", "package_version": "0.1.0", "created": "2026-01-01T00:00:00Z"})


    def table_of(T):
        """The table `pipeline simulate --segments T` builds (before it is written)."""
        from retention.macro_model import fit_macro_model
        from retention.build import build_table

        sim = fake_simulate((T, 16))
        return build_table(sim, fit_macro_model(sim["ltp_end"].values[:16]), [T])


    command, args = sys.argv[1], sys.argv[2:]
    if command == "cli":  # `pipeline simulate ARGS` whose simulation takes SLEEP seconds
        sleep_s = float(args[0])
        neuro_sim.simulate = lambda *a, **k: fake_simulate(*a, sleep_s=sleep_s, **k)
        sys.argv = ["pipeline", "simulate", *args[1:]]
        from pipelines.cli import main

        main()
    elif command == "hold":  # another process's update in progress: hold the lock until a line
        from retention.table import table_lock, write_table  # on stdin, then write row T

        with table_lock(args[0]):
            print("held", flush=True)
            sys.stdin.readline()
            if len(args) > 1:
                write_table(table_of(int(args[1])), args[0])
    elif command == "update":  # update_table(row T) waiting at most TIMEOUT seconds
        from retention.errors import RetentionTableError
        from retention.build import update_table

        try:
            update_table(table_of(int(args[1])), args[0], lock_timeout=float(args[2]))
        except RetentionTableError as error:
            print(f"Error: {error}", flush=True)
            sys.exit(1)
''')


@pytest.fixture
def helper(tmp_path) -> Path:
    path = tmp_path / "helper.py"
    path.write_text(HELPER)
    return path


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _start(helper: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(helper), *args], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def _wait_for_line(process: subprocess.Popen, expected: str) -> None:
    line = process.stdout.readline()
    assert line.strip() == expected, line + process.stderr.read()


def _rows(table: Path) -> list[int]:
    return read_table(table)["total_segments"].values.tolist()


@pytest.mark.slow
def test_two_simulations_into_one_table_keep_both_rows(helper, tmp_path):
    table = tmp_path / "same.nc"
    # started together, both see no table yet; each simulation takes 2 s
    runs = [_start(helper, "cli", "2", "--segments", T, "--out", str(table), "--quiet") for T in ("4", "8")]
    results = [_finish(process) for process in runs]
    for code, output in results:
        assert code == 0, output[-3000:]
    assert _rows(table) == [4, 8]  # the README: rows for other T are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["helper.py", "same.nc"]  # no lock file left


@pytest.mark.slow
def test_an_update_waits_for_the_update_in_progress(helper, tmp_path):
    table = tmp_path / "same.nc"
    holder = _start(helper, "hold", str(table), "4")  # will write row 4, under the lock
    try:
        _wait_for_line(holder, "held")
        update = _start(helper, "cli", "0.1", "--segments", "8", "--out", str(table))
        _wait_for_line(update, "simulated")
        time.sleep(1.0)
        assert update.poll() is None, "the update did not wait for the one in progress"
        holder.stdin.write("go\n")  # the holder writes row 4 and lets go
        holder.stdin.flush()
        code, output = _finish(update)
    finally:
        holder_code, holder_output = _finish(holder)
    assert holder_code == 0, holder_output[-3000:]
    assert code == 0 and f"wrote {table} (total_segments: 4, 8)" in output, output[-3000:]
    assert _rows(table) == [4, 8]


@pytest.mark.slow
def test_an_update_that_cannot_get_the_lock_names_the_holder(helper, tmp_path):
    table = tmp_path / "same.nc"
    holder = _start(helper, "hold", str(table))
    try:
        _wait_for_line(holder, "held")
        code, output = _finish(_start(helper, "update", str(table), "8", "0.5"))
    finally:
        holder.kill()
        holder.communicate()
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in output, output[-3000:]
    assert f"is being updated by PID {holder.pid} on host " in lines[0], lines[0]
    assert "0.5 s" in lines[0], lines[0]
    assert not table.exists()  # nothing written


@pytest.mark.slow
def test_a_killed_holder_does_not_block_the_next_update(helper, tmp_path):
    table = tmp_path / "same.nc"
    holder = _start(helper, "hold", str(table))
    _wait_for_line(holder, "held")
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    assert (tmp_path / ".same.nc.lock").is_file()  # the dead holder's file stays; its lock does not
    code, output = _finish(_start(helper, "update", str(table), "8", "0"))
    assert code == 0, output[-3000:]
    assert _rows(table) == [8] and not (tmp_path / ".same.nc.lock").exists()


def test_a_forked_child_neither_holds_nor_releases_the_lock(tmp_path):
    """DataLoader workers are forked from a lock holder: their copy must not keep the lock alive
    after the holder dies, nor delete the holder's lock file when they exit."""
    from retention.lock import FileLock, read_owner

    path = tmp_path / "x.lock"
    lock = FileLock(path, command="test").acquire()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover (the child)
            held = lock.held
            lock.release()
            os._exit(0 if not held else 3)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert path.is_file() and read_owner(path).pid == os.getpid() and lock.held
    finally:
        lock.release()
    assert not path.exists()
