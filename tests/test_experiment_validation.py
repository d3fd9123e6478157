"""`pipeline experiment` against hostile input (issue 18): an edited experiment file (stale runs:
refused up front, replaced with --force, marked in the report), experiment files checked as a
whole before anything runs (unknown keys, duplicate keys, unsafe names, unknown metrics, every
grid point's run config and model), one-line errors for bad roots, points and summaries, and
the streaming cache. No test trains: finished runs are faked as the trainer writes them
(config.yaml, checkpoints/last.pt, summary.json with its config_hash)."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from test_experiments import PACKAGED_TABLE, TINY_EXPERIMENT, TINY_HEADER

TINY_LM = """
name: tinylm
question: Does streaming evaluate the runs?
task: kjv_lm
metric: test_bpb
seeds: 1
scales:
  cpu:
    config: kjv_lm
    set: {data.seq_len: 64, model.segments: 2, model.d_model: 16, model.n_heads: 2, model.d_ff: 32,
          model.n_layers: 1, model.n_mem: 2}
grid:
  rmaat: {}
  rmt: {model.preset: rmt}
"""


@pytest.fixture(autouse=True)
def packaged_table(monkeypatch):
    """The packaged retention table (validation reads RF(., T)); never this machine's user table."""
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", PACKAGED_TABLE)


def write(tmp_path, text, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def plan(path, root):
    from rmaat.experiments.jobs import run_configs
    from rmaat.experiments.spec import load_experiment

    exp = load_experiment(str(path))
    return exp, run_configs(exp, root, log=lambda _: None, prepare=False)


def fake_run(job, stage, value=0.5, finished=True):
    """Leave what the trainer leaves in a run directory: config.yaml and checkpoints/last.pt, and
    for a finished run summary.json (with the config hash; an evaluate stage: its spec)."""
    from rmaat.train.config import RunConfig, config_hash

    run_dir, config = job.run_dirs[stage], job.configs[stage]
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"test_accuracy": value, "val_accuracy": value, "majority_baseline": 0.25, "wall_time_s": 1.0}
    if "evaluate" in config:
        summary["evaluate"] = config["evaluate"]
    else:
        cfg = RunConfig.from_dict(config)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
        summary.update(config_hash=config_hash(cfg), steps=cfg.train.max_steps, test_bpb=value)
    if finished:
        (run_dir / "summary.json").write_text(json.dumps(summary))


def fake_all(jobs, value=0.5):
    for job in jobs:
        for stage in range(len(job.configs)):
            fake_run(job, stage, value + 0.1 * job.seed)


def one_line_error(result, message):
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


