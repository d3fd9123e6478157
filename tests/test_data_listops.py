"""ListOps: generator labels against an independent evaluator, LRA's bounds, the TSV loader."""

import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures_data import LISTOPS_ROWS, write_listops
from pipelines.cli import cli
from rmaat.data import get_task, load_split
from rmaat.data.listops import (
    GENERATION_FILE, ListOpsConfig, generate_examples, generate_listops, sample_example,
)
from rmaat.data.tokenize import LISTOPS_VOCAB
from rmaat.errors import ConfigError, DataError


def reference_value(text: str) -> tuple[int, int, int, list[int]]:
    """Evaluate LRA's text form with a stack (independent of the generator's code).

    Returns (value, token count without parentheses, depth, argument counts of operators).
    """
    stack: list[tuple[str, list[int]]] = []
    n_tokens, depth, arg_counts = 0, 0, []
    result = None
    for tok in text.split():
        if tok in "()":
            continue
        n_tokens += 1
        if tok.startswith("["):
            stack.append((tok, []))
            depth = max(depth, len(stack))
            continue
        if tok == "]":
            op, args = stack.pop()
            arg_counts.append(len(args))
            value = {
                "[MIN": lambda a: min(a),
                "[MAX": lambda a: max(a),
                "[MED": lambda a: int(np.median(a)),
                "[SM": lambda a: sum(a) % 10,
            }[op](args)
        else:
            value = int(tok)
            depth = max(depth, len(stack) + 1)
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    assert not stack and result is not None
    return result, n_tokens, depth, arg_counts


def test_generated_labels_match_independent_evaluation_and_bounds():
    examples = generate_examples(60, seed=3)
    assert len({text for text, _ in examples}) == 60  # duplicates are dropped
    for text, label in examples:
        value, n_tokens, depth, arg_counts = reference_value(text)
        assert label == value
        assert 500 < n_tokens < 2000
        assert depth <= 10
        assert all(2 <= n <= 10 for n in arg_counts)


def test_reported_length_counts_the_tokens_the_loader_keeps():
    rng = random.Random(1)
    drawn = [d for d in (sample_example(rng) for _ in range(300)) if d is not None]
    assert drawn
    for text, _, length in drawn:
        assert length == reference_value(text)[1]


def test_generation_is_deterministic_in_seed():
    assert generate_examples(5, seed=7) == generate_examples(5, seed=7)
    assert generate_examples(5, seed=7) != generate_examples(5, seed=8)


def test_small_config_bounds_are_respected():
    cfg = ListOpsConfig(min_length=10, max_length=40, max_depth=4, max_args=3)
    for text, label in generate_examples(50, seed=0, cfg=cfg):
        value, n_tokens, depth, arg_counts = reference_value(text)
        assert label == value and 10 < n_tokens < 40 and depth <= 4
        assert all(2 <= n <= 3 for n in arg_counts)


@pytest.mark.parametrize("low, high", [(10, 250), (0, 8), (40, 60)])
def test_short_length_bounds_keep_lra_rules_and_labels(low, high):
    cfg = ListOpsConfig(min_length=low, max_length=high)  # LRA's depth/arity, other lengths
    examples = generate_examples(80, seed=5, cfg=cfg)
    assert len({text for text, _ in examples}) == 80
    for text, label in examples:
        value, n_tokens, depth, arg_counts = reference_value(text)
        assert label == value
        assert low < n_tokens < high
        assert depth <= 10 and all(2 <= n <= 10 for n in arg_counts)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(min_length=-1), "min_length must be >= 0"),
        (dict(min_length=100, max_length=100), r"max_length \(100\) must be at least min_length \+ 2"),
        (dict(min_length=300, max_length=200), "must be at least"),
        (dict(min_length=1, max_length=4), r"no ListOps expression has 1 < length < 4 \(lengths are 1 or >= 4\)"),
        (dict(max_args=1), "max_args >= 2"),
    ],
)
def test_impossible_bounds_raise_one_line_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        ListOpsConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_bounds_too_narrow_for_the_size_raise_instead_of_looping():
    # only the ten one-digit expressions have length 1 (an operator brings >= 4 tokens)
    assert len(generate_examples(10, seed=0, cfg=ListOpsConfig(min_length=0, max_length=2))) == 10
    with pytest.raises(ConfigError, match="distinct expressions .* widen the length bounds or lower"):
        generate_examples(11, seed=0, cfg=ListOpsConfig(min_length=0, max_length=2))


def test_short_set_records_its_rules_and_lra_set_keeps_lra_layout(tmp_path):
    cfg = ListOpsConfig(min_length=10, max_length=250)
    sizes = generate_listops(tmp_path / "short", size=30, seed=1, progress=False, cfg=cfg)
    record = json.loads((tmp_path / "short" / "listops-1000" / GENERATION_FILE).read_text())
    assert record["lra_rules"] is False and "not LRA ListOps" in record["kind"]
    assert record["rules"]["min_length"] == 10 and record["rules"]["max_length"] == 250
    assert record["seed"] == 1 and record["sizes"] == sizes
    ds = load_split("listops", tmp_path / "short", "train")
    assert int(ds[0]["attention_mask"].sum()) < 250
    generate_listops(tmp_path / "lra", size=3, seed=1, progress=False)
    assert not (tmp_path / "lra" / "listops-1000" / GENERATION_FILE).exists()


