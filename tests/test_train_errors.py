"""Bad input to `pipeline train` / `pipeline evaluate`: one-line error, exit status 1, and nothing
written or overwritten."""

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

from pipelines.cli import cli
from retention.table import packaged_table_path

PACKAGED_TABLE = str(packaged_table_path())  # as the user table: no user table of this machine is read

TINY = ["--seq-len", "32", "--d-model", "16", "--layers", "1", "--set", "model.d_ff=32", "--set", "model.n_heads=2",
        "--max-steps", "2", "--batch-size", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", PACKAGED_TABLE)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    folder = root / "listops-1000"
    folder.mkdir()
    for split in ("train", "val", "test"):
        rows = [f"[MAX {i % 10} {(7 * i) % 10} ]\t{max(i % 10, (7 * i) % 10)}" for i in range(12)]
        (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    torch.set_num_threads(1)
    result = CliRunner().invoke(cli, ["train", "--task", "listops", "--data-dir", str(data_dir),
                                      "--run-dir", str(run_dir), *TINY])
    assert result.exit_code == 0, result.output
    return run_dir


def snapshot(folder):
    """Content digest of every file below ``folder`` (None if it does not exist)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(args, *fragments):
    """Invoke, expect exit 1 with one 'Error: ...' line containing every fragment."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_unknown_task_lists_the_valid_ones(tmp_path):
    fails(["train", "--task", "sudoku", "--run-dir", tmp_path / "r"], "unknown task 'sudoku'", "listops",
          "retrieval", "pathfinder")
    assert not (tmp_path / "r").exists()


def test_unknown_preset_lists_the_valid_ones(data_dir, tmp_path):
    fails(["train", "--task", "listops", "--data-dir", data_dir, "--run-dir", tmp_path / "r", "--preset", "gpt",
          *TINY], "unknown preset 'gpt'", "rmaat", "transformer")
    assert not (tmp_path / "r").exists()


def test_unknown_model_option(data_dir, tmp_path):
    fails(["train", "--task", "listops", "--data-dir", data_dir, "--run-dir", tmp_path / "r",
          "--set", "model.n_experts=4", *TINY], "n_experts")
    assert not (tmp_path / "r").exists()


def test_missing_data_says_how_to_get_it(tmp_path):
    fails(["train", "--task", "listops", "--data-dir", tmp_path / "nowhere", "--run-dir", tmp_path / "r", *TINY],
          "does not exist", "pipeline data generate --task listops")
    assert not (tmp_path / "r").exists()


def test_malformed_data_names_file_and_line(tmp_path):
    folder = tmp_path / "data" / "listops-1000"
    folder.mkdir(parents=True)
    good = "Source\tTarget\n[MAX 1 2 ]\t2\n"
    (folder / "basic_train.tsv").write_text(good + "[MAX 3 4 ]\tseven\n")
    (folder / "basic_val.tsv").write_text(good)
    (folder / "basic_test.tsv").write_text(good)
    fails(["train", "--task", "listops", "--data-dir", tmp_path / "data", "--run-dir", tmp_path / "r", *TINY],
          "basic_train.tsv:3", "seven")
    assert not (tmp_path / "r").exists()


def test_segment_count_missing_from_the_retention_table(data_dir, tmp_path):
    # 4093 segments (a prime no table holds) of one token each
    fails(["train", "--task", "listops", "--data-dir", data_dir, "--run-dir", tmp_path / "r",
           *TINY, "--seq-len", 4093, "--segments", 4093], "4093", "pipeline simulate --segments 4093")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option,value,message", [
    ("--max-steps", 0, "max_steps must be >= 1"),
    ("--max-steps", -5, "max_steps must be >= 1"),
    ("--lr", 0, "lr must be > 0"),
    ("--lr", -1e-3, "lr must be > 0"),
    ("--batch-size", 0, "batch_size must be >= 1"),
    ("--segments", 5, "multiple of model.segments"),
    ("--eval-every", 0, "eval_every must be >= 1"),
    ("--d-model", 0, "d_model"),
    ("--device", "tpu", "device must be"),
])
def test_impossible_numbers(data_dir, tmp_path, option, value, message):
    fails(["train", "--task", "listops", "--data-dir", data_dir, "--run-dir", tmp_path / "r", *TINY,
           option, value], message)
    assert not (tmp_path / "r").exists()


