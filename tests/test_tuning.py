"""Per-model tuning in the experiment harness (rmaat.experiments.tuning): the sweep picks the
candidate that is better on the validation split, never reads the test split, resumes without
redoing finished candidates, is shown by --dry-run and results.md/csv, and malformed tune blocks
are one-line errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from retention.table import packaged_table_path

SENTENCES = ["the cat sat on the mat. ", "a dog ran in the park. ", "the sun is warm today. "]

#: A byte LM where a rate of 1e-9 moves nothing (val bpb stays at the uniform 8 bits) and 3e-2
#: learns the byte frequencies within a few steps: a sweep with one clearly better candidate.
TUNED_LM = """
name: tunedlm
question: Does the sweep pick the rate that learns?
task: kjv_lm
metric: test_bpb
seeds: 2
scales:
  cpu:
    config: kjv_lm
    set: {{data.data_dir: {data}, data.seq_len: 32, model.segments: 2, model.d_model: 16, model.n_heads: 2,
          model.d_ff: 32, model.n_layers: 1, model.n_mem: 2, train.max_steps: 12, train.batch_size: 4,
          train.eval_every: 12, train.eval_batches: 2, train.final_eval_batches: 2, train.save_every: 4,
          optim.warmup: 0.0}}
    tune: {{set: {{optim.lr: [1.0e-9, 3.0e-2]}}, seeds: [0], metric: final_val_bpb}}
grid:
  rmaat: {{}}
  rmt: {{model.preset: rmt}}
