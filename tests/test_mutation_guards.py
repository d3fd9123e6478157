"""Guards found missing by a mutation pass: each test below fails when the behaviour it names is
broken in the source, where every other test still passed.

1. `run_job` resumes a checkpointed run (it does not retrain it from scratch).
2. The byte-bigram baseline of an LM run is fitted on the training bytes, not on the test bytes.
3. The classification report gives the mean (std, n, 95% CI) over every seed's summary.
4. The byte LM passes mem_{t+1} = RF[t] * mem'_{t+1} from segment t to segment t+1.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipelines.cli import cli
from retention.table import packaged_table_path
from test_data_babi import kjv  # noqa: F401  (the corpus fixture)

PACKAGED_TABLE = str(packaged_table_path())  # as the user table: no user table of this machine is read


pytestmark = pytest.mark.usefixtures("one_thread_packaged_table")  # (conftest.py)


# ====================================================================== 1. run_job resumes
RESUME_EXPERIMENT = """
name: resumable
question: Does an interrupted run resume?
task: babi_qa1
metric: test_accuracy
seeds: 1
paper: {}
scales:
  cpu:
    data: {length: 128, segment_length: 64, n_facts: 1, size: 60, seed: 0}
    config: demo/babi_qa1_short
    set: {data.seq_len: 128, model.segments: 2, model.backprop: null, model.d_model: 16, model.n_heads: 2,
          model.d_ff: 32, model.n_layers: 1, train.max_steps: 4, train.batch_size: 4, train.eval_every: 4,
          train.save_every: 1, train.log_every: 1, model.retention_table: null}
grid:
  rmaat: {}
