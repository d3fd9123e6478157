"""kjv_text and kjv_match (LRA-shaped stand-ins on real text): labels follow the task's rule,
passages are real text of their own split, pairs never overlap, loading and the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from test_data_babi import kjv  # noqa: F401  (the corpus fixture)
from retention.table import packaged_table_path

PACKAGED_TABLE = str(packaged_table_path())  # as the user table: no user table of this machine is read


def read(root):
    return {s: [json.loads(line) for line in open(root / f"{s}.jsonl")] for s in ("train", "val", "test")}


def split_text(corpus, split, books):
    """This split's verses of ``books`` (names), joined as the generators join them."""
    from rmaat.data.corpus import BOOKS, split_verses

    names = [name for _, name in BOOKS]
    ids = [i for i in split_verses(corpus)[split] if names[corpus.books[i]] in books]
    return " ".join(corpus.verses[i] for i in ids)


def test_kjv_text_passages_come_from_their_labelled_group(kjv, tmp_path):  # noqa: F811
    from rmaat.data.corpus import BOOKS
    from rmaat.data.kjv import BOOK_GROUPS, generate_kjv_text

    generate_kjv_text(tmp_path, size=60, seed=1, progress=False, corpus=kjv)
    names = [name for _, name in BOOKS]
    groups = [names[names.index(first):names.index(last) + 1] for _, first, last in BOOK_GROUPS]
    for split, rows in read(tmp_path / "kjv_text").items():
        texts = [split_text(kjv, split, books) for books in groups]
        other_splits = [split_text(kjv, s, names) for s in ("train", "val", "test") if s != split]
        for row in rows:
            assert len(row["text"].encode()) == 4096
            holders = [g for g, text in enumerate(texts) if row["text"] in text]
            assert holders == [row["label"]]
            assert not any(row["text"] in text for text in other_splits)


def test_kjv_match_labels_say_same_book_and_pairs_never_overlap(kjv, tmp_path):  # noqa: F811
    from rmaat.data.kjv import generate_kjv_match

    generate_kjv_match(tmp_path, size=40, seed=2, progress=False, corpus=kjv)
    for split, rows in read(tmp_path / "kjv_match").items():
        assert {r["label"] for r in rows} == {0, 1}
        for row in rows:
            book_1, book_2 = row["books"]
            assert row["label"] == int(book_1 == book_2)
            text_1, text_2 = split_text(kjv, split, {book_1}), split_text(kjv, split, {book_2})
            at_1, at_2 = text_1.find(row["text"]), text_2.find(row["text_2"])
            assert at_1 >= 0 and at_2 >= 0
            if row["label"]:
                assert at_1 + 4096 <= at_2 or at_2 + 4096 <= at_1


def test_generate_and_load_through_the_cli(kjv, tmp_path):  # noqa: F811
    from pipelines.cli import cli
    from rmaat.data import load_split

    for task in ("kjv_text", "kjv_match", "babi_qa2"):
        out = tmp_path / task
        args = ["data", "generate", "--task", task, "--out", str(out), "--size", "30"]
        if task == "babi_qa2":
            args += ["--length", "1024", "--segment-length", "256"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert "stand-in, not an LRA task" in result.output
        check = CliRunner().invoke(cli, ["data", "check", "--task", task, "--data-dir", str(out)])
        assert check.exit_code == 0 and check.output.rstrip().endswith("OK"), check.output
    pair = load_split("kjv_match", tmp_path / "kjv_match", "test")[0]
    assert pair["input_ids"].shape == pair["input_ids_2"].shape == (4096,)


@pytest.mark.parametrize("args, message", [
    (["--task", "babi_qa1", "--length", "1000", "--segment-length", "128"], "not a multiple of --segment-length 128"),
    (["--task", "babi_qa1", "--length", "256", "--segment-length", "128", "--fact-segments", "5"], "within 0..1"),
    (["--task", "babi_qa1", "--segment-length", "8"], "shorter than a fact sentence"),
    (["--task", "babi_qa1", "--fact-segments", "x"], "not a whole number"),
    (["--task", "kjv_text", "--length", "1024"], "apply to babi_qa1 and babi_qa2 only"),
    (["--task", "babi_qa7"], "unknown task 'babi_qa7'"),
    (["--task", "babi_qa1", "--size", "2"], "too small"),
])
def test_bad_generate_requests_are_one_line_and_write_nothing(tmp_path, args, message):
    from pipelines.cli import cli

    result = CliRunner().invoke(cli, ["data", "generate", "--out", str(tmp_path / "d"), *args])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a user error, not a crash
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_package_through_the_cli(tmp_path):
    from pipelines.cli import cli

    env = {"PATH": str(tmp_path / "bin"), "RMAAT_DATA_HOME": str(tmp_path / "home")}
    result = CliRunner(env=env).invoke(cli, ["data", "generate", "--task", "babi_qa1", "--out", str(tmp_path / "d")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "apt-get install bible-kjv bible-kjv-text" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("task", ["kjv_text", "kjv_match"])
def test_packaged_configs_train_a_few_steps_and_say_stand_in(kjv, task, tmp_path, monkeypatch):  # noqa: F811
    import torch

    from pipelines.cli import cli

    monkeypatch.setenv("RMAAT_RETENTION_TABLE", PACKAGED_TABLE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generated = CliRunner().invoke(cli, ["data", "generate", "--task", task, "--out", str(tmp_path / "d"),
                                             "--size", "40"])
        assert generated.exit_code == 0, generated.output
        result = CliRunner().invoke(cli, [
            "train", "--task", task, "--data-dir", str(tmp_path / "d"), "--run-dir", str(tmp_path / "r"),
            "--seq-len", "64", "--max-steps", "2", "--batch-size", "4", "--d-model", "32", "--layers", "1",
            "--set", "model.d_ff=64", "--device", "cpu", "--no-progress"], catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["is_lra"] is False and "stand-in task, not an LRA result" in result.output
