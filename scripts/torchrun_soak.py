"""Launch the two-rank ``torchrun`` training step N times and count the launches that fail.

The shutdown of a ``torchrun`` run is a race between processes, so one launch proves nothing: this
script repeats the CI test's launch (one AMRB step of a tiny RMAAT on a ListOps-shaped file, two
CPU ranks over gloo) and reports every failure with its exit codes and the end of its stderr.

    .venv/bin/python scripts/torchrun_soak.py --launches 50

A launch fails when torchrun exits non-zero or a rank warns that process-group threads outlived
``shutdown_distributed`` (the condition for the abort). Exit status 0 when none failed, 1 otherwise. ``--faulthandler`` sets
``PYTHONFAULTHANDLER=1`` in the ranks, so a rank killed by SIGABRT prints every thread's Python stack.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP = ["--task", "listops", "--device", "cpu", "--no-progress", "--preset", "rmaat", "--backprop", "amrb",
        "--seq-len", "16", "--segments", "2", "--d-model", "16", "--layers", "1",
        "--set", "model.d_ff=32", "--set", "model.n_heads=2", "--max-steps", "1", "--batch-size", "4"]


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_listops(root: Path) -> Path:
    """A ListOps-shaped data directory: 32/8/8 one-operator examples."""
    folder = root / "listops-1000"
    folder.mkdir(parents=True)
    for split, count in (("train", 32), ("val", 8), ("test", 8)):
        lines = ["Source\tTarget"] + [f"[MAX {i % 10} {(7 * i) % 10} ]\t{max(i % 10, (7 * i) % 10)}"
                                      for i in range(count)]
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def launch(data: Path, run_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One ``torchrun --nproc-per-node 2 -m pipelines.cli train`` of one step."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "pipelines.cli", "train",
               *STEP, "--data-dir", str(data), "--run-dir", str(run_dir)]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=50, help="how many launches (default 50)")
    parser.add_argument("--faulthandler", action="store_true", help="Python stacks of every thread on SIGABRT")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    if args.faulthandler:
        env["PYTHONFAULTHANDLER"] = "1"
    failures = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="torchrun-soak-") as tmp:
        data = write_tiny_listops(Path(tmp) / "data")
        for i in range(args.launches):
            done = launch(data, Path(tmp) / f"run{i}", env)
            leaked = "outlived shutdown" in done.stderr  # shutdown_distributed's warning
            if done.returncode != 0 or leaked:
                failures += 1
                print(f"launch {i + 1}: exit {done.returncode}{' (threads outlived shutdown)' if leaked else ''}\n"
                      f"{done.stderr[-4000:]}", flush=True)
            else:
                print(f"launch {i + 1}: ok", flush=True)
    print(f"{failures} failed of {args.launches} launches ({time.perf_counter() - started:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
