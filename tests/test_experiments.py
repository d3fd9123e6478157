"""`pipeline experiment`: experiment files and grid expansion, statistics, a tiny experiment end to
end (parallel jobs, curriculum stages, skip when finished, resume when interrupted, report from the
run directories alone), `--init-from`, and bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from click.testing import CliRunner

from pipelines.cli import cli
from test_data_babi import kjv  # noqa: F401  (the corpus fixture)
from retention.table import packaged_table_path

PACKAGED_TABLE = str(packaged_table_path())  # as the user table: no user table of this machine is read

TINY_EXPERIMENT = """
name: tiny
question: Does the harness run a grid?
task: babi_qa1
metric: test_accuracy
seeds: 2
paper: {rmaat: 0.5}
scales:
  cpu:
    data: {length: 128, segment_length: 64, n_facts: 1, size: 60, seed: 0}
    config: demo/babi_qa1_short
    set: {data.seq_len: 128, model.segments: 2, model.backprop: null, model.d_model: 16, model.n_heads: 2,
          model.d_ff: 32, model.n_layers: 1, train.max_steps: 3, train.batch_size: 4, train.eval_every: 3,
          train.save_every: 1, model.retention_table: null}
grid:
  rmaat: {}
  control: {data.seq_len: "{segment_length}", model.segments: 1, data.truncate: left}
  curriculum:
    stages:
      - {data: {length: 64}, set: {data.seq_len: 64, model.segments: 1}}
      - {}
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", PACKAGED_TABLE)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_EXPERIMENT)
    return path


def test_grid_expansion_placeholders_and_stages(tiny):
    from rmaat.experiments.spec import load_experiment

    exp = load_experiment(str(tiny))
    assert [p.name for p in exp.points] == ["rmaat", "control", "curriculum"] and exp.n_runs == 6
    control = exp.points[1].stages[0]
    assert control.overrides["data.seq_len"] == 64 and control.overrides["model.d_model"] == 16
    first, second = exp.points[2].stages
    assert first.data["length"] == 64 and first.data["segment_length"] == 64 and second.data["length"] == 128
    assert first.overrides["model.segments"] == 1 and second.overrides["model.segments"] == 2
    assert load_experiment(str(tiny), seeds=5).n_runs == 15