def _generate(*args: str):
    return CliRunner().invoke(cli, ["data", "generate", "--task", "listops", *args])


def test_cli_length_bounds(tmp_path):
    out = tmp_path / "d"
    result = _generate("--out", str(out), "--size", "20", "--min-length", "10", "--max-length", "250")
    assert result.exit_code == 0, result.output
    assert "short-ListOps demo set (10 < length < 250 tokens; not LRA ListOps)" in result.output
    for line in (out / "listops-1000" / "basic_train.tsv").read_text().splitlines()[1:]:
        text, label = line.split("\t")
        value, n_tokens, _, _ = reference_value(text)
        assert int(label) == value and 10 < n_tokens < 250
    assert json.loads((out / "listops-1000" / GENERATION_FILE).read_text())["rules"]["max_length"] == 250

    bad = _generate("--out", str(tmp_path / "e"), "--size", "20", "--min-length", "300", "--max-length", "200")
    assert bad.exit_code == 1 and isinstance(bad.exception, SystemExit)  # a user error, not a crash
    assert "max_length (200) must be at least min_length + 2" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "e").exists()
    bad = CliRunner().invoke(cli, ["data", "generate", "--task", "pathfinder", "--out", str(tmp_path / "p"),
                                   "--size", "10", "--max-length", "50"])
    assert bad.exit_code == 1 and isinstance(bad.exception, SystemExit)
    assert "listops only" in bad.output and not (tmp_path / "p").exists()


def test_generate_writes_official_layout_and_loads(tmp_path):
    sizes = generate_listops(tmp_path, size=30, seed=0, progress=False)
    assert sizes == {"train": 24, "val": 3, "test": 3}
    tsv = tmp_path / "listops-1000" / "basic_val.tsv"
    lines = tsv.read_text().splitlines()
    assert lines[0] == "Source\tTarget" and len(lines) == 4
    ds = load_split("listops", tmp_path, "val")
    assert len(ds) == 3
    item = ds[0]
    assert item["input_ids"].shape == (2048,) and item["input_ids"].dtype == torch.long
    assert item["attention_mask"].dtype == torch.bool
    text, label = lines[1].split("\t")
    n = int(item["attention_mask"].sum())
    assert n == reference_value(text)[1]
    assert item["label"].item() == int(label) and item["label"].shape == ()
    assert (item["input_ids"][n:] == 0).all() and (item["input_ids"][:n] > 0).all()


def test_loader_reads_fixture_and_tokenises(tmp_path):
    write_listops(tmp_path)
    ds = load_split("listops", tmp_path / "listops-1000", "train")
    assert ds.labels.tolist() == [label for _, label in LISTOPS_ROWS]
    item = ds[1]  # ( ( ( [SM 3 ) 8 ) ] )
    ids = item["input_ids"][item["attention_mask"]].tolist()
    assert [LISTOPS_VOCAB[i] for i in ids] == ["[SM", "3", "8", "]"]
    assert get_task("listops").vocab_size == len(LISTOPS_VOCAB)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("( [MAX 2 ) 9 ) ] )\tseven", "not an integer"),
        ("( [MAX 2 ) 9 ) ] )\t12", "outside 0..9"),
        ("( [MAX 2 ) 9 ) ] )", "2 tab-separated fields"),
        ("( [MAXX 2 ) 9 ) ] )\t9", r"unknown ListOps token '\[MAXX'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    folder = write_listops(tmp_path)
    path = folder / "basic_test.tsv"
    lines = path.read_text().splitlines()
    lines.insert(3, bad_line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_split("listops", tmp_path, "test")
    assert f"{path}:4" in str(err.value)


def test_missing_header_and_missing_file(tmp_path):
    folder = write_listops(tmp_path)
    (folder / "basic_val.tsv").write_text("( ( [SM 3 ) 8 ) ] )\t1\n")
    with pytest.raises(DataError, match=r"basic_val.tsv:1: expected the header"):
        load_split("listops", tmp_path, "val")
    (folder / "basic_test.tsv").unlink()
    with pytest.raises(DataError, match=r"missing ListOps file .*basic_test.tsv.*data generate"):
        load_split("listops", tmp_path, "test")


def test_shorter_seq_len_override(tmp_path):
    write_listops(tmp_path)
    ds = load_split("listops", tmp_path, "train", seq_len=8)
    item = ds[0]  # 9 tokens, cut to 8
    assert item["input_ids"].shape == (8,) and item["attention_mask"].all()
    assert ds.n_truncated == 1
    with pytest.raises(ConfigError, match="seq_len 4096 is outside 1..2048"):
        load_split("listops", tmp_path, "train", seq_len=4096)
