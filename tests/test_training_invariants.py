"""Training behaviours no other test pins: evaluation leaves every RNG alone, resuming a finished
run, and the retention factors a run takes from ``model.retention_table`` / ``retention_variant``."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from pipelines.cli import cli
from retention import build_table, fit_macro_model, read_table, write_table
from retention.table import packaged_table_path
from rmaat.train.checkpoint import load_checkpoint
from rmaat.train.checkpoint import atomic_torch_save
from rmaat.train.metrics import read_metrics
from rmaat.train.trainer import Trainer
from test_train_loop import RESUME_ARGS, TINY, write_listops_max


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """One torch thread (tiny models on a shared 2-core machine) and the packaged table as the
    user table, so that no table of this machine is read."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def listops_dir(tmp_path_factory):
    return write_listops_max(tmp_path_factory.mktemp("listops"), (24, 8, 8))


def train(*args):
    """``pipeline train`` in-process on the tiny model; returns the click Result."""
    return CliRunner().invoke(cli, ["train", *map(str, args), *TINY], catch_exceptions=False)


# ------------------------------------------------------------------------------ evaluation
def test_evaluation_draws_no_random_numbers():
    """evaluate_split on a model with dropout (in training mode when called) leaves torch's,
    numpy's and Python's global RNG states exactly as they were (exact resume relies on it: a
    validation pass sits between two training steps), and puts the model back in training mode."""
    from rmaat.encoder.model import build_model
    from rmaat.train.batching import Collate
    from rmaat.train.evaluation import evaluate_split

    torch.manual_seed(0)
    model = build_model("rmaat", retention_factors=[0.6, 0.4], vocab_size=20, n_classes=3, d_model=16, n_heads=2,
                        n_layers=1, d_ff=32, seq_len=16, n_segments=2, dropout=0.5)
    g = torch.Generator().manual_seed(3)
    data = [{"input_ids": torch.randint(1, 20, (int(n),), generator=g), "label": i % 3}
            for i, n in enumerate(torch.randint(4, 17, (10,), generator=g))]
    x = Collate(16)(data[:2])["input_ids"]
    state = torch.get_rng_state()
    model.train()(x)
    assert not torch.equal(torch.get_rng_state(), state)  # the premise: a training-mode forward draws

    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    before = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    result = evaluate_split(model, data, batch_size=4, collate=Collate(16), device=torch.device("cpu"),
                            precision="fp32", n_classes=3)
    assert torch.equal(torch.get_rng_state(), before[0])
    after_np = np.random.get_state()
    assert after_np[0] == before[1][0] and np.array_equal(after_np[1], before[1][1]) and after_np[2:] == before[1][2:]
    assert random.getstate() == before[2]
    assert model.training and result["n"] == 10


# ---------------------------------------------------------------------- resume a finished run
def test_resuming_a_finished_run_trains_nothing_and_redoes_the_final_evaluation(listops_dir, tmp_path):
    """``--resume`` on a run that reached max_steps takes no step (parameters, optimiser state and
    data position unchanged, bit for bit), evaluates val and test again, and leaves a log and a
    summary as if the run had ended once: the old final val/test rows are replaced, not repeated."""
    run_dir = tmp_path / "run"
    first = train("--task", "listops", "--data-dir", listops_dir, "--run-dir", run_dir, "--seq-len", 16,
                  "--segments", 2, "--max-steps", 4, "--batch-size", 4, "--eval-every", 2,
                  "--set", "train.log_every=2")
    assert first.exit_code == 0, first.output
    done = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    records, summary = read_metrics(run_dir), json.loads((run_dir / "summary.json").read_text())

    again = CliRunner().invoke(cli, ["train", "--run-dir", str(run_dir), "--resume", "--no-progress"],
                               catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "test accuracy" in again.output
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == 4 and resumed["data_position"] == done["data_position"]
    for key, value in done["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for a, b in zip(done["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["step"], b["step"])

    def untimed(rows):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in rows]

    assert untimed(read_metrics(run_dir)) == untimed(records)  # same rows, each once
    assert [(r["step"], r["split"]) for r in read_metrics(run_dir) if r["split"] != "train"] == [
        (2, "val"), (4, "val"), (4, "test")]
    summary_again = json.loads((run_dir / "summary.json").read_text())
    for key in ("steps", "best_step", "test_accuracy", "test_loss", "val_accuracy", "n_test"):
        assert summary_again[key] == summary[key], key


# ------------------------------------------------------------------- retention-factor source
@pytest.fixture(scope="module")
def hill_table(tmp_path_factory):
    """A table from a Hill curve (not the packaged exponential fit), rows T = 2, 3, 4."""
    seg = np.arange(1, 9)
    sim = xr.Dataset({"ltp_end": ("segment", 0.6 * seg**0.8 / (3.0**0.8 + seg**0.8), {"units": "1"})},
                     coords={"segment": seg}, attrs={"model": "test"})
    path = tmp_path_factory.mktemp("table") / "hill.nc"
    return write_table(build_table(sim, fit_macro_model(sim["ltp_end"].values), [2, 3, 4]), path)


@pytest.mark.parametrize("variant, variable", [("paper", "retention_factor"),
                                               ("streaming", "retention_factor_streaming")])