def test_statistics_match_hand_computed_t_intervals():
    from rmaat.experiments.stats import summarise

    s = summarise([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert (s.mean, s.n) == (pytest.approx(0.6), 3) and s.std == pytest.approx(0.1)
    assert (s.ci_low, s.ci_high) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    one = summarise([0.3])
    assert one.mean == 0.3 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert summarise([0.2, 0.2]).ci_low == 0.2
    assert not summarise([0.1, 0.2, 0.15]).overlaps(summarise([0.8, 0.9, 0.85]))


@pytest.mark.slow
def test_tiny_experiment_end_to_end_with_skip_resume_and_report(kjv, tiny, tmp_path):  # noqa: F811
    root = tmp_path / "exp"
    args = ["experiment", "run", str(tiny), "--jobs", "2", "--root", str(root)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    folder = root / "tiny"
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [(r["point"], r["seed"]) for r in rows] == [(p, s) for p in ("rmaat", "control", "curriculum")
                                                       for s in ("0", "1")]
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
    md = (folder / "results.md").read_text()
    assert "| rmaat |" in md and "| 0.5 |" in md and "95% CI" in md and "segment 0" in md
    assert (folder / "tiny.png").stat().st_size > 1000

    # the curriculum's second stage started from the first stage's best weights
    config = json.loads(json.dumps(__import__("yaml").safe_load(
        (folder / "curriculum/seed0/stage1/config.yaml").read_text())))
    assert config["train"]["init_from"] == str((folder / "curriculum/seed0/stage0/checkpoints/best.pt").resolve())

    # a finished experiment is skipped; an interrupted run (checkpoint, no summary) resumes
    (folder / "control/seed1/summary.json").unlink()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "5 already done, 1 to run" in again.output
    assert (folder / "control/seed1/summary.json").is_file()
    assert "resume from checkpoints/last.pt" in (folder / "control/seed1.log").read_text()
    assert json.loads((folder / "control/seed1/summary.json").read_text())["steps"] == 3

    # report rebuilds everything from the run directories alone
    before = (folder / "results.csv").read_text()
    for name in ("results.csv", "results.md", "tiny.png"):
        (folder / name).unlink()
    report = CliRunner().invoke(cli, ["experiment", "report", str(tiny), "--root", str(root)])
    assert report.exit_code == 0, report.output
    assert (folder / "results.csv").read_text() == before and (folder / "tiny.png").is_file()


def test_init_from_loads_every_weight_and_refuses_another_model(kjv, tiny, tmp_path):  # noqa: F811
    from rmaat.errors import CheckpointError
    from rmaat.train.checkpoint import load_checkpoint
    from rmaat.train.checkpoint import init_weights

    data = tmp_path / "d"
    assert CliRunner().invoke(cli, ["data", "generate", "--task", "babi_qa1", "--out", str(data), "--length", "128",
                                    "--segment-length", "64", "--facts", "1", "--size", "60"]).exit_code == 0
    small = ["--config", "rmaat/configs/demo/babi_qa1_short.yaml", "--data-dir", str(data), "--seq-len", "64",
             "--segments", "1", "--set", "data.truncate=left", "--max-steps", "2", "--batch-size", "4",
             "--d-model", "16", "--set", "model.n_heads=2", "--set", "model.d_ff=32", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert CliRunner().invoke(cli, ["train", "--run-dir", str(tmp_path / "a"), *small]).exit_code == 0
        from rmaat.encoder.model import build_model

        model = build_model("rmaat", vocab_size=257, n_classes=6, seq_len=128, n_segments=2, d_model=16,
                            n_heads=2, d_ff=32)
        init_weights(model, tmp_path / "a/checkpoints/best.pt")
        saved = load_checkpoint(tmp_path / "a/checkpoints/best.pt")["model"]
        for name, value in model.state_dict().items():
            if name != "retention_factors":
                assert torch.equal(value, saved[name]), name
        assert model.retention_factors.shape == (2,)  # this run's RF(., 2), not the checkpoint's RF(., 1)
        wider = build_model("rmaat", vocab_size=257, n_classes=6, seq_len=128, n_segments=2, d_model=32,
                            n_heads=2, d_ff=32)
        with pytest.raises(CheckpointError, match="does not fit this run's"):
            init_weights(wider, tmp_path / "a/checkpoints/best.pt")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("text, message", [
    ("name: x\n", "missing key(s) question"),
    ("{not yaml", "not valid YAML"),
    (TINY_EXPERIMENT.replace('"{segment_length}"', '"{depth}"'), "{depth} names no data option"),
    (TINY_EXPERIMENT.replace("  cpu:\n", "  gpu:\n"), "no 'cpu' scale"),
    (TINY_EXPERIMENT.replace("seeds: 2", "seeds: 0"), "seeds must be a positive integer"),
    (TINY_EXPERIMENT + "extra: 1\n", "unknown key(s) ['extra']"),
])
def test_malformed_experiment_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["experiment", "run", str(path), "--dry-run"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_unknown_experiment_lists_the_valid_ones_and_dry_run_plans(tmp_path):
    result = CliRunner().invoke(cli, ["experiment", "run", "nonsense"])
    assert result.exit_code == 1 and "unknown experiment 'nonsense'; valid experiments: " in result.output
    assert "memory" in result.output
    plan = CliRunner().invoke(cli, ["experiment", "run", "memory", "--dry-run", "--jobs", "2", "--root", str(tmp_path)])
    assert plan.exit_code == 0, plan.output
    assert "5 grid points x 3 seeds = 15 runs" in plan.output and "estimated wall time with --jobs 2" in plan.output
    assert list(tmp_path.iterdir()) == []  # nothing generated or run


@pytest.mark.parametrize("name", ["memory", "retention", "segments", "decay_scale", "length_generalisation",
                                  "lra_shapes"])
def test_every_packaged_experiment_resolves_at_both_scales_and_paper_scale_takes_a_step(name, tmp_path, monkeypatch):
    """Each grid point's run config validates at both scales; at the paper's sizes each builds its
    model and takes one AMRB/BPTT training step on random tokens of the run's shape (no data)."""
    from rmaat.encoder.amrb import train_step
    from rmaat.data import get_task
    from rmaat.experiments.jobs import run_configs
    from rmaat.experiments.validate import validate_experiment
    from rmaat.experiments.spec import load_experiment
    from rmaat.train.batching import build_run_model
    from rmaat.train.config import RunConfig

    monkeypatch.setenv("RMAAT_RETENTION_TABLE", PACKAGED_TABLE)
    assert validate_experiment(load_experiment(name, "cpu", seeds=1), tmp_path)  # every tuning candidate's too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for job in run_configs(load_experiment(name, "paper", seeds=1), tmp_path, prepare=False):
            config = RunConfig.from_dict([c for c in job.configs if "evaluate" not in c][-1])
            spec = get_task(config.task)
            model, _ = build_run_model(config, spec)
            length = config.data.seq_len
            batch = {"input_ids": torch.randint(1, spec.vocab_size, (2, length)),
                     "attention_mask": torch.ones(2, length, dtype=torch.bool),
                     "label": torch.tensor([0, 1])}
            if spec.dual:
                batch["input_ids_2"], batch["attention_mask_2"] = batch["input_ids"].flip(0), batch["attention_mask"]
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            loss = train_step(model, batch, opt, backprop=model.cfg.backprop)
            assert math.isfinite(float(loss if not isinstance(loss, dict) else loss["loss"])), job.point
    finally:
        torch.set_num_threads(threads)
    assert list(tmp_path.iterdir()) == []


def test_points_with_a_body_per_scale_and_their_own_task():
    from rmaat.experiments.data import stage_task
    from rmaat.experiments.spec import load_experiment

    cpu, paper = load_experiment("lra_shapes", "cpu"), load_experiment("lra_shapes", "paper")
    (cpu_stage,), (paper_stage,) = cpu.points[3].stages, paper.points[3].stages  # kjv_text_rmaat
    assert cpu.points[3].name == "kjv_text_rmaat"
    assert stage_task(cpu, cpu_stage) == stage_task(paper, paper_stage) == "kjv_text" != cpu.task
    assert (cpu_stage.overrides["data.seq_len"], paper_stage.overrides["data.seq_len"]) == (256, 4096)


#: TINY_EXPERIMENT's scales without its grid (and without its paper number for `rmaat`, a point
#: that a grid appended to this header does not have: an unknown paper key is an error).
TINY_HEADER = TINY_EXPERIMENT.split("grid:")[0].replace("paper: {rmaat: 0.5}\n", "")
STAGED_EXPERIMENT = TINY_HEADER.replace("seeds: 2", "seeds: 1") + """grid:
  lengths:
    stages:
      - {name: T1, data: {length: 64}, set: {data.seq_len: 64, model.segments: 1}}
      - {name: T2, set: {model.retention_variant: streaming}}
      - {name: T4, data: {length: 256}, evaluate: {segments: 4}}
"""


@pytest.mark.slow
def test_named_stages_are_rows_and_an_evaluate_stage_equals_pipeline_evaluate(kjv, tmp_path, monkeypatch):  # noqa: F811
    """A curriculum with named stages reports one row per stage; an evaluate stage scores the last
    trained stage's best checkpoint at another segment count exactly as `pipeline evaluate
    --segments` does, with the retention factors of the new T (streaming r_t here)."""
    from retention import load_retention_factors

    monkeypatch.setenv("RMAAT_RETENTION_TABLE", PACKAGED_TABLE)
    path = tmp_path / "staged.yaml"
    path.write_text(STAGED_EXPERIMENT)
    root = tmp_path / "exp"
    result = CliRunner().invoke(cli, ["experiment", "run", str(path), "--root", str(root)])
    assert result.exit_code == 0, result.output
    folder = root / "tiny"
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [r["point"] for r in rows] == ["lengths/T1", "lengths/T2", "lengths/T4"]
    evaluated = json.loads((folder / "lengths/seed0/stage2/summary.json").read_text())
    checkpoint = folder / "lengths/seed0/stage1/checkpoints/best.pt"
    assert evaluated["evaluate"]["checkpoint"] == str(checkpoint.resolve()) and evaluated["segments"] == 4
    assert not (folder / "lengths/seed0/stage2/checkpoints").exists()  # nothing trained
    assert set(evaluated["test_accuracy_by_depth"]) <= {"0", "1", "2", "3"}

    cli_result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint), "--segments", "4",
                                          "--data-dir", evaluated["evaluate"]["data_dir"], "--device", "cpu",
                                          "--json"])
    assert cli_result.exit_code == 0, cli_result.output
    direct = json.loads(cli_result.output)
    assert direct["accuracy"] == evaluated["test_accuracy"] and direct["seq_len"] == 256
    assert direct["retention_factors"] == pytest.approx(list(load_retention_factors(4, variant="streaming")))
    assert rows[2]["value"] == str(evaluated["test_accuracy"])

    # evaluation at T_eval = T gives the training summary's own test accuracy
    trained = json.loads((folder / "lengths/seed0/stage1/summary.json").read_text())
    same = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(checkpoint), "--segments", "2", "--json",
                                    "--device", "cpu"])
    assert json.loads(same.output)["accuracy"] == trained["test_accuracy"]

    # already done: a second run skips the evaluate stage too
    again = CliRunner().invoke(cli, ["experiment", "run", str(path), "--root", str(root)])
    assert again.exit_code == 0 and "1 already done, 0 to run" in again.output, again.output


@pytest.mark.parametrize("stage, message", [
    ("{name: T4, evaluate: {segments: 4}}", "the first stage must train"),
    ("{data: {length: 64}}\n      - {evaluate: {segments: 4}, set: {model.segments: 4}}", "takes no 'set'"),
    ("{data: {length: 64}}\n      - {evaluate: {segments: 0}}", "evaluate must be {segments: N}"),
    ("{data: {length: 64}}\n      - {evaluate: {T: 4}}", "evaluate must be {segments: N}"),
    ("{name: 'a b', data: {length: 64}}", "name must be a short word"),
])
def test_malformed_stages_are_one_line_errors(tmp_path, stage, message):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY_HEADER + "grid:\n  p:\n    stages:\n      - " + stage + "\n")
    result = CliRunner().invoke(cli, ["experiment", "run", str(path), "--dry-run"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
