"""`pipeline probe memory` (rmaat.probe.memory_probe): the linear probe on synthetic states, the
probe's segment loop against the model's own forward pass, the command end to end on a tiny
trained babi_qa1 run, and its one-line errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipelines.cli import cli
from retention.table import packaged_table_path
from rmaat.probe.memory_probe import accuracy, fit_probe, load_probe_model, run_segments
from test_data_babi import kjv  # noqa: F401  (the corpus fixture)

LENGTH, SEGMENT, SEGMENTS = 256, 64, 4
TINY = ["--d-model", "32", "--layers", "1", "--set", "model.d_ff=64", "--set", "model.n_heads=2",
        "--set", "model.n_mem=2", "--batch-size", "8", "--device", "cpu", "--no-progress",
        "--set", "train.eval_batches=1", "--max-steps", "2"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_packaged_table():
    """One torch thread and the packaged retention table (no user table of this machine is read)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RMAAT_RETENTION_TABLE", str(packaged_table_path()))
        yield
    torch.set_num_threads(threads)


def invoke(*args, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(kjv, tmp_path_factory):  # noqa: F811
    """A tiny qa1 set (4 segments of 64 bytes) and 2-step runs of rmaat and transformer on it."""
    root = tmp_path_factory.mktemp("probe")
    invoke("data", "generate", "--task", "babi_qa1", "--out", root / "data", "--length", LENGTH,
           "--segment-length", SEGMENT, "--facts", 1, "--size", 300)
    for preset in ("rmaat", "transformer"):
        invoke("train", "--task", "babi_qa1", "--data-dir", root / "data", "--run-dir", root / preset,
               "--preset", preset, "--seq-len", LENGTH, "--segments", SEGMENTS, *TINY)
    return root


# ----------------------------------------------------------------------------- the probe itself
def _synthetic(n: int, n_classes: int, seed: int, signal: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """States (n, 2, 16) that carry the label by construction: its one-hot, scaled, plus unit noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    x = torch.randn(n, 2, 16, generator=g)
    x[:, 0, :n_classes] += signal * torch.nn.functional.one_hot(y, n_classes)
    return x, y


def test_probe_decodes_a_label_the_states_carry():
    x, y = _synthetic(600, 4, seed=0)
    x_test, y_test = _synthetic(400, 4, seed=1)
    probe = fit_probe(x, y, 4)
    assert accuracy(probe.predict(x_test.flatten(1)), y_test) > 0.9


def test_probe_is_at_chance_on_shuffled_labels_and_zeroed_states():
    x, y = _synthetic(600, 4, seed=0)
    x_test, y_test = _synthetic(400, 4, seed=1)
    chance = 0.25  # balanced classes; a binomial 3-sigma band at n = 400 is about +-0.065
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(2))]
    assert abs(accuracy(fit_probe(x, shuffled, 4).predict(x_test.flatten(1)), y_test) - chance) < 0.08
    zeros = fit_probe(torch.zeros_like(x), y, 4)
    assert abs(accuracy(zeros.predict(torch.zeros_like(x_test).flatten(1)), y_test) - chance) < 0.08


def test_probe_is_deterministic():
    x, y = _synthetic(200, 3, seed=3)
    a, b = fit_probe(x, y, 3), fit_probe(x, y, 3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


# ----------------------------------------------------------------------------- the segment loop
def test_loop_reproduces_the_forward_pass_with_empty_segments():
    """Inputs of several lengths, some leaving whole segments empty (skip_empty_segments): the
    loop's read-out gives the model's logits and its carried states are the forward pass's."""
    from rmaat.encoder.model import build_model

    torch.manual_seed(0)
    model = build_model("rmaat", seq_len=32, n_segments=4, d_model=16, n_heads=2, n_layers=1, d_ff=32,
                        n_mem=2, vocab_size=20, n_classes=3, dropout=0.0).eval()
    ids = torch.randint(1, 20, (5, 32))
    mask = torch.arange(32)[None, :] < torch.tensor([32, 20, 8, 3, 17])[:, None]  # (5, 32)
    with torch.no_grad():
        logits = model(ids, mask)
    out = run_segments(model, ids, mask, torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.classify(out["read"]), logits, rtol=0, atol=1e-6)
    for mine, theirs in zip(out["carried"], model.last_memory_states[1:]):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    assert len(out["writes"]) == 4 and len(out["sensitivity"]) == 3


def test_loop_reproduces_the_trained_checkpoint(runs):
    config, spec, model, _, datasets = load_probe_model(runs / "rmaat/checkpoints/best.pt", split="test",
                                                        data_dir=str(runs / "data"))
    from rmaat.train.batching import Collate

    batch = Collate(config.data.seq_len, spec.pad_id)([datasets["test"][i] for i in range(6)])
    model.eval()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])
    out = run_segments(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(model.classify(out["read"]), logits, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- the command
def test_probe_memory_end_to_end(runs, tmp_path):
    out, figure = tmp_path / "probe.json", tmp_path / "probe.png"
    result = invoke("probe", "memory", "--checkpoint", runs / "rmaat/checkpoints/best.pt", "--data-dir",
                    runs / "data", "--out", out, "--figure", figure, "--batch-size", 16)
    assert "boundary  carried  write" in result.output and "note: This set has one fact per story." in result.output
    report = json.loads(out.read_text())
    assert figure.stat().st_size > 0
    assert report["segments"] == SEGMENTS and len(report["boundaries"]) == SEGMENTS
    assert report["n"] == 30 and report["n_train"] == 240 and report["split"] == "test"
    assert report["loop_vs_forward_max_logit_diff"] < 1e-5
    depths = [json.loads(line)["depth_segment"] for line in open(runs / "data/babi_qa1/test.jsonl")]
    labels = [json.loads(line)["label"] for line in open(runs / "data/babi_qa1/test.jsonl")]
    assert report["chance"] == pytest.approx(max(np.bincount(labels)) / len(labels))
    assert 0 < report["chance"] <= 1 and report["note"]
    for b, row in enumerate(report["boundaries"], start=1):
        assert row["boundary"] == b
        for kind in ("carried", "write"):
            assert 0 <= row[kind]["accuracy"] <= 1 and 0 <= row[kind]["train_accuracy"] <= 1
            groups = row[kind]["by_depth_segment"]
            assert {k: v["n"] for k, v in groups.items()} == {str(d): depths.count(d) for d in set(depths)}
            assert all(v["fact_read"] == (b > int(k)) for k, v in groups.items())
            assert row[f"{kind}_norm_ratio"] > 0
        if b < SEGMENTS:
            assert all(0 < v < 10 for v in row["sensitivity"].values())
        else:
            assert row["sensitivity"] is None
    # the paper rule scales the write by RF: a smaller carried memory, the same information
    assert report["boundaries"][0]["carried_norm_ratio"] < report["boundaries"][0]["write_norm_ratio"]


def _lm_checkpoint(root):
    """A 1-step byte-LM run on a tiny text corpus."""
    corpus = root / "lm_data"
    corpus.mkdir()
    for split in ("train", "val", "test"):
        (corpus / f"{split}.txt").write_text("the cat sat on the mat. " * 40)
    invoke("train", "--task", "kjv_lm", "--data-dir", corpus, "--run-dir", root / "lm", "--d-model", 16,
           "--layers", 1, "--set", "model.d_ff=32", "--set", "model.n_heads=2", "--device", "cpu", "--no-progress",
           "--batch-size", 2, "--seq-len", 64, "--segments", 2, "--max-steps", 1, "--set", "train.eval_batches=1",
           "--set", "train.final_eval_batches=1")
    return root / "lm/checkpoints/last.pt"


def test_bad_input_is_one_line(runs, tmp_path):
    ckpt, data = runs / "rmaat/checkpoints/best.pt", runs / "data"
    no_test = tmp_path / "no_test/babi_qa1"
    no_test.mkdir(parents=True)
    for name in ("generation.json", "train.jsonl"):
        (no_test / name).write_bytes((data / "babi_qa1" / name).read_bytes())
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    recurrent = "the memory probe needs a recurrent single-document classifier"
    for args, message in [
        (["--checkpoint", runs / "transformer/checkpoints/best.pt", "--data-dir", data], recurrent),
        (["--checkpoint", _lm_checkpoint(tmp_path)], "is a byte language model"),
        (["--checkpoint", ckpt, "--data-dir", tmp_path / "nowhere"], "does not exist"),
        (["--checkpoint", ckpt, "--data-dir", no_test.parent], "test.jsonl"),
        (["--checkpoint", ckpt, "--data-dir", data, "--split", "dev"], "unknown split 'dev'"),
        (["--checkpoint", tmp_path / "missing.pt", "--data-dir", data], "does not exist"),
        (["--checkpoint", corrupt, "--data-dir", data], "cannot be read"),
        (["--checkpoint", ckpt, "--data-dir", data, "--max-examples", 1], "--max-examples must be >= 2"),
        (["--checkpoint", ckpt, "--data-dir", data, "--out", tmp_path / "r.txt"], "must end in .json"),
    ]:
        result = invoke("probe", "memory", *args, ok=False)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)