def test_training_uses_the_row_of_the_table_and_variant_it_is_given(listops_dir, tmp_path, hill_table,
                                                                    variant, variable):
    """``--set model.retention_table=PATH`` (and ``model.retention_variant``) make the run scale its
    memory by exactly that table's row for T = 3 (paper RF(t, 3), or the streaming r_t): the model's
    buffer and the checkpoint hold it, and it differs from the packaged table's and the other variant's."""
    run_dir = tmp_path / "run"
    result = train("--task", "listops", "--data-dir", listops_dir, "--run-dir", run_dir, "--seq-len", 24,
                   "--segments", 3, "--max-steps", 1, "--batch-size", 4, "--set", f"model.retention_table={hill_table}",
                   "--set", f"model.retention_variant={variant}")
    assert result.exit_code == 0, result.output
    table = read_table(hill_table)
    expected = table[variable].sel(total_segments=3).values[:3]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    np.testing.assert_allclose(state["retention_factors"], expected, rtol=1e-12)
    np.testing.assert_allclose(state["model"]["retention_factors"].double().numpy(), expected, rtol=1e-6)
    other = "retention_factor_streaming" if variant == "paper" else "retention_factor"
    assert not np.allclose(expected, table[other].sel(total_segments=3).values[:3])
    assert not np.allclose(expected, read_table(packaged_table_path())[variable].sel(total_segments=3).values[:3])


# ------------------------------------------------------------- signals, workers, world size
def _signal_during_step_3(monkeypatch, *signals):
    """Send ``signals`` to this process during optimiser step 3, as a user or a scheduler would."""
    real_step = Trainer._train_step

    def step_then_signal(self):
        real_step(self)
        if self.step == 3:
            for sig in signals:
                os.kill(os.getpid(), sig)

    monkeypatch.setattr(Trainer, "_train_step", step_then_signal)


def test_sigterm_saves_a_checkpoint_as_ctrl_c_does(listops_dir, tmp_path, monkeypatch):
    """SIGTERM (a cluster's time limit) finishes the step, saves last.pt and exits with 143
    (128 + SIGTERM's 15, not SIGINT's 130), and the SIGTERM handler from before the run is back
    afterwards."""
    run_dir = tmp_path / "run"
    _signal_during_step_3(monkeypatch, signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(cli, ["train", *map(str, (*RESUME_ARGS, "--data-dir", listops_dir,
                                                          "--run-dir", run_dir))])
    assert result.exit_code == 143, result.output
    assert "stopped at step 3/10" in result.output
    assert signal.getsignal(signal.SIGTERM) is before
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 3


def test_a_second_ctrl_c_aborts_without_saving(listops_dir, tmp_path, monkeypatch):
    """A second SIGINT before the step is over aborts at once (click's "Aborted!", exit status 1):
    no checkpoint is written for the interrupted session (save_every = 4 has not come), and both
    handlers are restored."""
    run_dir = tmp_path / "run"
    _signal_during_step_3(monkeypatch, signal.SIGINT, signal.SIGINT)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # brian2 may have its own
    result = CliRunner().invoke(cli, ["train", *map(str, (*RESUME_ARGS, "--data-dir", listops_dir,
                                                          "--run-dir", run_dir))])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert result.output.rstrip().endswith("Aborted!") and result.output.count("stop requested") == 1
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_loader_workers_change_nothing(listops_dir, tmp_path):
    """``data.num_workers = 2`` feeds the same batches in the same order: the parameters after
    3 steps equal those of the in-process loader bit for bit."""
    states = []
    for workers in (0, 2):
        run_dir = tmp_path / f"w{workers}"
        result = train("--task", "listops", "--data-dir", listops_dir, "--run-dir", run_dir, "--seq-len", 16,
                       "--segments", 2, "--max-steps", 3, "--batch-size", 4, "--set", f"data.num_workers={workers}",
                       "--set", "train.eval_batches=1", "--set", "train.final_eval_batches=1")
        assert result.exit_code == 0, result.output
        states.append(load_checkpoint(run_dir / "checkpoints" / "last.pt"))
    assert states[0]["data_position"] == states[1]["data_position"]
    for key, value in states[0]["model"].items():
        assert torch.equal(states[1]["model"][key], value), key


def test_resuming_with_another_world_size_is_refused(listops_dir, tmp_path):
    """The data order is dealt per rank, so a checkpoint of 2 processes must not be resumed by 1:
    a one-line CheckpointError (exit status 1), and the checkpoint is left as it was."""
    run_dir = tmp_path / "run"
    first = train("--task", "listops", "--data-dir", listops_dir, "--run-dir", run_dir, "--seq-len", 16,
                  "--segments", 2, "--max-steps", 4, "--batch-size", 4, "--set", "train.stop_after=1")
    assert first.exit_code == 0, first.output
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    state["world_size"] = 2  # as written under torchrun --nproc-per-node 2
    atomic_torch_save(state, last)
    before = last.read_bytes()
    result = CliRunner().invoke(cli, ["train", "--run-dir", str(run_dir), "--resume", "--no-progress"])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "written by 2 process(es) and this run has 1" in lines[0], result.output
    assert last.read_bytes() == before
