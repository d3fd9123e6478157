"""Memory tasks (bAbI facts in King James Bible haystacks): generator invariants checked by an
independent solver, the corpus and its splits, loading, and bad input.

The solver here reads only the example's text (regular expressions over the bAbI sentence forms,
then a simulation of the story); it shares no code with rmaat.data.babi.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

SENTENCE = re.compile(
    r"(?P<name>[A-Z][a-z]+) (?:(?:moved|went|journeyed|travelled) to the (?P<place>[a-z]+)"
    r"|(?P<verb>picked up|dropped) the (?P<object>[a-z]+))\. ")
QUESTION = re.compile(r"Where is (?:the )?(?P<entity>[A-Za-z]+)\?$")


@pytest.fixture(scope="module")
def kjv():
    """The corpus; the set-up scripts install it, so CI fails (not skips) without it."""
    from rmaat.data.corpus import load_kjv
    from rmaat.errors import DataError

    try:
        return load_kjv()
    except DataError as error:
        if os.environ.get("CI"):
            pytest.fail(f"the King James Bible is not installed in CI: {error}")
        pytest.skip(str(error))


def solve(text: str) -> tuple[str, list[int]]:
    """(answer, offsets of the sentences the answer depends on) from the text alone."""
    place, moved_at, holder, obj_place, obj_facts = {}, {}, {}, {}, {}
    for m in SENTENCE.finditer(text):
        name, at = m["name"], m.start()
        if m["place"]:
            place[name], moved_at[name] = m["place"], at
            for obj, who in holder.items():
                if who == name:
                    obj_place[obj], obj_facts[obj] = place[name], [obj_facts[obj][0], at]
        elif m["verb"] == "picked up":
            holder[m["object"]], obj_place[m["object"]] = name, place[name]
            obj_facts[m["object"]] = [at, moved_at[name]]
        else:
            del holder[m["object"]]
            obj_facts[m["object"]] = [at, moved_at[name]]
    asked = QUESTION.search(text)["entity"]
    if asked in place:
        return place[asked], [moved_at[asked]]
    return obj_place[asked], sorted(obj_facts[asked])


def generate(tmp_path, task="qa1", size=120, seed=0, **params):
    from rmaat.data.babi import BabiConfig, generate_babi

    cfg = BabiConfig(task=task, **params)
    generate_babi(tmp_path, size=size, seed=seed, progress=False, cfg=cfg)
    root = tmp_path / f"babi_{task}"
    splits = {s: [json.loads(line) for line in open(root / f"{s}.jsonl")] for s in ("train", "val", "test")}
    return cfg, json.loads((root / "generation.json").read_text()), splits


@pytest.mark.parametrize("task, params", [
    ("qa1", dict(length=1024, segment_length=128, n_facts=5)),
    ("qa2", dict(length=2048, segment_length=256, n_facts=6, n_people=3)),
])
def test_labels_answer_the_question_and_depths_are_where_recorded(kjv, tmp_path, task, params):
    cfg, record, splits = generate(tmp_path, task, **params)
    classes = record["classes"]
    for example in (e for rows in splits.values() for e in rows):
        text = example["text"]
        answer, support = solve(text)
        assert len(text.encode()) == cfg.length
        assert text.endswith(example["question"]) and QUESTION.search(text)
        assert classes[example["label"]] == answer == example["answer"]
        assert example["supporting_offsets"] == support
        assert example["supporting_segments"] == [o // cfg.segment_length for o in support]
        assert example["depth_segment"] == min(example["supporting_segments"])
        for offset in example["fact_offsets"]:  # every fact lies inside one segment
            end = text.index(".", offset)
            assert offset // cfg.segment_length == end // cfg.segment_length
        assert len(SENTENCE.findall(text)) == cfg.n_facts


def test_fact_words_never_occur_in_the_haystack(kjv, tmp_path):
    from rmaat.data.babi import NAMES, OBJECTS, PLACES

    corpus_text = "\n".join(kjv.verses).lower()
    assert not [w for w in NAMES + PLACES + OBJECTS if w.lower() in corpus_text]
    _, _, splits = generate(tmp_path, "qa2", length=1024, segment_length=128, n_facts=4)
    for example in splits["test"]:
        haystack = SENTENCE.sub("", example["text"]).removesuffix(example["question"]).lower()
        assert not [w for w in NAMES + PLACES + OBJECTS if w.lower() in haystack]


def test_haystacks_are_real_text_from_disjoint_splits(kjv, tmp_path):
    from rmaat.data.corpus import SplitText, split_verses

    verse_splits = split_verses(kjv)
    sets = {s: set(v.tolist()) for s, v in verse_splits.items()}
    assert sum(len(v) for v in sets.values()) == len(kjv) == 31_102
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    _, _, splits = generate(tmp_path, "qa1", length=2048, segment_length=256)
    for split, rows in splits.items():
        source = SplitText(kjv, verse_splits[split]).text
        for example in rows:
            haystack = SENTENCE.sub("", example["text"]).removesuffix(example["question"]).rstrip()
            assert haystack in source  # the facts removed, what is left is this split's own text
            first, last = example["haystack_verses"]
            assert first in sets[split] and last in sets[split]


def test_fact_segments_confine_the_facts(kjv, tmp_path):
    cfg, _, splits = generate(tmp_path, "qa1", length=256, segment_length=128, n_facts=2, fact_segments=(0,))
    for example in splits["train"]:
        assert all(example["text"].index(".", o) < 128 for o in example["fact_offsets"])
        assert example["depth_segment"] == 0


def test_generation_is_deterministic_per_seed(kjv, tmp_path):
    params = dict(length=1024, segment_length=128)
    a = generate(tmp_path / "a", seed=3, **params)[2]
    b = generate(tmp_path / "b", seed=3, **params)[2]
    c = generate(tmp_path / "c", seed=4, **params)[2]
    assert a == b and a != c


def test_every_requested_length_is_exact(kjv, tmp_path):
    for length in (1024, 2048, 4096, 8192, 16384):
        cfg, _, splits = generate(tmp_path / str(length), size=30, length=length, segment_length=512)
        assert {len(e["text"].encode()) for rows in splits.values() for e in rows} == {length}


def test_loader_items_and_the_last_segment_view(kjv, tmp_path):
    import torch

    from rmaat.data import load_split
    from rmaat.train.batching import load_splits
    from rmaat.train.config import load_task_config
    from rmaat.errors import DataError

    generate(tmp_path, "qa1", length=512, segment_length=128)
    ds = load_split("babi_qa1", tmp_path, "val")
    item = ds[0]
    assert item["input_ids"].shape == (512,) and item["attention_mask"].all()
    assert bytes((item["input_ids"] - 1).tolist()).endswith(b"?")
    assert set(ds.metadata["depth_segment"].tolist()) <= {0, 1, 2, 3}

    config = load_task_config("babi_qa1")
    config.data.data_dir = str(tmp_path)
    config.data.seq_len = 256
    with pytest.raises(DataError, match="512-byte examples .* use --seq-len 512"):
        load_splits(config, ds.spec, ("val",))
    config.data.truncate = "left"  # the no-memory control: only the end of each example
    tail = load_splits(config, ds.spec, ("val",))["val"][0]
    assert torch.equal(tail["input_ids"], item["input_ids"][256:])


def test_missing_package_is_one_line_naming_it(tmp_path, monkeypatch):
    from rmaat.data.corpus import load_kjv
    from rmaat.errors import DataError

    monkeypatch.setenv("RMAAT_DATA_HOME", str(tmp_path))  # no cache
    monkeypatch.setenv("PATH", str(tmp_path))  # no bible command
    with pytest.raises(DataError, match="apt-get install bible-kjv bible-kjv-text"):
        load_kjv()


def test_corpus_cache_is_written_once_and_reused(kjv, tmp_path, monkeypatch):
    from rmaat.data.corpus import kjv_cache_path, load_kjv

    monkeypatch.setenv("RMAAT_DATA_HOME", str(tmp_path))
    first = load_kjv()
    assert kjv_cache_path().is_file() and first.verses == kjv.verses
    monkeypatch.setenv("PATH", str(tmp_path))  # the command is gone: the cache must serve
    assert load_kjv().refs[-1] == "Rev22:21"
    kjv_cache_path().write_text("damaged\n")
    monkeypatch.undo()
    monkeypatch.setenv("RMAAT_DATA_HOME", str(tmp_path))
    assert len(load_kjv()) == 31_102  # a damaged cache is rebuilt


def test_registry_classes_match_the_generator():
    from rmaat.data import get_task
    from rmaat.data.babi import PLACES

    assert get_task("babi_qa1").class_names == get_task("babi_qa2").class_names == PLACES
    assert not get_task("babi_qa1").is_lra and not get_task("kjv_match").is_lra


def test_impossible_configs_are_refused():
    from rmaat.data.babi import BabiConfig
    from rmaat.errors import ConfigError

    for params, message in [
        (dict(length=1000, segment_length=128), "not a multiple"),
        (dict(length=256, segment_length=16), "shorter than a fact"),
        (dict(length=256, segment_length=128, n_facts=4, fact_segments=(0,)), "do not fit"),
        (dict(length=256, segment_length=128, fact_segments=(2,)), "within 0..1"),
        (dict(task="qa3"), "unknown memory task"),
        (dict(task="qa2", n_facts=1), "at least 2 facts"),
    ]:
        with pytest.raises(ConfigError, match=message):
            BabiConfig(**params)
    np.testing.assert_equal(BabiConfig(length=256, segment_length=128).n_segments, 2)


def test_single_fact_depths_are_uniform_over_segments_even_in_short_windows(kjv, tmp_path):
    # 64-byte segments hold few sentence boundaries: placing facts at random boundaries would
    # pile them up at the window's start and end (seen: 342 / 105 / 353 of 800)
    _, _, splits = generate(tmp_path, "qa1", size=1500, length=192, segment_length=64, n_facts=1)
    depths = np.bincount([e["depth_segment"] for e in splits["train"]], minlength=3)
    assert depths.min() > 0.8 * depths.mean(), depths
