"""`pipeline train --task kjv_lm` (the byte LM), `pipeline evaluate` and `pipeline generate` end to end
on CPU with tiny models, the KJV byte splits, and the streaming evaluation (rmaat.lm.stream).

A small text corpus in a data directory (train.txt / val.txt / test.txt) stands in for the KJV
where only the training machinery is under test; the held-out-book splits and the "beats the
unigram baseline on the KJV" check use the real text (Debian's bible-kjv).
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipelines.cli import cli
from retention.table import packaged_table_path
from rmaat.data.corpus import BOOKS, load_kjv
from rmaat.data.kjv_lm import (
    WindowSampler, eval_windows, held_out_books, kjv_split_text, load_byte_split, split_of_book,
    unigram_bits_per_byte,
)
from rmaat.lm.model import build_lm
from rmaat.lm.stream import bpb_by_segment, evaluate_stream, mode_factors, streaming_factors, t_free_factor
from rmaat.train.checkpoint import load_checkpoint
from rmaat.train.metrics import read_metrics

PACKAGED_TABLE = str(packaged_table_path())
TINY = ["--d-model", "32", "--layers", "1", "--set", "model.d_ff=64", "--set", "model.n_heads=2",
        "--set", "model.n_mem=2", "--device", "cpu", "--no-progress", "--batch-size", "4",
        "--seq-len", "128", "--segments", "2", "--eval-every", "20",
        "--set", "train.eval_batches=2", "--set", "train.final_eval_batches=4", "--set", "train.save_every=20"]


pytestmark = pytest.mark.usefixtures("one_thread_packaged_table")  # (conftest.py)


def invoke(*args, ok=True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


SENTENCES = ["the cat sat on the mat. ", "a dog ran in the park. ", "the sun is warm today. ",
             "we like to read books. ", "birds sing in the morning. "]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A byte-LM data directory of simple repeated sentences (learnable in a few dozen steps)."""
    root = tmp_path_factory.mktemp("lmdata")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3000), ("val", 300), ("test", 300)):
        text = "".join(SENTENCES[i] for i in rng.integers(0, len(SENTENCES), n))
        (root / f"{split}.txt").write_text(text)
    return root


