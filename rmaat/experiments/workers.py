"""Run an experiment's jobs in child processes that stop when told.

Each job (a grid point at one seed, every stage of it) runs in its own interpreter,
``python -m rmaat.experiments.workers JOB_FILE ERROR_FILE``, started in a session of its own so
that the terminal's Ctrl-C reaches the runner alone. The runner is the one place that decides:

- **first SIGINT or SIGTERM**: no new job starts; every running worker gets one SIGTERM, which
  its trainer answers by finishing the current step and saving ``last.pt``; the runner waits for
  them and exits 130 (SIGINT) or 143 (SIGTERM). Running the command again resumes every run.
- **second signal**: every worker gets a second SIGTERM, on which a trainer stops at once
  without saving (as ``pipeline train`` does on a second Ctrl-C; Python unwinds, so atomic
  writes leave no temp file); a worker still alive after :data:`KILL_AFTER_S` is killed.
- **the runner killed outright** (``kill -9``): each worker asked the kernel for a signal when
  its parent dies (``PR_SET_PDEATHSIG``), on which it checkpoints and stops as on a first
  signal, so none trains on as an orphan beside a re-run.

Outside the trainer's step loop (data loading, a final evaluation) a worker turns SIGTERM into
``KeyboardInterrupt``, so it unwinds and exits rather than dying mid-write.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds a worker gets after the second signal before it is killed.
KILL_AFTER_S = 5.0
#: How often the runner looks at its workers (seconds).
POLL_S = 0.1
#: Exit status of a worker whose trainer stopped on a signal (checkpoint saved).
STOPPED = 3
_PR_SET_PDEATHSIG = 1


@dataclass
class Outcome:
    """What became of one job: ``done``, ``failed`` (with ``error``) or ``stopped``."""

    job: Any
    status: str
    error: str = ""
    seconds: float = 0.0


@dataclass
class _Running:
    job: Any
    process: subprocess.Popen
    error_file: Path
    started: float = field(default_factory=time.perf_counter)


class StopRequests:
    """Counts SIGINT/SIGTERM received by the runner while installed (``with StopRequests() as s``)."""

    def __init__(self) -> None:
        self.count = 0
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        self.signal = self.signal or signum

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + (self.signal or signal.SIGINT)

    def __enter__(self) -> StopRequests:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_jobs(jobs: list[Any], parallel: int, stop: StopRequests,
             on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    """Run ``jobs``, ``parallel`` at a time, each in a worker process; report each outcome as it
    comes. Returns every outcome; jobs never started (after a stop request) are not in it."""
    outcomes: list[Outcome] = []
    pending = list(jobs)
    running: list[_Running] = []
    forwarded = 0  # SIGTERMs sent to the workers so far
    kill_at: float | None = None
    with tempfile.TemporaryDirectory(prefix="rmaat-jobs-") as tmp:
        try:
            while running or (pending and not stop.count):
                while pending and not stop.count and len(running) < parallel:
                    running.append(_start(pending.pop(0), Path(tmp), len(outcomes) + len(running)))
                while forwarded < min(stop.count, 2):  # one SIGTERM per request, at most two
                    forwarded += 1
                    for worker in running:
                        _signal(worker.process, signal.SIGTERM)
                    if forwarded == 2:
                        kill_at = time.monotonic() + KILL_AFTER_S
                if kill_at is not None and time.monotonic() > kill_at:
                    for worker in running:
                        _signal(worker.process, signal.SIGKILL)
                for worker in [w for w in running if w.process.poll() is not None]:
                    running.remove(worker)
                    outcomes.append(_outcome(worker))
                    on_outcome(outcomes[-1])
                if running:
                    time.sleep(POLL_S)
        finally:  # an exception in the runner itself: no worker outlives it
            for worker in running:
                _signal(worker.process, signal.SIGKILL)
                worker.process.wait()
    return outcomes


def _start(job: Any, tmp: Path, index: int) -> _Running:
    job_file, error_file = tmp / f"job{index}.pickle", tmp / f"job{index}.error"
    job_file.write_bytes(pickle.dumps(job))
    log = worker_log(job)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               RMAAT_RUNNER_PID=str(os.getpid()))
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "rmaat.experiments.workers", str(job_file), str(error_file)],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                   start_new_session=True)  # the terminal's Ctrl-C reaches the runner only
    return _Running(job, process, error_file)


def _signal(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is None:
        try:
            process.send_signal(sig)
        except ProcessLookupError:  # exited between poll and kill
            pass


def _outcome(worker: _Running) -> Outcome:
    code = worker.process.returncode
    seconds = time.perf_counter() - worker.started
    if code == 0:
        return Outcome(worker.job, "done", seconds=seconds)
    if code == STOPPED or code in (-signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGINT):
        return Outcome(worker.job, "stopped", seconds=seconds)
    error = worker.error_file.read_text().strip() if worker.error_file.is_file() else ""
    return Outcome(worker.job, "failed", error or f"the worker exited with status {code} (see {worker_log(worker.job)})",
                   seconds)


def worker_log(job: Any) -> Path:
    """``<point>/seed<k>.worker.log``: the worker's own output (the trainers log beside their runs)."""
    base = job.run_dirs[0] if len(job.run_dirs) == 1 else job.run_dirs[0].parent
    return base.parent / f"{base.name}.worker.log"


# ------------------------------------------------------------------------------ the worker side
def _die_with_parent() -> None:
    """Stop as on one SIGTERM when the runner dies; exit now if it is already gone.

    The kernel sends the parent-death signal each time the worker is re-parented, and a runner
    killed with several threads re-parents it once per thread: so the death signal is SIGHUP,
    and only the first one becomes a SIGTERM (a second SIGTERM would abort without saving).
    """
    parent = int(os.environ.get("RMAAT_RUNNER_PID", "0"))
    if not sys.platform.startswith("linux"):
        return
    told = []

    def parent_died(*_: Any) -> None:
        if not told:
            told.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGHUP, parent_died)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGHUP)
    if parent and os.getppid() != parent:  # the runner died before prctl took effect
        raise SystemExit(STOPPED)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def worker_main(argv: Iterator[str] | list[str]) -> int:
    """Run one pickled job; exit 0 (done), :data:`STOPPED` (stopped, checkpoint kept) or 1 (failed,
    the one-line reason in the error file)."""
    job_file, error_file = map(Path, argv)
    signal.signal(signal.SIGTERM, _interrupt)  # the trainer installs its own for the step loop
    _die_with_parent()
    from rmaat.experiments.stages import JobStopped, run_job

    job = pickle.loads(job_file.read_bytes())
    try:
        run_job(job)
    except (JobStopped, KeyboardInterrupt):
        return STOPPED
    except Exception as error:  # noqa: BLE001 - reported to the runner as one line
        message = str(error).splitlines()[0] if str(error) else repr(error)
        error_file.write_text(message + "\n")
        import traceback

        traceback.print_exc()  # the whole story goes to the worker's log
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
