"""Tokenisation per task and the dataset container that pads token sequences into model items.

Three tokenisers, as in the paper (and LRA):

- ``listops``: one id per operator, closing bracket and digit. The official TSV writes each
  expression as a binary tree with round parentheses (``( ( [MAX 2 ) 9 ) ] )``, an artefact of
  LRA's ``to_string``); the parentheses carry no information and would double the length past
  2K, so they are dropped. LRA's own length rule (500 < len < 2000) counts exactly the tokens
  kept here, so every generated or released example fits in 2048 without truncation.
- ``bytes``: UTF-8 bytes, id = byte + 1 (0 is padding); Text 4K, Retrieval 2 x 4K.
- ``pixels``: 8-bit grayscale intensity used directly as the id (0-255); images are never padded.

Examples are stored compactly (one flat ``uint8`` array plus offsets) because Retrieval holds
~150k pairs of 4K-byte documents; ids are formed and padded per item in ``__getitem__``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rmaat.data.tasks import TaskSpec
from rmaat.errors import DataError

#: ListOps vocabulary; index = token id. 0 is padding. ``[FIRST``/``[LAST`` are LRA operators
#: that its basic task leaves out; they are kept so files using them still load.
LISTOPS_VOCAB: tuple[str, ...] = (
    "<pad>", "]", "[MIN", "[MAX", "[MED", "[SM", "[FIRST", "[LAST",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
)
_LISTOPS_PARSE: dict[str, int] = {tok: i for i, tok in enumerate(LISTOPS_VOCAB) if i}

#: Shift added to stored values to form ids, per tokenizer (bytes reserve 0 for padding).
ID_SHIFT: dict[str, int] = {"listops": 0, "bytes": 1, "pixels": 0}

#: ITU-R 601 luma weights, as TensorFlow's ``rgb_to_grayscale`` used by LRA's CIFAR pipeline.
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])


def tokenize_listops(source: str, where: str) -> np.ndarray:
    """ListOps expression -> ids (uint8). ``where`` ("file:line") names the source in errors."""
    # Parentheses are removed at C speed first; they are 40% of the tokens.
    tokens = source.replace("(", " ").replace(")", " ").split()
    try:
        ids = np.fromiter(map(_LISTOPS_PARSE.__getitem__, tokens), dtype=np.uint8,
                          count=len(tokens))
    except KeyError as e:
        raise DataError(
            f"{where}: unknown ListOps token {e.args[0]!r} (expected one of "
            f"{' '.join(LISTOPS_VOCAB[1:])}, or parentheses)"
        ) from None
    if not ids.size:
        raise DataError(f"{where}: empty ListOps expression")
    return ids


def encode_bytes(data: bytes, max_len: int) -> np.ndarray:
    """Raw bytes truncated to ``max_len`` as uint8 (the +1 id shift is applied per item)."""
    return np.frombuffer(data[:max_len], dtype=np.uint8).copy()


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) uint8 grayscale with LRA's luma weights, rounded."""
    gray = rgb.astype(np.float64) @ GRAY_WEIGHTS
    return np.clip(np.floor(gray + 0.5), 0, 255).astype(np.uint8)


class Ragged:
    """A list of 1-D uint8 arrays stored as one flat array plus offsets (cheap to fork/share)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        self.offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.flat = (np.concatenate(arrays).astype(np.uint8) if len(arrays)
                     else np.zeros(0, np.uint8))

    @classmethod
    def from_fixed(cls, rows: np.ndarray) -> "Ragged":
        """(N, L) uint8 array of equal-length rows, without copying row by row."""
        obj = cls.__new__(cls)
        obj.flat = np.ascontiguousarray(rows, dtype=np.uint8).reshape(-1)
        obj.offsets = np.arange(rows.shape[0] + 1, dtype=np.int64) * rows.shape[1]
        return obj

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64 length of each array."""
        return np.diff(self.offsets)


class SequenceDataset(Dataset):
    """Classification examples of one task and split (Contract 5 in docs/architecture.md).

    Items are dicts: ``input_ids`` (L,) long, ``attention_mask`` (L,) bool (True = real token),
    ``label`` () long; dual tasks add ``input_ids_2`` and ``attention_mask_2``. Sequences longer
    than ``seq_len`` are truncated (as LRA does); ``n_truncated`` counts them. ``truncate``
    ``"right"`` keeps the first ``seq_len`` tokens (LRA), ``"left"`` the last ones (a model
    that sees only the end of a memory-task example: the no-memory control).

    Attributes:
        spec: the task.
        seq_len: item length L; ``spec.seq_len`` unless a shorter one was asked for.
        split: ``train``, ``val`` or ``test``.
        source: where the examples were read from (for reports).
        labels: (N,) int64 labels.
        example_length: the fixed length of every example when the task has one (memory
            tasks, whose question ends the example), else None.
        metadata: per-example arrays for grouped reports (memory tasks: ``depth_segment``).
    """

    truncate: str = "right"
    example_length: int | None = None

    def __init__(self, spec: TaskSpec, split: str, tokens: Ragged, labels: np.ndarray,
                 source: str, tokens_2: Ragged | None = None, seq_len: int | None = None):
        if len(tokens) != len(labels) or (tokens_2 is not None and len(tokens_2) != len(labels)):
            raise ValueError("tokens and labels must have the same length")
        self.spec = spec
        self.seq_len = spec.seq_len if seq_len is None else seq_len
        self.split = split
        self.source = source
        self.labels = np.asarray(labels, dtype=np.int64)
        self._tokens = tokens
        self._tokens_2 = tokens_2
        self._shift = ID_SHIFT[spec.tokenizer]
        self.metadata: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_truncated(self) -> int:
        """Documents longer than ``seq_len`` (cut to it in items)."""
        count = int((self._tokens.lengths > self.seq_len).sum())
        if self._tokens_2 is not None:
            count += int((self._tokens_2.lengths > self.seq_len).sum())
        return count

    def class_counts(self) -> np.ndarray:
        """(n_classes,) number of examples per label."""
        return np.bincount(self.labels, minlength=self.spec.n_classes)

    def _pad(self, values: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.seq_len
        n = min(len(values), length)
        if self.truncate == "left":
            values = values[len(values) - n:]
        ids = torch.full((length,), self.spec.pad_id, dtype=torch.long)  # (L,)
        ids[:n] = torch.from_numpy(values[:n].astype(np.int64)) + self._shift
        mask = torch.zeros(length, dtype=torch.bool)  # (L,)
        mask[:n] = True
        return ids, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index = index % len(self)
        ids, mask = self._pad(self._tokens[index])
        item = {"input_ids": ids, "attention_mask": mask,
                "label": torch.tensor(int(self.labels[index]), dtype=torch.long)}
        if self._tokens_2 is not None:
            item["input_ids_2"], item["attention_mask_2"] = self._pad(self._tokens_2[index])
        return item

    def __repr__(self) -> str:
        return (f"SequenceDataset({self.spec.name}, {self.split}, n={len(self)}, "
                f"seq_len={self.seq_len}, source={self.source!r})")