"""


def _train_records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


@pytest.mark.slow
def test_run_job_resumes_an_interrupted_run_from_its_checkpoint(kjv, tmp_path):  # noqa: F811
    """A job whose run stopped after 2 of 4 steps (``train.stop_after``: last.pt saved, no summary)
    is resumed by `run_job`, not retrained: metrics.jsonl keeps the first session's two train
    records verbatim (a fresh start would clear them and log its own, with its own timings) and
    has each of the 4 train steps exactly once; the losses, the best checkpoint's weights and the
    result equal those of the same job run without interruption."""
    from rmaat.experiments.jobs import run_configs
    from rmaat.experiments.stages import run_job
    from rmaat.experiments.states import run_state
    from rmaat.experiments.spec import load_experiment
    from rmaat.train.checkpoint import load_checkpoint
    from rmaat.train.config import RunConfig
    from rmaat.train.trainer import Trainer

    path = tmp_path / "resumable.yaml"
    path.write_text(RESUME_EXPERIMENT)
    exp = load_experiment(str(path))
    (interrupted,) = run_configs(exp, tmp_path / "a", log=lambda message: None)
    (straight,) = run_configs(exp, tmp_path / "b", log=lambda message: None)
    run_dir = interrupted.final_dir

    # the interrupted session: the job's own config, stopped after 2 steps
    first = copy.deepcopy(interrupted.configs[0])
    first["train"]["stop_after"] = 2
    trainer = Trainer(RunConfig.from_dict(first), run_dir, progress=False, echo=lambda *a, **k: None)
    assert trainer.fit() is None and trainer.step == 2
    assert run_state(run_dir, interrupted.configs[0]) == "partial"
    before = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in before if json.loads(line)["split"] == "train"] == [1, 2]

    resumed = run_job(interrupted)
    reference = run_job(straight)

    records = _train_records(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # each step once
    kept = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train" and json.loads(line)["step"] <= 2]
    assert kept == [line for line in before if json.loads(line)["split"] == "train"], \
        "the first session's records were rewritten: the run was retrained from step 0, not resumed"
    assert [r["loss"] for r in records] == [r["loss"] for r in _train_records(straight.final_dir)]
    for key in ("steps", "best_step", "test_accuracy", "test_loss", "val_accuracy", "final_val_accuracy",
                "config_hash"):
        assert resumed[key] == reference[key], key
    ours = load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"]
    theirs = load_checkpoint(straight.final_dir / "checkpoints" / "best.pt")["model"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ============================================================ 2. bigram baseline from train bytes
def _bigram_bits(train: bytes, scored: bytes) -> float:
    """Reference: bits per byte of scored[1:] given the previous byte, add-one smoothed pair
    counts of ``train`` (written out here, independently of rmaat.data.kjv_lm)."""
    pairs = Counter(zip(train[:-1], train[1:]))
    previous = Counter(train[:-1])
    return sum(-math.log2((pairs[a, b] + 1) / (previous[a] + 256))
               for a, b in zip(scored[:-1], scored[1:])) / (len(scored) - 1)


def test_lm_bigram_baseline_is_fitted_on_the_training_split(tmp_path):
    """The byte-bigram bits per byte that an LM run reports (summary.json, and `pipeline
    evaluate`) are those of add-one smoothed pair counts of the *training* split, scored on the
    test bytes the model predicted. The test split here is the training text reversed (the
    same bytes, other pairs), so a baseline fitted on the test bytes is > 1 bit/byte lower."""
    rng = np.random.default_rng(0)
    words = ["the cat sat on the mat. ", "a dog ran in the park. ", "we like to read books. ",
             "birds sing in the morning. "]
    text = {split: "".join(words[i] for i in rng.integers(0, len(words), n))
            for split, n in (("train", 200), ("val", 30), ("test", 120))}
    text["test"] = text["test"][::-1]
    data = tmp_path / "data"
    data.mkdir()
    for split, body in text.items():
        (data / f"{split}.txt").write_text(body)
    train, test = text["train"].encode(), text["test"].encode()

    run = tmp_path / "run"
    args = ["train", "--task", "kjv_lm", "--data-dir", data, "--run-dir", run, "--max-steps", 2,
            "--d-model", 16, "--layers", 1, "--set", "model.d_ff=32", "--set", "model.n_heads=2",
            "--set", "model.n_mem=2", "--device", "cpu", "--no-progress", "--batch-size", 4,
            "--seq-len", 128, "--segments", 2, "--set", "train.final_eval_batches=4"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    scored = test[:summary["n_test"] + 1]
    expected = _bigram_bits(train, scored)
    assert abs(expected - _bigram_bits(scored, scored)) > 1.0  # the two fits differ clearly here
    assert summary["bigram_bpb"] == pytest.approx(expected, rel=1e-9)

    evaluated = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                                         "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert report["bigram_bpb"] == pytest.approx(_bigram_bits(train, test[:report["n"] + 1]), rel=1e-9)


# ====================================================== 3. the report's mean over seeds
REPORT_EXPERIMENT = """
name: fake
question: Does the report average over seeds?
task: babi_qa1
metric: test_accuracy
seeds: 3
paper: {rmaat: 0.9}
scales:
  cpu:
    data: {length: 128, segment_length: 64, n_facts: 1, size: 60, seed: 0}
    config: demo/babi_qa1_short
    set: {data.seq_len: 128, model.segments: 2, train.max_steps: 3, model.retention_table: null}
grid:
  rmaat: {}
  control: {data.seq_len: "{segment_length}", model.segments: 1, data.truncate: left}
"""

#: per point, per seed: (test accuracy, majority baseline, accuracy by depth segment 0 and 1)
FAKE_RESULTS = {"rmaat": [(0.30, 0.20, 0.1, 0.5), (0.45, 0.30, 0.4, 0.5), (0.90, 0.40, 0.7, 1.0)],
                "control": [(0.20, 0.25, 0.2, 0.2), (0.25, 0.25, 0.3, 0.2), (0.60, 0.25, 1.0, 0.2)]}


def _t_summary(values):
    """Hand-computed mean, sample std and 95% t-interval of three values, clipped to an
    accuracy's range [0, 1] (as results.md says)."""
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = 4.302652729911275 * std / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    return mean, std, max(mean - half, 0.0), min(mean + half, 1.0)


