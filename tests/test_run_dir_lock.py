"""One trainer per run directory (``R/.lock``, :mod:`retention.lock`), checked with real
``pipeline train`` processes: a second trainer started beside a live one is refused with one
line naming the owner, before it writes or deletes anything in R (plain, ``--resume`` and
``--force`` alike); a lock left by a process killed with SIGKILL does not block the next run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retention.table import packaged_table_path
from test_train_ddp import _write_listops

PACKAGED_TABLE = str(packaged_table_path())  # as the user table: no user table of this machine is read

#: The tiny ListOps model of tests/test_train_ddp.py (a step takes milliseconds).
TINY = ["--task", "listops", "--device", "cpu", "--no-progress", "--preset", "rmaat", "--seq-len", "16",
        "--segments", "2", "--d-model", "16", "--layers", "1", "--set", "model.d_ff=32",
        "--set", "model.n_heads=2", "--batch-size", "4"]
#: An owner that trains until the test kills it, logging and saving every 5 steps.
LONG = ["--max-steps", "100000", "--eval-every", "100000", "--set", "train.log_every=5",
        "--set", "train.save_every=5"]


def _command(data: Path, run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "train", *TINY, "--data-dir", str(data),
            "--run-dir", str(run_dir), *args]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", RMAAT_RETENTION_TABLE=PACKAGED_TABLE)


def _start(data: Path, run_dir: Path, log: Path, *args: str) -> subprocess.Popen:
    """A ``pipeline train`` in the background, stdout and stderr to ``log`` (no pipe to fill)."""
    with open(log, "w") as out:
        return subprocess.Popen(_command(data, run_dir, *args), env=_env(), stdout=out, stderr=subprocess.STDOUT)


def _run(data: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(data, run_dir, *args), env=_env(), capture_output=True, text=True, timeout=120)


def _wait_for(condition, what: str, timeout: float = 120.0, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(30)


def _refusal(output: str, owner_pid: int) -> str:
    """The one error line of a refused trainer; it must name the live owner."""
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in output, output[-3000:]
    assert f"is in use by PID {owner_pid} on host " in lines[0] and "(pipeline train)" in lines[0], lines[0]
    assert "choose another --run-dir" in lines[0], lines[0]
    return lines[0]


def _train_steps(run_dir: Path) -> list[int]:
    text = (run_dir / "metrics.jsonl").read_text()
    return [r["step"] for r in map(json.loads, text.splitlines()) if r["split"] == "train"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_listops(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_two_trainers_started_together_one_is_refused(data, tmp_path):
    run_dir = tmp_path / "R"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    trainers = [_start(data, run_dir, log, *LONG) for log in logs]

    def both_train() -> bool:  # what happened without the lock: one metrics log, every step twice
        steps = _train_steps(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
        return len(steps) != len(set(steps))

    try:
        _wait_for(lambda: any(t.poll() is not None for t in trainers) or both_train(), "either trainer to exit")
        assert not both_train(), f"both trainers write one metrics log: steps {_train_steps(run_dir)}"
        loser = 0 if trainers[0].poll() is not None else 1
        winner = trainers[1 - loser]
        output = logs[loser].read_text()
        assert trainers[loser].returncode == 1, output[-3000:]
        _refusal(output, winner.pid)
        assert winner.poll() is None  # refused while the owner still trains
        _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(_train_steps(run_dir)) >= 2,
                  "the owner's metrics")
    finally:
        for process in trainers:
            _kill(process)
    steps = _train_steps(run_dir)
    assert steps == list(range(5, 5 * len(steps) + 1, 5)), steps  # one run's log


@pytest.fixture(scope="module")
def owner(data, tmp_path_factory):
    """A live trainer of ``R`` that has saved a checkpoint (so a ``--resume`` has one to load)."""
    run_dir = tmp_path_factory.mktemp("owned") / "R"
    process = _start(data, run_dir, run_dir.parent / "owner.log", *LONG)
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "last.pt").is_file() or process.poll() is not None,
                  "the owner's first checkpoint")
        assert process.poll() is None, (run_dir.parent / "owner.log").read_text()[-3000:]
        yield process, run_dir
    finally:
        _kill(process)


@pytest.mark.slow
def test_resume_of_a_run_in_progress_is_refused(data, owner):
    process, run_dir = owner
    # the owner's configuration, so that nothing but the lock could refuse it
    done = _run(data, run_dir, *LONG, "--resume", "--set", "train.stop_after=2")
    _refusal(done.stdout + done.stderr, process.pid)
    assert process.poll() is None, "the owner stopped"


@pytest.mark.slow
def test_force_on_a_run_in_progress_is_refused_and_deletes_nothing(data, owner):
    process, run_dir = owner
    done = _run(data, run_dir, "--max-steps", "2", "--force")
    _refusal(done.stdout + done.stderr, process.pid)
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", ".lock"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / ".lock").read_text())["pid"] == process.pid
    seen = len(_train_steps(run_dir))
    _wait_for(lambda: len(_train_steps(run_dir)) > seen or process.poll() is not None, "the owner to log again")
    assert process.poll() is None, (run_dir.parent / "owner.log").read_text()[-3000:]


@pytest.mark.slow
def test_torchrun_against_a_run_in_progress_is_refused_on_every_rank(data, owner):
    """Rank 0 tries the lock and tells the other ranks: all stop at once, none waits in a barrier."""
    process, run_dir = owner
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    train = _command(data, run_dir, "--max-steps", "2", "--force")[1:]  # "-m pipelines.cli train ..."
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(port), *train]
    done = subprocess.run(command, env=dict(_env(), GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1"),
                          capture_output=True, text=True, timeout=170)
    assert done.returncode != 0
    refusals = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(refusals) == 2 and all(f"is in use by PID {process.pid} on host " in r for r in refusals), \
        done.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.pt").is_file() and process.poll() is None


@pytest.mark.slow
def test_lock_of_a_killed_trainer_does_not_block_the_next(data, tmp_path):
    run_dir = tmp_path / "R"
    process = _start(data, run_dir, tmp_path / "killed.log", *LONG)
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "last.pt").is_file() or process.poll() is not None,
                  "the first trainer's checkpoint")
    finally:
        _kill(process)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert json.loads((run_dir / ".lock").read_text())["pid"] == process.pid  # left behind by the kill
    done = _run(data, run_dir, *LONG, "--resume", "--set", "train.stop_after=1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stopped at step" in done.stdout
    assert not (run_dir / ".lock").exists()  # released (and removed) when the run ended


def test_the_lock_file_is_neither_an_artefact_nor_content(tmp_path):
    """A directory left with only a (dead owner's) ``.lock`` is empty to a new run, and ``--force``
    (clear_run_dir) never deletes a lock file."""
    from rmaat.train.rundir import LOCK_NAME, RUN_ARTEFACTS, check_run_dir, clear_run_dir

    run_dir = tmp_path / "R"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text('{"host": "h", "pid": 1, "command": "pipeline train"}\n')
    check_run_dir(run_dir, resume=False, force=False)  # no "not empty"
    (run_dir / "metrics.jsonl").write_text("")
    clear_run_dir(run_dir)
    assert LOCK_NAME not in RUN_ARTEFACTS and sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
