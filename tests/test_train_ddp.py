"""The same `pipeline train` command under `torchrun --nproc-per-node 2` (gloo, CPU) trains with
DistributedDataParallel, AMRB included, and the two replicas end bit-identical."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from rmaat.train.checkpoint import load_checkpoint
from rmaat.train.metrics import read_metrics
from retention.table import packaged_table_path

PACKAGED_TABLE = str(packaged_table_path())  # as the user table: no user table of this machine is read


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_listops(root, n=(32, 8, 8)):
    folder = root / "listops-1000"
    folder.mkdir(parents=True)
    for split, count in zip(("train", "val", "test"), n):
        rows = [f"[MAX {i % 10} {(3 * i) % 10} ]\t{max(i % 10, (3 * i) % 10)}" for i in range(count)]
        (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n" + "\n".join(rows) + "\n")
    return root


def _torchrun_train(*args: str) -> subprocess.CompletedProcess:
    """`pipeline train ARGS` under `torchrun --nproc-per-node 2` on CPU (gloo over loopback)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1",
               RMAAT_RETENTION_TABLE=PACKAGED_TABLE)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "pipelines.cli", "train", "--device", "cpu", "--no-progress", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=170)


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_replicas(tmp_path):
    data = _write_listops(tmp_path / "data")
    run_dir = tmp_path / "run"
    done = _torchrun_train(
        "--task", "listops", "--data-dir", str(data), "--run-dir", str(run_dir),
        "--preset", "rmaat", "--backprop", "amrb",  # AMRB's checkpointed segments under DDP
        "--seq-len", "16", "--segments", "2", "--d-model", "16", "--layers", "1",
        "--set", "model.d_ff=32", "--set", "model.n_heads=2", "--max-steps", "4",
        "--batch-size", "4", "--set", "train.grad_accum=2", "--set", "train.log_every=2",
        "--eval-every", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    digests = summary["replica_param_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1] and summary["replicas_identical"]
    # rank 0 alone wrote: one summary line printed, one line per logged step
    assert done.stdout.count("test accuracy") == 1
    steps = [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"]
    assert steps == [2, 4]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["data_position"] == {"epoch": 0, "index": 16}
    assert torch.isfinite(torch.cat([v.flatten().float() for v in state["model"].values()])).all()


@pytest.mark.slow
def test_lm_under_two_processes_keeps_identical_replicas(tmp_path):
    """The byte LM under torchrun: AMRB replays outside forward, so LMTrainer averages the
    gradients itself (no DDP wrapper); the two replicas must stay bit-identical."""
    data = tmp_path / "text"
    data.mkdir()
    for split, n in (("train", 400), ("val", 60), ("test", 60)):
        (data / f"{split}.txt").write_text("the cat sat on the mat. " * n)
    run_dir = tmp_path / "run"
    done = _torchrun_train(
        "--task", "kjv_lm", "--data-dir", str(data), "--run-dir", str(run_dir), "--preset", "rmaat",
        "--seq-len", "32", "--segments", "2", "--d-model", "16", "--layers", "1",
        "--set", "model.d_ff=32", "--set", "model.n_heads=2", "--set", "model.n_mem=2",
        "--set", "model.dropout=0.1", "--max-steps", "3", "--batch-size", "4",
        "--set", "train.grad_accum=2", "--eval-every", "2", "--set", "train.final_eval_batches=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backprop"] == "amrb" and summary["replicas_identical"]
    assert done.stdout.count("test bits/byte") == 1
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["data_position"] == {"batch": 6}  # 3 steps x 2 micro-batches on each rank


@pytest.mark.slow
def test_every_rank_joins_its_process_group_threads_before_exit(tmp_path):
    """The cause of the shutdown abort (SIGABRT, "terminate called without an active exception",
    ~1 launch in 10): gloo worker threads alive at interpreter exit. ``shutdown_distributed``
    warns when any survive it; the classifier under torchrun (DDP, which holds a reference to the
    group) may leave none. ``scripts/torchrun_soak.py``
    counts the aborts themselves over many launches."""
    data = _write_listops(tmp_path / "data")
    run_dir = tmp_path / "run"
    done = _torchrun_train("--task", "listops", "--data-dir", str(data), "--run-dir", str(run_dir),
                           "--preset", "rmaat", "--seq-len", "16", "--segments", "2", "--d-model", "16",
                           "--layers", "1", "--set", "model.d_ff=32", "--set", "model.n_heads=2",
                           "--max-steps", "1", "--batch-size", "4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "outlived shutdown" not in done.stderr, done.stderr[-3000:]


def test_backend_threads_are_found_by_name():
    """backend_threads reads /proc: a thread named like gloo's worker is listed, others are not."""
    import threading

    from rmaat.train.distributed import backend_threads

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("no /proc on this system")
    release = threading.Event()
    ready = threading.Event()

    def named_worker():
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write("pt_gloo_runloop")
        ready.set()
        release.wait(10)

    before = backend_threads()
    worker = threading.Thread(target=named_worker)
    worker.start()
    try:
        ready.wait(10)
        assert backend_threads() == sorted(before + ["pt_gloo_runloop"])
    finally:
        release.set()
        worker.join()
    assert backend_threads() == before
