"""`pipeline experiment run` stops when told, with real processes: Ctrl-C (SIGINT to the process
group, as a terminal sends it), SIGTERM (twice: stop now) and kill -9 of the runner. Every worker
ends within seconds, each started run keeps its checkpoint, no temp file is left, no queued job
starts, and the same command then resumes to the results of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retention.table import packaged_table_path
from test_data_babi import kjv  # noqa: F401  (the corpus fixture)

#: Three runs of a tiny model, long enough (400 steps) to be signalled mid-training.
SLOW_EXPERIMENT = """
name: slow
question: Does the runner stop when told?
task: babi_qa1
metric: test_accuracy
seeds: 1
scales:
  cpu:
    data: {length: 128, segment_length: 64, n_facts: 1, size: 60, seed: 0}
    config: demo/babi_qa1_short
    set: {data.seq_len: 128, model.segments: 2, model.d_model: 16, model.n_heads: 2, model.d_ff: 32,
          model.n_layers: 1, train.max_steps: 400, train.batch_size: 4, train.eval_every: 200,
          train.save_every: 50, train.final_eval_batches: 2, model.retention_table: null}
grid:
  a: {}
  b: {optim.lr: 0.002}
  c: {optim.lr: 0.0005}
"""
STOP_WITHIN_S = 20  # a few seconds of stopping, plus interpreter start-up on a loaded machine


@pytest.fixture
def slow(tmp_path):
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW_EXPERIMENT)
    return path


def _start(experiment: Path, root: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", RMAAT_RETENTION_TABLE=str(packaged_table_path()))
    command = [sys.executable, "-m", "pipelines.cli", "experiment", "run", str(experiment), "--jobs", "2",
               "--root", str(root), "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a shell job has


def _wait_until_training(folder: Path, points: tuple[str, ...], timeout: float = 120) -> None:
    """Until every point's run has written its first checkpoint."""
    deadline = time.monotonic() + timeout
    while not all((folder / p / "seed0" / "checkpoints" / "last.pt").is_file() for p in points):
        assert time.monotonic() < deadline, "the runs never started training"
        time.sleep(0.2)


def _workers_of(runner_pid: int) -> list[int]:
    """Live worker processes started by the runner ``runner_pid`` (their environment names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"RMAAT_RUNNER_PID={runner_pid}".encode() in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def _wait_gone(runner_pid: int, timeout: float = STOP_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout
    while _workers_of(runner_pid):
        assert time.monotonic() < deadline, f"workers still alive: {_workers_of(runner_pid)}"
        time.sleep(0.2)


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def _values(folder: Path) -> dict[str, str]:
    return {r["point"]: r["value"] for r in csv.DictReader(open(folder / "results.csv"))}


def _finish(experiment: Path, root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", RMAAT_RETENTION_TABLE=str(packaged_table_path()))
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "experiment", "run", str(experiment), "--jobs", "2",
                           "--root", str(root), "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_ctrl_c_stops_every_run_with_its_checkpoint_and_a_rerun_resumes_to_the_same_results(
        kjv, slow, tmp_path):  # noqa: F811
    root = tmp_path / "interrupted"
    runner = _start(slow, root)
    folder = root / "slow"
    _wait_until_training(folder, ("a", "b"))
    signalled = time.monotonic()
    os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    output, _ = runner.communicate(timeout=STOP_WITHIN_S)
    assert time.monotonic() - signalled < STOP_WITHIN_S
    assert runner.returncode == 130, output
    assert "run the same command again to resume" in output and "Traceback" not in output
    _wait_gone(runner.pid, timeout=2)
    assert not (folder / "c" / "seed0").exists(), "a queued job started after Ctrl-C"
    for point in ("a", "b"):
        assert (folder / point / "seed0" / "checkpoints" / "last.pt").is_file()
        assert not (folder / point / "seed0" / "summary.json").exists()
    assert _temp_files(root) == []

    again = _finish(slow, root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 already done, 3 to run" in again.stdout
    for point in ("a", "b"):
        assert "resume from checkpoints/last.pt" in (folder / point / "seed0.log").read_text()
    uninterrupted = _finish(slow, tmp_path / "uninterrupted")
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:]
    assert _values(folder) == _values(tmp_path / "uninterrupted" / "slow")


@pytest.mark.slow
def test_two_sigterms_stop_the_runner_and_its_workers_now(kjv, slow, tmp_path):  # noqa: F811
    root = tmp_path / "exp"
    runner = _start(slow, root)
    _wait_until_training(root / "slow", ("a", "b"))
    signalled = time.monotonic()
    runner.send_signal(signal.SIGTERM)  # the runner alone, as a scheduler or `kill PID` does
    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=STOP_WITHIN_S)
    assert runner.returncode == 143, output
    assert time.monotonic() - signalled < STOP_WITHIN_S
    _wait_gone(runner.pid, timeout=2)
    assert _temp_files(root) == [] and "Traceback" not in output


@pytest.mark.slow
def test_workers_of_a_killed_runner_checkpoint_and_exit(kjv, slow, tmp_path):  # noqa: F811
    """kill -9 leaves the runner no chance to act: the kernel's parent-death signal stops each
    worker as a first Ctrl-C would, so none trains on beside a re-run."""
    root = tmp_path / "exp"
    runner = _start(slow, root)
    folder = root / "slow"
    _wait_until_training(folder, ("a", "b"))
    before = {p: (folder / p / "seed0" / "checkpoints" / "last.pt").stat().st_mtime_ns for p in ("a", "b")}
    runner.kill()
    runner.wait()
    _wait_gone(runner.pid)
    for point in ("a", "b"):  # each saved a checkpoint on the way out
        assert (folder / point / "seed0" / "checkpoints" / "last.pt").stat().st_mtime_ns > before[point]
        assert "stopped at step" in (folder / point / "seed0.log").read_text()
    assert _temp_files(root) == []


@pytest.mark.slow
def test_sigterm_during_data_generation_leaves_no_temp_folder(kjv, tmp_path):  # noqa: F811
    """The runner generates an experiment's data before any worker starts: SIGTERM there unwinds
    (the generator's temp folder is removed) and exits 143."""
    experiment = tmp_path / "big.yaml"
    experiment.write_text(SLOW_EXPERIMENT.replace("size: 60", "size: 200000"))
    root = tmp_path / "exp"
    runner = _start(experiment, root)
    data, deadline = root / "slow" / "data", time.monotonic() + 120
    while not (data.is_dir() and any(".tmp" in p.name for p in data.iterdir())):  # the generator's temp folder
        assert time.monotonic() < deadline and runner.poll() is None, "data generation never started"
        time.sleep(0.05)
    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=STOP_WITHIN_S)
    assert runner.returncode == 143, output
    assert "stopped before any run started" in output and "Traceback" not in output
    assert _temp_files(root) == [] and not list(data.iterdir())