"""


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("val", 60), ("test", 60)):
        (root / f"{split}.txt").write_text("".join(SENTENCES[i] for i in rng.integers(0, len(SENTENCES), n)))
    return root


@pytest.fixture
def tuned(tmp_path, text_dir, monkeypatch):
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
    path = tmp_path / "tunedlm.yaml"
    path.write_text(TUNED_LM.format(data=text_dir))
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_dry_run_shows_the_tuning_plan_and_its_cost(tuned, tmp_path):
    out = invoke("experiment", "run", tuned, "--root", tmp_path / "exp", "--dry-run")
    assert out.exit_code == 0, out.output
    assert "optim.lr in {1e-09, 0.03}" in out.output and "final_val_bpb" in out.output
    assert "4 tuning runs (2 per tuned stage)" in out.output and "before the 4 final runs" in out.output
    assert "tuning" in out.output.splitlines()[-1] and "min of it" in out.output
    assert not (tmp_path / "exp").exists()  # a plan writes nothing


@pytest.mark.slow
def test_the_sweep_picks_the_rate_that_learns_and_never_reads_the_test_split(tuned, tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path / "exp"
        out = invoke("experiment", "run", tuned, "--root", root, "--jobs", "2", "--no-progress")
        assert out.exit_code == 0, out.output
        folder = root / "tunedlm"
        for point in ("rmaat", "rmt"):
            bad = json.loads((folder / point / "tune" / "lr1e-09" / "seed0" / "summary.json").read_text())
            good = json.loads((folder / point / "tune" / "lr0.03" / "seed0" / "summary.json").read_text())
            assert good["final_val_bpb"] < bad["final_val_bpb"] - 1.0  # clearly better
            for summary, run in ((bad, "lr1e-09"), (good, "lr0.03")):  # the test split was never scored
                assert not any(key.startswith(("test_", "n_test")) for key in summary), sorted(summary)
                lines = (folder / point / "tune" / run / "seed0" / "metrics.jsonl").read_text().splitlines()
                assert all(json.loads(line)["split"] != "test" for line in lines)
            final = json.loads((folder / point / "seed1" / "summary.json").read_text())
            assert "test_bpb" in final
            config = (folder / point / "seed1" / "config.yaml").read_text()
            assert "lr: 0.03" in config
        rows = list(csv.DictReader(open(folder / "results.csv")))
        assert [r["candidate"] for r in rows if r["role"] == "final"] == ["lr0.03"] * 4
        sweep = {(r["point"], r["candidate"]): float(r["value"]) for r in rows if r["role"] == "tune"}
        assert set(sweep) == {(p, c) for p in ("rmaat", "rmt") for c in ("lr1e-09", "lr0.03")}
        md = (folder / "results.md").read_text()
        assert "| grid point | lr1e-09 | lr0.03 | chosen |" in md
        assert "lr0.03 (**edge** of optim.lr)" in md  # the largest candidate won: widen the sweep
        assert "clipped to the metric's range >= 0" in md

        # a killed sweep resumes: a candidate with a checkpoint and no summary is continued, the
        # finished ones are not run again
        victim = folder / "rmt" / "tune" / "lr1e-09" / "seed0"
        (victim / "summary.json").unlink()
        kept = (folder / "rmaat" / "tune" / "lr0.03" / "seed0" / "summary.json").stat().st_mtime_ns
        again = invoke("experiment", "run", tuned, "--root", root, "--jobs", "1", "--no-progress")
        assert again.exit_code == 0, again.output
        assert "tuning wave 1: 2 runs, 1 already done, 1 to run" in again.output  # rmt alone is undecided
        assert "4 runs, 4 already done, 0 to run" in again.output
        assert "resume from checkpoints/last.pt" in (victim.parent / "seed0.log").read_text()
        assert (folder / "rmaat" / "tune" / "lr0.03" / "seed0" / "summary.json").stat().st_mtime_ns == kept

        # a changed sweep that changes the choice makes the finished final runs stale: known only once
        # the new candidates ran, so the wave before the final runs refuses them in one line...
        tuned.write_text(tuned.read_text().replace("[1.0e-9, 3.0e-2]", "[1.0e-9, 1.0e-8]"))
        refused = invoke("experiment", "run", tuned, "--root", root, "--jobs", "1", "--no-progress")
        assert refused.exit_code == 1, refused.output
        assert "were run with another configuration" in refused.output and "--force" in refused.output
        assert "Traceback" not in refused.output and "not empty" not in refused.output
        # ... and --force replaces them with runs at the new choice
        forced = invoke("experiment", "run", tuned, "--root", root, "--jobs", "1", "--no-progress", "--force")
        assert forced.exit_code == 0, forced.output
        assert "replacing 4 run(s) of an older configuration" in forced.output
        for point in ("rmaat", "rmt"):
            config = (folder / point / "seed1" / "config.yaml").read_text()
            assert "lr: 0.03" not in config and "lr: 1.0e-0" in config
    finally:
        torch.set_num_threads(threads)


def test_a_run_that_does_not_score_the_test_split_never_opens_it(text_dir, tmp_path, monkeypatch):
    """train.evaluate_test: false (what every tuning run sets) trains and validates without the
    test file; the same run with the test split scored fails on it."""
    import shutil

    import torch

    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        shutil.copy(text_dir / f"{split}.txt", data / f"{split}.txt")
    common = ["train", "--task", "kjv_lm", "--data-dir", data, "--seq-len", 32, "--segments", 2, "--d-model", 16,
              "--layers", 1, "--set", "model.d_ff=32", "--set", "model.n_heads=2", "--max-steps", 2,
              "--batch-size", 2, "--set", "train.final_eval_batches=1", "--no-progress", "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scored = invoke(*common, "--run-dir", tmp_path / "a")
        assert scored.exit_code == 1 and "test" in scored.output
        unscored = invoke(*common, "--run-dir", tmp_path / "b", "--set", "train.evaluate_test=false")
        assert unscored.exit_code == 0, unscored.output
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert "test_bpb" not in summary and math.isfinite(summary["final_val_bpb"])
    assert "test split not scored" in unscored.output


def test_selection_takes_the_best_mean_and_flags_edges():
    from rmaat.experiments.tuning import Tuning, edges, select

    tuning = Tuning((("optim.lr", (1e-3, 3e-3, 1e-2)),), seeds=(0, 1), metric="val_accuracy")
    rows = [({"optim.lr": 1e-3}, [0.5, 0.7]), ({"optim.lr": 3e-3}, [0.8, 0.6]), ({"optim.lr": 1e-2}, [0.2, 0.3])]
    assert select(tuning, rows) == {"optim.lr": 3e-3}  # means 0.6, 0.7, 0.25 (not the best single seed)
    assert edges(tuning, {"optim.lr": 3e-3}) == {"optim.lr": False}
    assert edges(tuning, {"optim.lr": 1e-2}) == {"optim.lr": True} == edges(tuning, {"optim.lr": 1e-3})
    rows[1] = ({"optim.lr": 3e-3}, [0.6, 0.6])  # a tie: the first in sweep order
    assert select(tuning, rows) == {"optim.lr": 1e-3}
    rows[2] = ({"optim.lr": 1e-2}, [0.9, math.nan])  # a candidate not finished: no choice yet
    assert select(tuning, rows) is None
    lower = Tuning((("optim.lr", (1e-3, 3e-3)),), metric="val_bpb")  # bits per byte: lower is better
    assert select(lower, [({"optim.lr": 1e-3}, [3.1]), ({"optim.lr": 3e-3}, [2.9])]) == {"optim.lr": 3e-3}


@pytest.mark.parametrize("block, message", [
    ("[1, 2]", "must be a mapping"),
    ("{seeds: [0]}", "set must map run-config keys"),
    ("{set: {optim.lr: 0.001}}", "must be a non-empty list of candidates"),
    ("{set: {optim.lr: [0.001, 0.001]}}", "repeats a candidate"),
    ("{set: {lr: [0.001]}}", "is not a run-config key"),
    ("{set: {optim.lr: [0.001]}, seeds: 0}", "seeds must be a non-empty list"),
    ("{set: {optim.lr: [0.001]}, metric: test_bpb}", "tuning never reads the test split"),
    ("{set: {optim.lr: [0.001]}, metric: val_accuracy}", "validation metric of these runs"),
    ("{set: {optim.lr: [0.001]}, stages: all}", "must be 'each'"),
    ("{set: {optim.lr: [0.001]}, sed: [0]}", "unknown key(s) ['sed']"),
    ("{set: {optim.lrr: [0.001]}}", "optim.lrr"),
    ("{set: {optim.lr: [abc]}}", "optim.lr"),
])
def test_malformed_tune_blocks_are_one_line_errors(tuned, tmp_path, block, message):
    text = tuned.read_text().replace("tune: {set: {optim.lr: [1.0e-9, 3.0e-2]}, seeds: [0], metric: final_val_bpb}",
                                     f"tune: {block}")
    assert f"tune: {block}" in text
    tuned.write_text(text)
    out = invoke("experiment", "run", tuned, "--root", tmp_path / "exp", "--dry-run")
    assert out.exit_code == 1, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.output, out.output
