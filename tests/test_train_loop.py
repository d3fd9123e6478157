"""`pipeline train` / `pipeline evaluate` end to end on CPU with tiny models (d_model 32, 1 layer).

A tiny RMAAT learns an easy ListOps subset; a run stopped after 5 steps and resumed ends
bit-identical to 10 uninterrupted steps; Ctrl-C saves a checkpoint; every task trains a few
steps on fixtures in its official layout; `pipeline evaluate` reproduces the run's test accuracy.
"""

import json
import os
import random
import signal

import pytest
import torch
from click.testing import CliRunner
from fixtures_data import write_aan, write_cifar, write_fashion_idx, write_imdb

from pipelines.cli import cli
from rmaat.train.checkpoint import load_checkpoint
from rmaat.train.metrics import read_metrics
from rmaat.train.trainer import Trainer
from retention.table import packaged_table_path

PACKAGED_TABLE = str(packaged_table_path())  # as the user table: no user table of this machine is read

#: A model small enough that a CPU step takes milliseconds.
TINY = ["--d-model", "32", "--layers", "1", "--set", "model.d_ff=64", "--set", "model.n_heads=2",
        "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    """One torch thread (tiny ops on a shared 2-core machine run ~10x faster than with two
    contending threads) and no user retention table (use the packaged one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", PACKAGED_TABLE)
    yield
    torch.set_num_threads(threads)


def invoke(*args):
    """Run `pipeline ARGS` in-process; return the click Result."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------------ fixtures (official layouts)
def write_listops_max(root, sizes=(512, 128, 128), seed=0):
    """ListOps TSVs (LRA format) of single [MAX d1 .. dk] expressions, k = 2..6: the label is
    the largest digit, an easy task a tiny model learns in ~100 steps."""
    rng = random.Random(seed)
    folder = root / "listops-1000"
    folder.mkdir(parents=True)
    for split, n in zip(("train", "val", "test"), sizes):
        lines = ["Source\tTarget"]
        for _ in range(n):
            digits = [rng.randrange(10) for _ in range(rng.randint(2, 6))]
            lines.append(f"[MAX {' '.join(map(str, digits))} ]\t{max(digits)}")
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_pathfinder(root):
    """A few generated Pathfinder images in the LRA layout."""
    from rmaat.data.pathfinder import generate_pathfinder

    generate_pathfinder(root, size=40, seed=0, progress=False)
    return root


def _in(writer, **kwargs):
    """Adapt a fixtures_data writer (which returns the task folder) to return the data root."""
    def write(root):
        writer(root, **kwargs)
        return root
    return write


#: Official-layout fixtures per task (the data helper's writers, shared with tests/test_data_*).
WRITERS = {
    "listops": lambda root: write_listops_max(root, (24, 8, 8)),
    "text": _in(write_imdb),
    "retrieval": _in(write_aan),
    "image": _in(write_cifar),
    "pathfinder": write_pathfinder,
    "fashion_mnist": lambda root: write_fashion_idx(root / "fashion-mnist").parent,
}


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
    return write_listops_max(tmp_path_factory.mktemp("listops"))


# -------------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def learned_run(listops_dir, tmp_path_factory):
    """A tiny RMAAT (AMRB, 2 segments of 16 tokens) trained 120 steps on [MAX ...]."""
    run_dir = tmp_path_factory.mktemp("learn") / "run"
    torch.set_num_threads(1)
    result = invoke("train", "--task", "listops", "--data-dir", listops_dir, "--run-dir", run_dir,
                    "--seq-len", 32, "--segments", 2, "--max-steps", 120, "--batch-size", 16, "--lr", 3e-3,
                    "--eval-every", 60, "--set", "train.log_every=10", *TINY)
    assert result.exit_code == 0, result.output
    return run_dir, result.output


def test_tiny_rmaat_learns_an_easy_listops_task(learned_run):
    run_dir, output = learned_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["preset"] == "rmaat" and summary["backprop"] == "amrb" and summary["steps"] == 120
    # chance is 10%; the majority class (9) is ~1/3 of [MAX of 2-6 digits]. Seeds 0/1/2 reach
    # 0.78/0.52/0.62 against a test-set baseline of 0.27.
    assert summary["test_accuracy"] > max(summary["majority_baseline"] + 0.15, 0.3), summary
    assert "test accuracy" in output and "majority-class baseline" in output
    train = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train)


def test_run_directory_contract(learned_run):
    run_dir, _ = learned_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_metrics(run_dir)
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert [r["step"] for r in records if r["split"] == "val"] == [60, 120]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["step"] == 120 and last["data_position"]["epoch"] >= 3
    assert set(last["rng"]) == {"torch", "cuda", "numpy", "python"}
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("val_accuracy", "test_accuracy", "majority_baseline", "steps", "wall_time_s", "peak_memory_bytes"):
        assert key in summary


def test_evaluate_reports_the_best_checkpoints_test_accuracy(learned_run):
    run_dir, _ = learned_run
    summary = json.loads((run_dir / "summary.json").read_text())
    result = invoke("evaluate", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert report["majority_baseline"] == pytest.approx(summary["majority_baseline"])
    text = invoke("evaluate", "--checkpoint", run_dir / "checkpoints" / "last.pt", "--split", "val").output
    assert "val split" in text and "majority-class baseline" in text


# ---------------------------------------------------------------------------------- resume
RESUME_ARGS = ["--task", "listops", "--seq-len", 32, "--segments", 2, "--max-steps", 10, "--batch-size", 8,
               "--lr", 3e-3, "--eval-every", 3, "--set", "train.grad_accum=2", "--set", "train.save_every=4",
               "--set", "train.log_every=2", *TINY]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in records]


def test_stopped_and_resumed_run_equals_uninterrupted_run(listops_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert invoke("train", *RESUME_ARGS, "--data-dir", listops_dir, "--run-dir", straight).exit_code == 0
    first = invoke("train", *RESUME_ARGS, "--data-dir", listops_dir, "--run-dir", split,
                   "--set", "train.stop_after=5")
    assert first.exit_code == 0 and "stopped at step 5/10" in first.output
    assert load_checkpoint(split / "checkpoints" / "last.pt")["step"] == 5
    assert not (split / "summary.json").exists()
    # resume from the run directory alone: its config.yaml supplies everything
    second = invoke("train", "--run-dir", split, "--resume", "--no-progress")
    assert second.exit_code == 0, second.output

    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 10 and a["data_position"] == b["data_position"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key  # bit for bit
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert _without_timing(read_metrics(straight)) == _without_timing(read_metrics(split))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, split))
    assert (sa["val_accuracy"], sa["test_accuracy"], sa["best_step"]) == (sb["val_accuracy"], sb["test_accuracy"],
                                                                          sb["best_step"])


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(listops_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_step = Trainer._train_step

    def step_then_ctrl_c(self):
        real_step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 3

    monkeypatch.setattr(Trainer, "_train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or brian2's if it was imported first
    result = CliRunner().invoke(cli, ["train", *map(str, (*RESUME_ARGS, "--data-dir", listops_dir,
                                                          "--run-dir", run_dir))])
    assert result.exit_code == 130, result.output
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 3
    monkeypatch.undo()
    torch.set_num_threads(1)
    resumed = invoke("train", "--run-dir", run_dir, "--resume", "--no-progress")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 10
    steps = [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"]
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10]  # no duplicated or lost log lines


# ------------------------------------------------------------------------------- all tasks
@pytest.mark.parametrize("task", sorted(WRITERS))
def test_every_task_trains_a_few_steps(task, tmp_path):
    data = WRITERS[task](tmp_path / "data")
    run_dir = tmp_path / "run"
    result = invoke("train", "--task", task, "--data-dir", data, "--run-dir", run_dir, "--seq-len", 64,
                    "--max-steps", 2, "--batch-size", 4, "--eval-every", 2, *TINY)
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["is_lra"] == (task != "fashion_mnist")
    if task == "fashion_mnist":
        assert "stand-in task, not an LRA result" in result.output


@pytest.mark.parametrize("preset", ["transformer", "rmt", "rlt", "at"])
def test_baseline_presets_train(preset, listops_dir, tmp_path):
    result = invoke("train", "--task", "listops", "--data-dir", listops_dir, "--run-dir", tmp_path / "r",
                    "--preset", preset, "--seq-len", 32, "--max-steps", 2, "--batch-size", 4,
                    "--set", "train.eval_batches=1", *TINY)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["preset"] == preset and summary["backprop"] == "bptt"
    assert summary["segments"] == (1 if preset in ("transformer", "at") else 4)


# ------------------------------------------------------------------------------ components
def test_sampler_is_seeded_sharded_and_resumable():
    from rmaat.train.distributed import ResumableSampler

    order = list(ResumableSampler(10, seed=3))
    assert sorted(order) == list(range(10))
    assert list(ResumableSampler(10, seed=3)) == order  # reproducible
    later = ResumableSampler(10, seed=3)
    later.set_position(epoch=1)
    assert sorted(later) == list(range(10)) and list(later) != order  # a new permutation each epoch
    later.set_position(epoch=0, start=4)
    assert list(later) == order[4:] and len(later) == 6  # resume mid-epoch
    shards = [list(ResumableSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # padded by wrapping, as DistributedSampler
    assert set().union(*shards) == set(range(10))


def test_learning_rate_schedule():
    from rmaat.train.optim import lr_multiplier

    warm = [lr_multiplier(s, 100, 0.1, "cosine", 0.0) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_multiplier(10, 100, 0.1, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, 0.1, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, 0.1, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(55, 100, 0.1, "linear", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(99, 100, 0.0, "constant", 0.0) == 1.0
