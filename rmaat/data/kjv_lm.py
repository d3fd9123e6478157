"""Byte-level language modelling on the King James Bible (``kjv_lm``, SPEC §8).

Not an LRA task: the data behind ``pipeline train --task kjv_lm`` and the ``lm`` experiment.

Splits hold out whole books, so the test text is text the model never saw in any form (unlike
the verse-level 80/10/10 split of the classification stand-ins):

* test: the books whose canonical index is 9 mod 10 — 2 Samuel, Proverbs, Amos, Matthew,
  Philippians, 1 Peter (8.6 % of the bytes; prose, wisdom poetry, prophecy, gospel, letters);
* val:  index 4 mod 10 — Deuteronomy, Ezra, Lamentations, Habakkuk, Romans, 2 Timothy, Jude (6.7 %);
* train: the other 53 books (84.7 %, about 3.5 MB).

Each split is one byte stream: its books in canonical order, one verse a line, a blank line
between books (ASCII, so bytes = characters). Any other corpus works the same way: a directory
(``data.data_dir``) with ``train.txt``, ``val.txt`` and ``test.txt`` is read as raw bytes.

Training draws windows of ``length + 1`` bytes at uniformly random offsets (the input and its
next-byte targets); :class:`WindowSampler` derives the offsets of micro-batch k from
``(seed, rank, k)`` alone, so a resumed run continues with exactly the windows it would have
seen. Evaluation scores consecutive non-overlapping windows (:func:`eval_windows`), each from a
fresh memory, in order, so it is deterministic.

:func:`unigram_bits_per_byte` is the baseline every result is printed next to: the test stream's
cross-entropy under the train stream's byte frequencies (add-one smoothed over 256 bytes).
:func:`bigram_bits_per_byte` (add-one smoothed byte pairs) is printed beside it: a model below the
bigram uses more than the previous byte, one at the bigram's level does not use its context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmaat.data.corpus import BOOKS, load_kjv
from rmaat.errors import ConfigError, DataError

#: Language-modelling tasks: a run config with one of these names trains a causal LM.
LM_TASKS: tuple[str, ...] = ("kjv_lm",)
LM_TITLE = "KJV bytes (held-out books; not an LRA task)"
TEST_BOOK_RESIDUE, VAL_BOOK_RESIDUE = 9, 4
SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


def is_lm_task(task: str) -> bool:
    """True when ``task`` is trained as a causal language model rather than a classifier."""
    return task in LM_TASKS


def split_of_book(book: int) -> str:
    """"test", "val" or "train" for a canonical book index (see the module docstring)."""
    if book % 10 == TEST_BOOK_RESIDUE:
        return "test"
    if book % 10 == VAL_BOOK_RESIDUE:
        return "val"
    return "train"


def held_out_books(split: str) -> list[str]:
    """Names of the books of ``split`` in canonical order."""
    return [name for book, (_, name) in enumerate(BOOKS) if split_of_book(book) == split]


def kjv_split_text(split: str) -> bytes:
    """The byte stream of one split of the KJV (books in order, verse per line, blank line between books)."""
    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    corpus = load_kjv()
    books = []
    for book in range(len(BOOKS)):
        if split_of_book(book) == split:
            books.append("\n".join(corpus.verses[i] for i in corpus.book_verses(book)) + "\n")
    return "\n".join(books).encode("ascii")


def split_source(split: str, data_dir: str | Path | None = None) -> str:
    """How messages name a split: its file, or "the KJV <split> split" (``data_dir`` None)."""
    if split not in SPLIT_FILES:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    if data_dir is None:
        return f"the KJV {split} split"
    return str(Path(data_dir).expanduser() / SPLIT_FILES[split])


def load_byte_split(split: str, data_dir: str | Path | None = None, *, context: int | None = None,
                    fix: str = "lower data.seq_len (--seq-len)") -> np.ndarray:
    """One split as a (n,) uint8 array: the KJV (``data_dir`` None) or ``data_dir/<split>.txt``.

    ``context``: the bytes one window reads; the split must hold one window and the byte after
    it (its target), else a DataError naming the file, its length, the length needed and ``fix``.
    Checked where the split is read, so that a run refuses a short file before it writes
    anything, not at the first evaluation of that split."""
    if data_dir is None:
        data = kjv_split_text(split)
    else:
        path = Path(split_source(split, data_dir))
        if not path.is_file():
            raise DataError(f"{path} does not exist: a byte-LM data directory holds "
                            f"{', '.join(SPLIT_FILES.values())} (or leave data.data_dir unset for the KJV)")
        data = path.read_bytes()
    if len(data) < 2:
        raise DataError(f"{split_source(split, data_dir)} has {len(data)} byte(s); a language model needs at least 2")
    if context is not None and len(data) < context + 1:
        raise DataError(f"{split_source(split, data_dir)} has {len(data):,} bytes, fewer than the {context + 1:,} "
                        f"of one {context:,}-byte window and the byte after it; {fix}")
    return np.frombuffer(data, dtype=np.uint8).copy()


@dataclass
class WindowSampler:
    """Random training windows of ``length + 1`` bytes, resumable from a batch counter.

    Batch k of this rank takes its offsets from ``np.random.default_rng([seed, rank, k])``: no
    state but ``k`` (:meth:`position` / :meth:`restore`), and ranks draw different windows.
    """

    data: np.ndarray
    length: int
    batch_size: int
    seed: int
    rank: int = 0
    k: int = 0

    def __post_init__(self) -> None:
        if len(self.data) < self.length + 1:
            raise DataError(f"the training split has {len(self.data)} bytes, fewer than one window of "
                            f"{self.length + 1}; lower data.seq_len")

    def position(self) -> dict[str, int]:
        return {"batch": self.k}

    def restore(self, position: dict[str, int]) -> None:
        self.k = int(position["batch"])

    def next(self) -> dict[str, np.ndarray]:
        """{"idx": (B, L), "targets": (B, L)} int64 arrays; targets are idx shifted by one byte."""
        rng = np.random.default_rng([self.seed, self.rank, self.k])
        self.k += 1
        starts = rng.integers(0, len(self.data) - self.length, size=self.batch_size)  # window = L + 1 bytes
        windows = np.stack([self.data[s:s + self.length + 1] for s in starts]).astype(np.int64)  # (B, L + 1)
        return {"idx": windows[:, :-1], "targets": windows[:, 1:]}


def eval_windows(data: np.ndarray, length: int, limit: int | None = None) -> np.ndarray:
    """Start offsets of consecutive non-overlapping windows of ``length`` predicted bytes.

    Window w covers bytes [s, s + length] (inputs s .. s+length-1, targets s+1 .. s+length), with
    s = w · length, so every byte after the first is predicted exactly once (the tail shorter
    than a window is dropped). ``limit`` keeps the first ``limit`` windows.
    """
    n = (len(data) - 1) // length
    if n < 1:
        raise DataError(f"the split has {len(data)} bytes, fewer than one evaluation window of "
                        f"{length + 1}; lower data.seq_len")
    starts = np.arange(n, dtype=np.int64) * length
    return starts if limit is None else starts[:limit]


def byte_counts(data: np.ndarray) -> np.ndarray:
    """(256,) int64 count of each byte value."""
    return np.bincount(data, minlength=256).astype(np.int64)


def unigram_bits_per_byte(train: np.ndarray, test: np.ndarray) -> float:
    """Cross-entropy (bits per byte) of ``test`` under add-one smoothed byte frequencies of ``train``."""
    probs = (byte_counts(train) + 1.0) / (len(train) + 256.0)
    counts = byte_counts(test)
    return float(-(counts * np.log2(probs)).sum() / max(1, counts.sum()))


def bigram_bits_per_byte(train: np.ndarray, test: np.ndarray) -> float:
    """Cross-entropy (bits per byte) of test[1:] given the byte before, under add-one smoothed
    byte-pair counts of ``train``."""
    pairs = np.zeros((256, 256), dtype=np.float64)                        # [previous byte, byte]
    np.add.at(pairs, (train[:-1], train[1:]), 1.0)
    probs = (pairs + 1.0) / (pairs.sum(axis=1, keepdims=True) + 256.0)
    return float(-np.log2(probs[test[:-1], test[1:]]).mean())


def bits(nats: float) -> float:
    """nats -> bits."""
    return nats / math.log(2.0)