def test_bad_set_syntax(data_dir, tmp_path):
    fails(["train", "--task", "listops", "--set", "train.max_steps", "--run-dir", tmp_path / "r"], "key=value")
    fails(["train", "--task", "listops", "--set", "train.warp=9", "--run-dir", tmp_path / "r"], "train.warp")


def test_existing_run_dir_is_not_overwritten_without_force(finished_run, data_dir):
    before = snapshot(finished_run)
    fails(["train", "--task", "listops", "--data-dir", data_dir, "--run-dir", finished_run, *TINY],
          "not empty", "--resume", "--force")
    assert snapshot(finished_run) == before


def test_force_replaces_a_previous_run(data_dir, tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 999, "split": "train"}\n')
    (run_dir / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["train", "--task", "listops", "--data-dir", str(data_dir), "--run-dir",
                                      str(run_dir), "--force", *TINY])
    assert result.exit_code == 0, result.output
    assert all(json.loads(line)["step"] <= 2 for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert (run_dir / "notes.txt").read_text() == "mine"  # only the run's own artefacts are replaced


def test_resume_with_a_different_config_is_refused(finished_run, data_dir):
    before = snapshot(finished_run)
    fails(["train", "--task", "listops", "--data-dir", data_dir, "--run-dir", finished_run, "--resume", *TINY,
           "--lr", 0.5], "different configuration", "optim.lr")
    fails(["train", "--task", "listops", "--data-dir", data_dir, "--run-dir", finished_run, "--resume", *TINY,
           "--d-model", 24], "different configuration", "model.d_model")
    assert snapshot(finished_run) == before


def test_resume_needs_a_checkpoint(data_dir, tmp_path):
    fails(["train", "--task", "listops", "--data-dir", data_dir, "--run-dir", tmp_path / "empty", "--resume",
           *TINY], "nothing to resume", "last.pt")
    fails(["train", "--task", "listops", "--resume", *TINY], "--resume needs the --run-dir")
    assert not (tmp_path / "empty").exists()


def test_evaluate_rejects_bad_checkpoints(finished_run, tmp_path):
    fails(["evaluate", "--checkpoint", tmp_path / "missing.pt"], "does not exist")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((finished_run / "checkpoints" / "last.pt").read_bytes()[:1000])
    fails(["evaluate", "--checkpoint", truncated], "cannot be read")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    fails(["evaluate", "--checkpoint", foreign], "not an RMAAT training checkpoint")
    fails(["evaluate", "--checkpoint", finished_run / "checkpoints" / "best.pt", "--split", "dev"],
          "unknown split 'dev'")


def test_evaluate_rejects_a_tampered_config(finished_run, tmp_path):
    state = torch.load(finished_run / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["model"]["d_model"] = 24
    tampered = tmp_path / "tampered.pt"
    torch.save(state, tampered)
    fails(["evaluate", "--checkpoint", tampered], "does not match its hash")


def test_evaluate_at_other_segments_needs_a_recurrent_model(data_dir, tmp_path):
    run_dir = tmp_path / "transformer"
    result = CliRunner().invoke(cli, ["train", "--task", "listops", "--data-dir", str(data_dir), "--run-dir",
                                      str(run_dir), "--preset", "transformer", *TINY])
    assert result.exit_code == 0, result.output
    fails(["evaluate", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--segments", "2"],
          "--segments needs a recurrent model")
    fails(["evaluate", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--segments", "0"],
          "--segments must be >= 1")