def test_classification_report_gives_the_mean_and_interval_over_every_seed(tmp_path):
    """Three finished runs per grid point (summary.json with the config hash the runner checks,
    so the runner would skip them as done): results.csv has one row per seed with that seed's
    value, and results.md the mean ± std, n = 3, the 95% t-interval and the majority baseline of
    all three seeds (not of the first), and the by-depth table the mean over the seeds."""
    from rmaat.experiments.jobs import run_configs
    from rmaat.experiments.states import run_state
    from rmaat.experiments.spec import load_experiment
    from rmaat.train.config import RunConfig, config_hash

    path = tmp_path / "fake.yaml"
    path.write_text(REPORT_EXPERIMENT)
    exp = load_experiment(str(path))
    root = tmp_path / "exp"
    folder = root / exp.name
    for job in run_configs(exp, folder, prepare=False):
        accuracy, majority, depth0, depth1 = FAKE_RESULTS[job.point][job.seed]
        config = job.configs[-1]
        job.final_dir.mkdir(parents=True)
        (job.final_dir / "summary.json").write_text(json.dumps({
            "task": exp.task, "preset": "rmaat", "steps": 3, "best_step": 3, "test_accuracy": accuracy,
            "val_accuracy": accuracy, "majority_baseline": majority, "wall_time_s": 1.0,
            "config_hash": config_hash(RunConfig.from_dict(config)),
            "test_accuracy_by_depth": {"0": {"accuracy": depth0, "n": 10}, "1": {"accuracy": depth1, "n": 10}}}))
        assert run_state(job.final_dir, config) == "done"

    result = CliRunner().invoke(cli, ["experiment", "report", str(path), "--root", str(root)])
    assert result.exit_code == 0, result.output

    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [(r["point"], int(r["seed"]), float(r["value"])) for r in rows] == \
        [(p, s, FAKE_RESULTS[p][s][0]) for p in ("rmaat", "control") for s in range(3)]
    md = (folder / "results.md").read_text()
    for point, paper in (("rmaat", "0.9"), ("control", "–")):
        values = [seed[0] for seed in FAKE_RESULTS[point]]
        mean, std, low, high = _t_summary(values)
        majority = sum(seed[1] for seed in FAKE_RESULTS[point]) / 3
        assert (f"| {point} | {mean:.3f} ± {std:.3f} | 3 | [{low:.3f}, {high:.3f}] | {majority:.3f} | {paper} |"
                in md), md
        assert abs(mean - values[0]) > 0.05  # the first seed alone would show another number
        depth = [sum(seed[k] for seed in FAKE_RESULTS[point]) / 3 for k in (2, 3)]
        assert f"| {point} | {depth[0]:.3f} | {depth[1]:.3f} |" in md, md


# ============================================== 4. the LM's memory recurrence mem_{t+1} = RF[t] mem'
def test_lm_memory_entering_segment_t_plus_1_is_rf_t_times_segment_t_write_output():
    """In a forward pass of the rmaat byte LM over T = 3 segments, with retention factors
    (0.5, 2.0, 3.5) that are neither 1 nor equal, the memory entering segment t+1 (the read
    block of the first layer's input, seen by a forward pre-hook) is RF[t] times segment t's
    write output (the write rows of the final LayerNorm's output, seen by a forward hook); the
    memory entering segment 0 is mem_init."""
    from rmaat.lm.model import build_lm

    factors = np.array([0.5, 2.0, 3.5])
    torch.manual_seed(0)
    model = build_lm("rmaat", retention_loader=lambda total, variant: factors[:total], d_model=16, n_heads=2,
                     n_layers=1, d_ff=32, segment_len=8, n_mem=2, dropout=0.0).eval()
    m = model.cfg.n_mem
    entering, written = [], []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda mod, args: entering.append(args[0][:, :m].clone())),
             model.final_norm.register_forward_hook(lambda mod, args, out: written.append(out[:, -m:].clone()))]
    idx = torch.randint(0, 256, (2, 24))
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(entering) == len(written) == 3
    torch.testing.assert_close(entering[0], model.initial_memory(2))
    for t in range(2):
        torch.testing.assert_close(entering[t + 1], float(factors[t]) * written[t], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(entering[t + 1], written[t], atol=1e-3)  # the factor really scales
