"""Defects found by a hostile test pass (issue 12), one test each: symlinked and non-regular
outputs, stale temp files, non-finite training, torn metrics, relative data paths, a missing
RMAAT_RETENTION_TABLE, resume before the first checkpoint, and the messages that misled."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from pipelines.cli import cli
from retention import read_table
from retention.atomic import atomic_write_bytes, stale_temp_files
from test_cli_simulate import FakeSimulator

import neuro_sim


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setattr(neuro_sim, "simulate", FakeSimulator(), raising=False)
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(tmp_path / "user" / "table.nc"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def user_error(result, *fragments):
    """Exit status 1 through click's one-line error, containing every fragment."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- output paths


def test_simulate_out_through_a_symlink_replaces_the_target_and_keeps_the_link(fake, tmp_path):
    target = tmp_path / "tables" / "real.nc"
    target.parent.mkdir()
    link = tmp_path / "link.nc"
    link.symlink_to(target)
    assert invoke("simulate", "--segments", "2", "--out", link, "--quiet").exit_code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert list(read_table(target)["total_segments"].values) == [2]
    # a second run merges into the target through the link
    assert invoke("simulate", "--segments", "4", "--out", link, "--quiet").exit_code == 0
    assert link.is_symlink() and list(read_table(target)["total_segments"].values) == [2, 4]
    assert sorted(p.name for p in target.parent.iterdir()) == ["real.nc"]  # no temp file left


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_non_regular_outputs_are_refused_even_with_force(fake, tmp_path, force):
    fifo = tmp_path / "fifo.nc"
    os.mkfifo(fifo)
    line = user_error(invoke("simulate", "--segments", "2", "--out", fifo, "--quiet", *force),
                      "not a regular file", "give the path of a regular file")
    assert "--out " + str(fifo) not in line.split(";")[-1]  # never suggests the same path back
    assert (tmp_path / "fifo.nc").exists() and not (tmp_path / "fifo.nc").is_file()
    user_error(invoke("simulate", "--segments", "2", "--out", "/dev/null", "--quiet", *force), "/dev/null",
               "not a regular file")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_stale_temp_files_of_a_target_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    host = socket.gethostname().replace("-", "_").replace(".", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a PID that has exited
    legacy = tmp_path / ".last.pt.k2j3h4_x.tmp"            # older versions' mkstemp names
    killed = tmp_path / f".last.pt.{host}-{dead}-0123456789ab.tmp"
    live = tmp_path / f".last.pt.{host}-{os.getpid()}-0123456789ab.tmp"  # a writer still running
    other = tmp_path / ".best.pt.k2j3h4_x.tmp"             # another target's
    for path in (legacy, killed, live, other):
        path.write_bytes(b"half")
    assert set(stale_temp_files(target)) == {legacy, killed}
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not legacy.exists() and not killed.exists() and live.exists() and other.exists()


def test_table_writer_fsyncs_the_file_before_replacing(tmp_path, monkeypatch):
    from retention.table import write_table

    table = read_table(_packaged_table())
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append((str(a), str(b))), real_replace(a, b))[1])
    out = tmp_path / "t.nc"
    write_table(table, out)
    assert replaced and replaced[0][1] == str(out)
    assert replaced[0][0] in synced  # the temp file was fsynced before it replaced the table


def _packaged_table():
    from retention.table import packaged_table_path

    return packaged_table_path()


# ----------------------------------------------------------------------------- training runs

TINY = ["--seq-len", "32", "--d-model", "16", "--layers", "1", "--set", "model.d_ff=32", "--set", "model.n_heads=2",
        "--batch-size", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture
def listops(tmp_path, monkeypatch):
    """A tiny ListOps data set; the packaged table as the user table; one torch thread."""
    from retention.table import packaged_table_path

    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path / "data" / "listops-1000"
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = [f"[MAX {i % 10} {(7 * i) % 10} ]\t{max(i % 10, (7 * i) % 10)}" for i in range(12)]
        (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n" + "\n".join(rows) + "\n")
    yield tmp_path / "data"
    torch.set_num_threads(threads)


def train(data_dir, run_dir, *extra):
    return invoke("train", "--task", "listops", "--data-dir", data_dir, "--run-dir", run_dir, *TINY, *extra)


def test_non_finite_options_are_refused(listops, tmp_path):
    for item in ("optim.lr=.inf", "optim.weight_decay=.nan", "optim.warmup=-.inf"):
        user_error(train(listops, tmp_path / "r", "--set", item), item.split("=")[0], "must be a finite number")
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_at_the_step_and_keeps_its_last_good_checkpoint(listops, tmp_path):
    run_dir = tmp_path / "r"
    result = train(listops, run_dir, "--lr", "1e30", "--set", "optim.grad_clip=0", "--set", "optim.warmup=0",
                   "--max-steps", "20", "--set", "train.save_every=1", "--eval-every", "1")
    line = user_error(result, "training diverged at step", "the last good checkpoint is", "--lr")
    bad_step = int(line.split("training diverged at step ")[1].split(":")[0])
    assert 1 < bad_step <= 20
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert state["step"] < bad_step, name
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()), name
    assert not (run_dir / "summary.json").exists()


def _stopped_run(listops, run_dir):
    result = train(listops, run_dir, "--max-steps", "4", "--set", "train.save_every=2", "--set", "train.stop_after=2",
                   "--set", "train.log_every=1")
    assert result.exit_code == 0, result.output
    return run_dir / "metrics.jsonl"


def test_resume_drops_a_torn_last_metrics_line_and_refuses_a_torn_middle_one(listops, tmp_path):
    from rmaat.train.metrics import read_metrics

    metrics = _stopped_run(listops, tmp_path / "r")
    whole = metrics.read_text()
    metrics.write_text(whole + '{"step": 3, "split": "tra')  # the write a kill cut short
    result = train(listops, tmp_path / "r", "--max-steps", "4", "--resume")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(metrics) if r["split"] == "train"] == [1, 2, 3, 4]

    metrics = _stopped_run(listops, tmp_path / "s")
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0][:10]] + lines[1:]) + "\n")
    user_error(train(listops, tmp_path / "s", "--max-steps", "4", "--resume"), "metrics.jsonl line 1",
               "is not a JSON record")