# ------------------------------------------------------------------------- 1. stale runs
EDITS = {
    "train.max_steps": ("train.max_steps: 3,", "train.max_steps: 5,"),
    "data size": ("size: 60, seed: 0}", "size: 80, seed: 0}"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_file_makes_its_finished_and_interrupted_runs_stale(tmp_path, edit):
    """After an edit that changes what is trained (a run-config value, or a data option, which the
    config hash leaves out), a finished run and an interrupted one (a checkpoint, no summary) are
    stale, not done or partial; an unreadable or non-object summary is no result."""
    from rmaat.experiments.states import run_state

    root = tmp_path / "exp"
    path = write(tmp_path, TINY_EXPERIMENT)
    _, before = plan(path, root)
    fake_all(before)
    rmaat0, rmaat1 = before[0], before[1]
    (rmaat1.final_dir / "summary.json").unlink()  # interrupted: checkpoint and config only
    assert run_state(rmaat0.final_dir, rmaat0.configs[0]) == "done"
    assert run_state(rmaat1.final_dir, rmaat1.configs[0]) == "partial"
    old, new = EDITS[edit]
    path.write_text(TINY_EXPERIMENT.replace(old, new))
    _, after = plan(path, root)
    # before the fix: "partial" (resumed, then refused by the trainer) or "done" (the data edit)
    assert run_state(rmaat0.final_dir, after[0].configs[0]) == "stale"
    assert run_state(rmaat1.final_dir, after[1].configs[0]) == "stale"
    assert all(run_state(d, c) == "stale" for job in after for d, c in zip(job.run_dirs, job.configs))

    (before[2].final_dir / "summary.json").write_text("[1, 2]")  # not an object: no result, the checkpoint remains
    assert run_state(before[2].final_dir, before[2].configs[0]) == "partial"


def test_a_stage_after_a_stale_one_is_stale_and_force_replaces_both(tmp_path):
    """Only the curriculum's first stage changes; its second stage has the same config (and the
    same init_from path) but trained from the stale weights, so it is stale too. check_stale
    refuses in one line naming the count, the difference and both ways out; with force it clears
    exactly those stages."""
    from rmaat.errors import ConfigError
    from rmaat.experiments.runner import check_stale
    from rmaat.experiments.states import job_states

    root = tmp_path / "exp"
    path = write(tmp_path, TINY_EXPERIMENT)
    _, jobs = plan(path, root)
    fake_all(jobs)
    path.write_text(TINY_EXPERIMENT.replace("set: {data.seq_len: 64, model.segments: 1}}",
                                            "set: {data.seq_len: 64, model.segments: 1, optim.lr: 0.01}}"))
    exp, after = plan(path, root)
    assert [job_states(job) for job in after][4:] == [["stale", "stale"], ["stale", "stale"]]
    with pytest.raises(ConfigError) as error:
        check_stale(exp, root)
    message = str(error.value)
    assert "2 of 6 runs" in message and "curriculum seed 0, curriculum seed 1" in message
    assert "optim.lr: 0.001 != 0.01" in message and "--force" in message and "--root" in message
    assert "\n" not in message

    logged = []
    replaced = check_stale(exp, root, force=True, log=logged.append)
    assert [(job.point, job.seed) for job in replaced] == [("curriculum", 0), ("curriculum", 1)]
    assert "replacing 2 run(s)" in logged[0]
    assert [job_states(job) for job in after] == [["done"]] * 4 + [["new", "new"]] * 2
    assert not (root / "curriculum/seed0/stage1/summary.json").exists()
    assert check_stale(exp, root) == []  # nothing stale any more: the run may start


def test_report_marks_stale_runs_and_leaves_them_out_of_the_means(tmp_path):
    """`experiment report` after an edit of one grid point: that point's runs are named in a
    warning in results.md and on the terminal, marked stale in results.csv, and not averaged;
    the other points' rows are unchanged."""
    root = tmp_path / "exp"
    path = write(tmp_path, TINY_EXPERIMENT)
    _, jobs = plan(path, root / "tiny")  # the CLI's folder: <root>/<name>
    fake_all(jobs)
    path.write_text(TINY_EXPERIMENT.replace("  rmaat: {}", "  rmaat: {train.max_steps: 5}"))
    result = CliRunner().invoke(cli, ["experiment", "report", str(path), "--root", str(root)])
    assert result.exit_code == 0, result.output
    md = (root / "tiny" / "results.md").read_text()
    for text in (md, result.output):
        assert "Warning: 2 run(s) were made with another configuration" in text
        assert "rmaat seed 0, rmaat seed 1" in text and "--force" in text
    assert "| rmaat | stale only | 0 (+2 stale) |" in md
    assert "| control | 0.550 ± 0.071 | 2 |" in md  # seeds 0.5 and 0.6
    rows = list(csv.DictReader(open(root / "tiny" / "results.csv")))
    assert [(r["point"], r["config"]) for r in rows] == [("rmaat", "stale")] * 2 + [("control", "current")] * 2 + \
        [("curriculum", "current")] * 2


def test_report_command_names_the_experiment_file_as_given(tmp_path):
    root = tmp_path / "exp"
    path = write(tmp_path, TINY_EXPERIMENT)
    _, jobs = plan(path, root / "tiny")  # the CLI's folder: <root>/<name>
    fake_all(jobs)
    result = CliRunner().invoke(cli, ["experiment", "report", str(path), "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert f"Command: `pipeline experiment run {path} --scale cpu --seeds 2 --root {root}`" in \
        (root / "tiny" / "results.md").read_text()


# ------------------------------------------------------------- 2. the file, checked on load
NOT_UTF8 = TINY_EXPERIMENT.replace("Does the harness", "Caf\xe9: does the harness")
OTHER_SCALE = TINY_EXPERIMENT.replace("grid:", "  paper: {config: babi_qa1, sett: {train.max_steps: 5}}\ngrid:")


@pytest.mark.parametrize("text, message", [
    (TINY_EXPERIMENT.replace("    config: demo", "    tokens_per_s: fast\n    config: demo"),
     "scales.cpu.tokens_per_s must be a positive number, got 'fast'"),
    (None, "not UTF-8 text"),
    (TINY_EXPERIMENT.replace("    set: {data", "    sett: {data"),
     "scales.cpu: unknown key(s) ['sett']; allowed: config, data, set, tokens_per_s"),
    (OTHER_SCALE, "scales.paper: unknown key(s) ['sett']"),
    (TINY_EXPERIMENT.replace("paper: {rmaat: 0.5}", "paper: {rmaatt: 0.5}"), "paper: unknown key(s) ['rmaatt']"),
    (TINY_EXPERIMENT.replace("  rmaat: {}", "  rmaat: {cpu: {}, papr: {}}"), "unknown key(s) ['papr']"),
    (TINY_EXPERIMENT.replace("  rmaat: {}", "  rmaat: {}\n  rmaat: {model.preset: rmt}"), "duplicate key 'rmaat'"),
    (TINY_EXPERIMENT.replace("metric: test_accuracy", "metric: no_such_metric"),
     "metric 'no_such_metric' is not in the summary of a classification run"),
    (TINY_EXPERIMENT.replace("metric: test_accuracy", "metric: test_bpb"), "choose one of test_accuracy"),
    (TINY_EXPERIMENT.replace("name: tiny", "name: ../../escape"), "name must be a name of letters"),
    (TINY_EXPERIMENT.replace("name: tiny", 'name: ""'), "got ''"),
    (TINY_EXPERIMENT.replace("name: tiny", "name: null"), "got None"),
    (TINY_EXPERIMENT.replace("  rmaat: {}", "  ../../pt: {}"), "grid point name must be a name"),
    (TINY_EXPERIMENT.replace("  rmaat: {}", "  '..': {}"), "got '..'"),
])
def test_malformed_experiment_files_are_refused_on_load_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    if text is None:
        path.write_bytes(NOT_UTF8.encode("latin-1"))
    else:
        path.write_text(text)
    result = CliRunner().invoke(cli, ["experiment", "run", str(path), "--dry-run", "--root", str(tmp_path / "r")])
    one_line_error(result, message)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("point, message", [
    ("{model.preset: nosuch}", "grid.p: unknown preset 'nosuch'"),
    ("{model.d_model: abc}", "d_model must be a positive integer, got 'abc'"),
    ("{model.presett: rmt}", "unknown model option(s) presett"),
    ("{model.dropout: lots}", "a model option has a value of the wrong type"),
    ("{train.max_stepz: 3}", "unknown key 'train.max_stepz'"),
    ("{task: nosuch}", "unknown task 'nosuch'"),
    ("{stages: [{data: {size: abc}}]}", "data option size must be an integer >= 1, got 'abc'"),
    ("{stages: [{data: {length: abc}}]}", "data option length must be an integer >= 1, got 'abc'"),
    ("{stages: [{data: {depth: 3}}]}", "data option(s) depth do not apply to task babi_qa1"),
    ("{stages: [{set: {task: fashion_mnist, data.seq_len: 1024}}]}", "task fashion_mnist is not generated"),
    ("{stages: [{set: {model.preset: transformer}}, {evaluate: {segments: 4}}]}",
     "grid.p.stages[1]: an evaluate stage needs a recurrent model"),
])
def test_every_grid_point_is_validated_before_anything_runs(tmp_path, point, message):
    """validate_experiment (the check `experiment run` makes first, --dry-run included) refuses
    what would fail later in every worker, naming the grid point, and generates nothing."""
    from rmaat.errors import ConfigError
    from rmaat.experiments.validate import validate_experiment
    from rmaat.experiments.spec import load_experiment

    path = write(tmp_path, TINY_HEADER + f"grid:\n  p: {point}\n")
    with pytest.raises(ConfigError) as error:
        validate_experiment(load_experiment(str(path)), tmp_path / "root")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "root").exists()


def test_a_bad_data_option_is_one_line_before_generation_too(tmp_path):
    """Without the up-front check, a real run's data preparation refuses it in one line."""
    from rmaat.errors import ConfigError
    from rmaat.experiments.jobs import run_configs
    from rmaat.experiments.spec import load_experiment

    path = write(tmp_path, TINY_EXPERIMENT.replace("size: 60", "size: abc"))
    with pytest.raises(ConfigError, match="data option size must be an integer"):
        run_configs(load_experiment(str(path)), tmp_path / "root", log=lambda _: None)
    assert not (tmp_path / "root").exists()


def test_the_tiny_and_every_packaged_experiment_validate_at_both_scales(tmp_path):
    from rmaat.experiments.validate import validate_experiment
    from rmaat.experiments.spec import available_experiments, load_experiment

    assert len(validate_experiment(load_experiment(str(write(tmp_path, TINY_EXPERIMENT))), tmp_path)) == 6
    for name in available_experiments():
        for scale in ("cpu", "paper"):
            assert validate_experiment(load_experiment(name, scale, seeds=1), tmp_path), (name, scale)
    assert list(tmp_path.iterdir()) == [tmp_path / "tiny.yaml"]  # no data, no run directory


# ------------------------------------------------------ 2. one line for bad roots and summaries
@pytest.mark.parametrize("command", ["run", "report", "stream"])
def test_a_root_below_a_regular_file_is_one_line(tmp_path, command):
    file = tmp_path / "file"
    file.write_text("not a folder")
    path = write(tmp_path, TINY_LM if command == "stream" else TINY_EXPERIMENT)
    args = {"run": ["--dry-run"], "report": [], "stream": ["--points", "rmaat"]}[command]
    result = CliRunner().invoke(cli, ["experiment", command, str(path), *args, "--root", str(file / "sub")])
    one_line_error(result, f"--root: {file} is a file, not a folder")


def test_stream_with_no_points_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["experiment", "stream", str(write(tmp_path, TINY_LM)), "--points", ",",
                                      "--root", str(tmp_path / "r")])
    one_line_error(result, "--points names no grid point; choose from rmaat, rmt")


@pytest.mark.parametrize("content, message", [("{not json", "not a readable JSON summary"),
                                              ("[1, 2]", "a summary is a JSON object, this holds a list")])
def test_report_over_a_corrupt_summary_is_one_line_naming_it(tmp_path, content, message):
    root = tmp_path / "exp"
    path = write(tmp_path, TINY_EXPERIMENT)
    _, jobs = plan(path, root / "tiny")  # the CLI's folder: <root>/<name>
    fake_all(jobs)
    (root / "tiny/control/seed1/summary.json").write_text(content)
    result = CliRunner().invoke(cli, ["experiment", "report", str(path), "--root", str(root)])
    one_line_error(result, f"{root / 'tiny/control/seed1/summary.json'}: {message}")


# --------------------------------------------------------------------------- 3. streaming
def test_a_failed_stream_call_leaves_no_folder(tmp_path):
    root = tmp_path / "exp"
    result = CliRunner().invoke(cli, ["experiment", "stream", str(write(tmp_path, TINY_LM)), "--points", "rmaat",
                                      "--stream-bytes", "256", "--root", str(root)])
    one_line_error(result, "rmaat seed 0 has not finished training")
    assert not list(root.glob("*/streaming-*"))


def test_the_stream_cache_is_keyed_on_the_stream_count(tmp_path, monkeypatch):
    """--streams 1 after --streams 2 evaluates again (and says 1); the same count reuses."""
    import rmaat.train.lm_trainer as lm_trainer
    from rmaat.experiments.streaming import run_streaming, stream_folder

    calls = []

    def evaluate(checkpoint, *, split, device, stream_bytes, max_streams):
        calls.append(max_streams)
        return {"modes": {"carry": {"bpb": 1.0}}, "streams": max_streams, "stream_bytes": stream_bytes}

    monkeypatch.setattr(lm_trainer, "stream_evaluate_checkpoint", evaluate)
    root = tmp_path / "exp"
    exp, jobs = plan(write(tmp_path, TINY_LM), root)
    fake_run(jobs[0], 0)

    def stream(n):
        return run_streaming(exp, root, ["rmaat"], stream_bytes=256, streams=n, log=lambda _: None)

    assert stream(2)["rmaat"][0]["streams"] == 2
    assert stream(1)["rmaat"][0]["streams"] == 1
    assert stream(1)["rmaat"][0]["streams"] == 1
    assert calls == [2, 1]
    assert json.loads((stream_folder(root, 256) / "rmaat-seed0.json").read_text())["streams"] == 1


def test_a_too_short_segment_length_in_a_file_is_named_by_its_key(tmp_path):
    """The memory-task generator's checks speak `pipeline data generate`'s flags; from an experiment
    file they name the file's keys (data.segment_length), not a flag the user never typed."""
    from rmaat.errors import ConfigError
    from rmaat.experiments.data import generator_options

    with pytest.raises(ConfigError) as raised:
        generator_options("babi_qa1", {"length": 64, "segment_length": 8, "n_facts": 1})
    message = str(raised.value)
    assert "data.segment_length 8" in message and "--segment-length" not in message
    from rmaat.data.babi import BabiConfig

    with pytest.raises(ConfigError, match="--segment-length 8"):  # the CLI's wording is unchanged
        BabiConfig(length=64, segment_length=8, n_facts=1)