# ------------------------------------------------------------------ data
def test_splits_hold_out_whole_books():
    assert {split_of_book(b) for b in range(len(BOOKS))} == {"train", "val", "test"}
    test, val = held_out_books("test"), held_out_books("val")
    assert test == ["2 Samuel", "Proverbs", "Amos", "Matthew", "Philippians", "1 Peter"]
    assert not set(test) & set(val)
    corpus = load_kjv()
    train_text = kjv_split_text("train").decode()
    for split in ("val", "test"):
        for name in held_out_books(split):
            book = [n for _, n in BOOKS].index(name)
            verses = corpus.book_verses(book)
            # a held-out book's (long enough) verses never occur in the training stream
            for i in (verses[0], verses[len(verses) // 2], verses[-1]):
                if len(corpus.verses[i]) > 60:
                    assert corpus.verses[i] not in train_text
    assert kjv_split_text("test").startswith(corpus.verses[corpus.book_verses(9)[0]].encode())


def test_window_sampler_is_resumable_and_shifted():
    data = np.arange(1000, dtype=np.uint8)
    a = WindowSampler(data, length=16, batch_size=3, seed=5)
    batches = [a.next() for _ in range(4)]
    b = WindowSampler(data, length=16, batch_size=3, seed=5)
    b.restore(a.position() | {"batch": 2})
    assert np.array_equal(b.next()["idx"], batches[2]["idx"])
    for batch in batches:
        assert batch["idx"].shape == (3, 16)
        assert np.array_equal(batch["idx"][:, 1:], batch["targets"][:, :-1])
        assert np.array_equal((batch["idx"] + 1) % 256, batch["targets"])
    other_rank = WindowSampler(data, length=16, batch_size=3, seed=5, rank=1)
    assert not np.array_equal(other_rank.next()["idx"], batches[0]["idx"])


def test_eval_windows_predict_every_byte_once():
    data = np.zeros(1001, dtype=np.uint8)
    starts = eval_windows(data, 100)
    assert len(starts) == 10
    covered = np.concatenate([np.arange(s + 1, s + 101) for s in starts])
    assert np.array_equal(covered, np.arange(1, 1001))


def test_unigram_bits_per_byte():
    train = np.frombuffer(b"aab" * 100, dtype=np.uint8)
    test = np.frombuffer(b"ab", dtype=np.uint8)
    p_a, p_b = (200 + 1) / (300 + 256), (100 + 1) / (300 + 256)
    assert unigram_bits_per_byte(train, test) == pytest.approx(-(np.log2(p_a) + np.log2(p_b)) / 2)


def test_bigram_bits_per_byte():
    from rmaat.data.kjv_lm import bigram_bits_per_byte

    train = np.frombuffer(b"ab" * 50, dtype=np.uint8)                    # a->b 50 times, b->a 49 times
    test = np.frombuffer(b"aba", dtype=np.uint8)                          # predicts b after a, a after b
    p_ab, p_ba = (50 + 1) / (50 + 256), (49 + 1) / (49 + 256)
    assert bigram_bits_per_byte(train, test) == pytest.approx(-(np.log2(p_ab) + np.log2(p_ba)) / 2)


def test_own_corpus_needs_its_files(tmp_path):
    from rmaat.errors import DataError

    with pytest.raises(DataError, match="train.txt"):
        load_byte_split("train", tmp_path)


# ------------------------------------------------------------------ training
def test_train_evaluate_generate(tmp_path, corpus_dir):
    run = tmp_path / "run"
    out = invoke("train", "--task", "kjv_lm", "--data-dir", corpus_dir, "--run-dir", run, "--max-steps", 150,
                 "--lr", "1e-2", *TINY).output
    summary = json.loads((run / "summary.json").read_text())
    assert f"test bits/byte {summary['test_bpb']:.4f} vs unigram byte baseline {summary['unigram_bpb']:.4f}" in out
    assert summary["objective"] == "lm" and summary["backprop"] == "amrb" and summary["segments"] == 2
    assert summary["test_bpb"] < summary["unigram_bpb"] - 1.0  # repeated sentences: far below unigram
    records = read_metrics(run)
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert all("bpb" in r for r in records)
    assert (run / "curves.png").is_file() and any((run / "tensorboard").iterdir())
    # `pipeline plot training` draws the run's own curves (bits per byte, unigram baseline)
    invoke("plot", "training", run, "--out", tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == (run / "curves.png").read_bytes()
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["step"] == summary["best_step"] and -best["best_val_score"] == pytest.approx(summary["val_bpb"])
    # evaluate reproduces the run's test number from best.pt
    ev = invoke("evaluate", "--checkpoint", run / "checkpoints" / "best.pt", "--json", "--device", "cpu",
                "--batch-size", 4)
    result = json.loads(ev.output)
    assert result["n"] >= summary["n_test"]
    assert result["unigram_bpb"] == pytest.approx(unigram_bits_per_byte(
        load_byte_split("train", corpus_dir), load_byte_split("test", corpus_dir)[1:result["n"] + 1]))
    assert summary["bigram_bpb"] < summary["unigram_bpb"]
    # generation prints the prompt and the requested number of bytes, the same for the same seed
    gen = [invoke("generate", "--checkpoint", run / "checkpoints" / "best.pt", "--prompt", "the ",
                  "--max-bytes", 60, "--seed", s).stdout_bytes for s in (3, 3, 4)]
    assert gen[0] == gen[1] != gen[2]
    assert gen[0].startswith(b"the ") and len(gen[0]) == len(b"the ") + 60 + 1
    # greedy streaming generation (memory carried with the T-free r_t) == argmax of the full
    # forward re-run on the growing text with the same factors
    greedy = invoke("generate", "--checkpoint", run / "checkpoints" / "best.pt", "--prompt", "the cat",
                    "--max-bytes", 150, "--temperature", 0).stdout_bytes
    from rmaat.lm.stream import t_free_factor
    from rmaat.train.lm_trainer import load_lm_checkpoint

    model, _, _ = load_lm_checkpoint(run / "checkpoints" / "best.pt")
    factor = t_free_factor(horizon=8)
    model.retention_loader = lambda T, variant: np.array([factor(t) for t in range(T)])
    model.cfg.retention = "streaming"  # the rule the decoder uses; cached factors cleared below
    model._rf_cache.clear()
    text = list(b"the cat")
    with torch.no_grad():
        for _ in range(150):
            logits, _ = model(torch.tensor([text]))
            text.append(int(logits[0, -1].argmax()))
    assert greedy == bytes(text) + b"\n"


@pytest.mark.parametrize("preset", ["rmaat", "rmt"])
def test_resume_is_exact(tmp_path, corpus_dir, preset):
    """4 steps, stop, resume from the run directory alone, 4 steps == 8 uninterrupted steps, bit
    for bit (weights, optimiser moments, metrics, summary), with dropout on."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["train", "--task", "kjv_lm", "--data-dir", corpus_dir, "--preset", preset, "--max-steps", 8,
              *TINY, "--set", "model.dropout=0.1", "--set", "train.log_every=2", "--eval-every", 3]
    invoke(*common, "--run-dir", straight)
    invoke(*common, "--run-dir", split, "--set", "train.stop_after=4")
    assert load_checkpoint(split / "checkpoints" / "last.pt")["step"] == 4
    assert not (split / "summary.json").exists()
    invoke("train", "--run-dir", split, "--resume", "--no-progress")
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight, split))
    assert a["step"] == b["step"] == 8 and a["data_position"] == b["data_position"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    timing = ("elapsed_s", "tokens_per_s")
    assert ([{k: v for k, v in r.items() if k not in timing} for r in read_metrics(straight)]
            == [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(split)])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, split))
    assert (sa["test_bpb"], sa["val_bpb"], sa["best_step"]) == (sb["test_bpb"], sb["val_bpb"], sb["best_step"])


def test_amrb_and_bptt_train_the_same_weights(tmp_path, corpus_dir):
    """The trainer's AMRB step (per-segment-loss replay) gives BPTT's gradients: after 4 steps
    with dropout on the weights agree to float32 rounding."""
    runs = {}
    for mode in ("amrb", "bptt"):
        runs[mode] = tmp_path / mode
        invoke("train", "--task", "kjv_lm", "--data-dir", corpus_dir, "--max-steps", 4, "--backprop", mode,
               "--run-dir", runs[mode], *TINY, "--set", "model.dropout=0.1")
    a = load_checkpoint(runs["amrb"] / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(runs["bptt"] / "checkpoints" / "last.pt")["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_kjv_demo_beats_unigram(tmp_path):
    """The Done-when check at test size: on the real KJV, with whole books held out, a tiny
    RMAAT's test bits per byte is clearly below the unigram byte baseline."""
    run = tmp_path / "kjv"
    invoke("train", "--task", "kjv_lm", "--run-dir", run, "--max-steps", 150, "--lr", "1e-2", *TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["unigram_bpb"] > 4.0
    assert summary["test_bpb"] < summary["unigram_bpb"] - 0.5, summary


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("args, message", [
    (["--preset", "transformer", "--backprop", "amrb"], "no segments to replay"),
    (["--set", "model.n_classes=3"], "unknown model option(s) n_classes"),
    (["--set", "model.segment_len=64"], "through data.seq_len / model.segments"),
    (["--preset", "at"], "not a language-model preset"),
])
def test_bad_lm_configs_are_one_line_errors(tmp_path, corpus_dir, args, message):
    result = invoke("train", "--task", "kjv_lm", "--data-dir", corpus_dir, "--run-dir", tmp_path / "r",
                    "--max-steps", 1, *TINY, *args, ok=False)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_lm_cli_errors(tmp_path, corpus_dir):
    run = tmp_path / "run"
    invoke("train", "--task", "kjv_lm", "--data-dir", corpus_dir, "--run-dir", run, "--max-steps", 2, *TINY)
    ckpt = run / "checkpoints" / "last.pt"
    for args, message in [
        (["evaluate", "--checkpoint", ckpt, "--stream-bytes", 100], "multiple of the segment length 64"),
        (["evaluate", "--checkpoint", ckpt, "--by", "depth"], "--by and --segments are for classifiers"),
        (["evaluate", "--checkpoint", ckpt, "--stream-bytes", 128, "--figure", tmp_path], "is a directory"),
        (["evaluate", "--checkpoint", ckpt, "--figure", tmp_path / "f.png"], "need --stream-bytes"),
        (["generate", "--checkpoint", ckpt, "--prompt", "x", "--max-bytes", -1], "--max-bytes must be >= 0"),
        (["generate", "--checkpoint", ckpt, "--prompt", "x", "--top-k", 0], "top_k must be None or an integer >= 1"),
        (["generate", "--checkpoint", ckpt, "--prompt", ""], "prompt must be non-empty"),
    ]:
        result = invoke(*args, ok=False)
        assert result.exit_code == 1 and message in result.output, (args, result.output)


# ------------------------------------------------------------------ streaming evaluation
def _tiny_lm(loader=None, **overrides):
    torch.manual_seed(0)
    cfg = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, segment_len=8, n_mem=2, dropout=0.0)
    return build_lm(overrides.pop("preset", "rmaat"), retention_loader=loader, **{**cfg, **overrides}).double().eval()


def test_stream_bpb_equals_the_forward_with_the_same_factors():
    factors = np.array([0.9, 0.5, 0.7, 0.2, 0.6])
    model = _tiny_lm(loader=lambda T, v: factors[:T])
    streams = torch.randint(0, 256, (3, 41))                               # 5 segments of 8 + 1
    by_segment = bpb_by_segment(model, streams, factors)
    with torch.no_grad():
        logits, loss = model(streams[:, :-1], streams[:, 1:])
    assert by_segment.mean() == pytest.approx(float(loss) / np.log(2), rel=1e-12)
    per_byte = torch.nn.functional.cross_entropy(logits.flatten(0, 1), streams[:, 1:].flatten(), reduction="none")
    per_segment = per_byte.view(3, 5, 8).mean(dim=(0, 2)) / np.log(2)
    np.testing.assert_allclose(by_segment, per_segment.numpy(), rtol=1e-12)


def test_stream_reset_reads_every_segment_alone():
    model = _tiny_lm(loader=lambda T, v: np.full(T, 0.5))
    streams = torch.randint(0, 256, (2, 25))                               # 3 segments of 8 + 1
    by_segment = bpb_by_segment(model, streams, None)
    for t in range(3):
        s = t * 8
        with torch.no_grad():
            _, loss = model(streams[:, s:s + 8], streams[:, s + 1:s + 9])  # one segment, initial memory
        assert by_segment[t] == pytest.approx(float(loss) / np.log(2), rel=1e-12)
    carried = bpb_by_segment(model, streams, np.full(3, 0.5))
    assert carried[0] == pytest.approx(by_segment[0]) and not np.allclose(carried[1:], by_segment[1:])


def test_streaming_factors_continue_the_table():
    from retention import load_retention_factors

    r, known = streaming_factors(100)
    table = load_retention_factors(64, variant="streaming")
    assert known == 64 and np.array_equal(r[:64], table)
    ratio = table[-1] / table[-2]
    np.testing.assert_allclose(r[64:] / r[63:-1], ratio, rtol=1e-12)
    factor = t_free_factor(horizon=8)
    assert [factor(t) for t in (0, 5, 70)] == pytest.approx([r[0], r[5], r[70]], rel=1e-12)


def test_train_rule_holds_the_last_training_factor():
    rf = np.array([0.4, 0.35, 0.25])
    factors, _ = mode_factors("train", 6, 3, lambda T, v: rf if T == 3 else None)
    assert factors.tolist() == [0.4, 0.35, 0.25, 0.25, 0.25, 0.25]


def test_evaluate_stream_reports_every_rule():
    model = _tiny_lm(loader=lambda T, v: np.full(T, 1.0 / T))
    data = np.random.default_rng(0).integers(0, 256, 500).astype(np.uint8)
    result = evaluate_stream(model, data, stream_bytes=64, train_segments=2,
                             loader=lambda T, v: np.full(T, 1.0 / T), max_streams=3)
    assert result["streams"] == 3 and set(result["modes"]) == {"train", "paper", "streaming", "reset"}
    assert all(len(r["bpb_by_segment"]) == 8 for r in result["modes"].values())
    rmt = _tiny_lm(preset="rmt")
    assert set(evaluate_stream(rmt, data, stream_bytes=64, train_segments=2, loader=None)["modes"]) == {"carry", "reset"}


# ------------------------------------------------------------------ the lm experiment
TINY_LM_EXPERIMENT = """
name: tinylm
question: Does the harness train and stream-evaluate byte LMs?
task: kjv_lm
metric: test_bpb
seeds: 2
scales:
  cpu:
    config: kjv_lm
    set: {{data.data_dir: {data}, data.seq_len: 64, model.segments: 2, model.d_model: 16, model.n_heads: 2,
          model.d_ff: 32, model.n_layers: 1, model.n_mem: 2, train.max_steps: 3, train.batch_size: 2,
          train.eval_every: 3, train.eval_batches: 1, train.final_eval_batches: 2, train.save_every: 3}}
grid:
  rmaat: {{}}
  rmt: {{model.preset: rmt}}
  transformer: {{model.preset: transformer, model.segments: 1}}
"""


def test_lm_experiment_runs_reports_and_streams(tmp_path, corpus_dir):
    path = tmp_path / "tinylm.yaml"
    path.write_text(TINY_LM_EXPERIMENT.format(data=corpus_dir))
    root = tmp_path / "exp"
    out = invoke("experiment", "run", path, "--root", root, "--jobs", 1).output
    assert "| grid point | mean ± std | n | 95% CI | unigram bytes | paper |" in out
    summary = json.loads((root / "tinylm" / "rmt" / "seed1" / "summary.json").read_text())
    assert summary["preset"] == "rmt" and summary["objective"] == "lm"
    assert f"| rmt | {np.mean([json.loads((root / 'tinylm' / 'rmt' / f'seed{s}' / 'summary.json').read_text())['test_bpb'] for s in (0, 1)]):.3f}" in out
    args = ["experiment", "stream", path, "--points", "rmaat,rmt", "--stream-bytes", 256, "--streams", 2,
            "--root", root]
    table = invoke(*args).output
    for row in ("| rmaat | train |", "| rmaat | paper |", "| rmaat | streaming |", "| rmaat | reset |",
                "| rmt | carry |", "| rmt | reset |"):
        assert row in table
    folder = root / "tinylm" / "streaming-256"
    assert (folder / "streaming.png").is_file()
    stamp = (folder / "rmaat-seed0.json").stat().st_mtime_ns
    assert "rmaat seed 0:" in table and "rmaat seed 0:" not in invoke(*args).output  # nothing re-evaluated
    assert (folder / "rmaat-seed0.json").stat().st_mtime_ns == stamp
    bad = invoke("experiment", "stream", path, "--points", "transformer", "--root", root, "--stream-bytes", 256,
                 ok=False)
    assert bad.exit_code == 1 and "the transformer preset has no memory" in bad.output


@pytest.mark.parametrize("scale", ["cpu", "paper"])
def test_packaged_lm_experiment_builds_and_steps(scale, tmp_path):
    """Every grid point of the lm experiment validates, builds its LM and takes one training
    step of its backprop mode on two segments of random bytes."""
    from rmaat.experiments.jobs import run_configs
    from rmaat.experiments.spec import load_experiment
    from rmaat.lm.amrb import lm_forward_backward
    from rmaat.train.config import RunConfig
    from rmaat.train.lm_trainer import build_run_lm, lm_backprop

    jobs = run_configs(load_experiment("lm", scale, seeds=1), tmp_path, prepare=False)
    assert [j.point for j in jobs] == [f"{p}_{c}" for p in ("rmaat", "rmt", "transformer") for c in ("2k", "4k", "8k")]
    for job in jobs:
        config = RunConfig.from_dict(job.configs[0])
        model, _ = build_run_lm(config)
        assert config.data.seq_len * config.train.batch_size == 8192 or scale == "paper"
        idx = torch.randint(0, 256, (1, 2 * model.cfg.segment_len if model.cfg.recurrent else 512))
        loss = lm_forward_backward(model, idx, idx.roll(-1, 1), backprop=lm_backprop(config))
        assert torch.isfinite(loss), job.point


@pytest.mark.parametrize("seq_len, segments", [(2048, 4), (16384, 32)])
def test_contexts_from_2k_to_16k_in_512_byte_segments(tmp_path, seq_len, segments):
    """kjv_lm at the issue's shortest and longest contexts: one AMRB step over 512-byte segments,
    with the paper RF of that T from the packaged table."""
    run = tmp_path / "run"
    invoke("train", "--task", "kjv_lm", "--run-dir", run, "--max-steps", 1, "--seq-len", seq_len,
           "--segments", segments, "--batch-size", 1, "--d-model", 16, "--layers", 1, "--set", "model.d_ff=32",
           "--set", "model.n_heads=2", "--set", "model.n_mem=2", "--device", "cpu", "--no-progress",
           "--set", "train.final_eval_batches=1")
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["segments"], summary["segment_len"], summary["n_test"]) == (segments, 512, seq_len)
    assert len(summary["retention_factors"]) == segments and sum(summary["retention_factors"]) == pytest.approx(1.0)