def test_a_relative_data_dir_is_stored_absolute_and_a_missing_one_names_the_run(listops, tmp_path, monkeypatch):
    monkeypatch.chdir(listops.parent)
    assert train("data", "r", "--max-steps", "2").exit_code == 0
    stored = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["data"]["data_dir"]
    assert stored == str(listops)
    monkeypatch.chdir("/")
    checkpoint = tmp_path / "r" / "checkpoints" / "best.pt"
    assert invoke("evaluate", "--checkpoint", checkpoint, "--device", "cpu").exit_code == 0
    listops.rename(tmp_path / "moved")
    user_error(invoke("evaluate", "--checkpoint", checkpoint, "--device", "cpu"),
               f"the data directory {listops} recorded by the run", "pass --data-dir")
    assert invoke("evaluate", "--checkpoint", checkpoint, "--device", "cpu", "--data-dir",
                  tmp_path / "moved").exit_code == 0


def test_training_with_a_missing_environment_table_is_an_error(listops, tmp_path, monkeypatch):
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(tmp_path / "typo.nc"))
    user_error(train(listops, tmp_path / "r", "--max-steps", "2", "--segments", "2"),
               "$RMAAT_RETENTION_TABLE names", "typo.nc, which does not exist")
    user_error(train(listops, tmp_path / "r", "--max-steps", "2", "--segments", "2",
                     "--set", f"model.retention_table={tmp_path / 'typo.nc'}"), "typo.nc")


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_from_step_0(listops, tmp_path):
    run_dir = tmp_path / "r"
    assert train(listops, run_dir, "--max-steps", "2").exit_code == 0
    for path in (run_dir / "checkpoints").iterdir():
        path.unlink()
    (run_dir / "summary.json").unlink()  # as a kill before the first save leaves it: config, metrics
    result = train(listops, run_dir, "--max-steps", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "has no checkpoint yet" in result.output and (run_dir / "summary.json").is_file()
    user_error(train(listops, tmp_path / "empty", "--max-steps", "2", "--resume"), "nothing to resume")


# ----------------------------------------------------------------------------- messages


def test_evaluate_messages_for_a_directory_and_an_unsafe_checkpoint(listops, tmp_path):
    run_dir = tmp_path / "r"
    assert train(listops, run_dir, "--max-steps", "2").exit_code == 0
    user_error(invoke("evaluate", "--checkpoint", run_dir), "is a directory", "checkpoints/best.pt")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "x", "thing": _Opaque()}, unsafe)
    line = user_error(invoke("evaluate", "--checkpoint", unsafe), "cannot be read",
                      "objects other than tensors")
    assert "weights_only" not in line


class _Opaque:
    """Not loadable with weights_only=True."""


def test_retrieval_check_says_what_was_cut(tmp_path):
    folder = tmp_path / "tsv_data"
    folder.mkdir()
    long_doc = "word " * 1000  # 5000 bytes, over the 4096 a document keeps
    for split in ("train", "eval", "test"):
        rows = [f"{i % 2}\tA{i}\tB{i}\t{long_doc}\t{long_doc if i == 0 else 'short'}" for i in range(4)]
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join(rows) + "\n")
    result = invoke("data", "check", "--task", "retrieval", "--data-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "train       4 examples" in result.output and "5 documents cut to 4096 tokens" in result.output


@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_training_curves_are_byte_reproducible(tmp_path, suffix):
    """No date, version or random element ids in curves.png/.svg (as the pipeline's other figures)."""
    from rmaat.train.metrics import plot_curves

    records = [{"step": i, "split": "train", "loss": 1 / i, "accuracy": i / 10} for i in range(1, 9)]
    first, second = tmp_path / f"a.{suffix}", tmp_path / f"b.{suffix}"
    plot_curves(records, first)
    plot_curves(records, second)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("requested, index", [("cuda", 0), ("auto", 0), ("cuda:1", 1)])
def test_a_bare_cuda_device_gets_an_index(monkeypatch, requested, index):
    """`--device cuda` / `auto` on one process: torch.cuda.set_device needs cuda:N (found by
    reading the CUDA path: it raised ValueError on every GPU). Checked here with CUDA faked."""
    from rmaat.train import distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(device))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _, device = distributed.init_distributed(requested)
    assert device == torch.device("cuda", index) and chosen == [device]


@pytest.mark.parametrize("args, fragment", [
    (["plot", "fit", "--out", "figure.txt"], "must end in .png"),
    (["plot", "decay", "--scales", "1,x"], "is not a comma-separated list"),
    (["plot", "decay", "--scales", "0,2"], "positive, finite scales"),
])
def test_plot_option_errors_are_one_line_with_status_1(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user_error(invoke(*args), fragment)
