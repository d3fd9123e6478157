"""Text (LRA): IMDb reviews in the ``aclImdb`` layout, byte-level, 4K bytes per review.

Files: ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` (``train/unsup`` is unlabelled and
ignored). Label 1 = pos, 0 = neg. IMDb has no validation split (LRA validates on test); here a
deterministic hold-out is taken from train: reviews whose ``<id>`` is a multiple of 10 (1,250
per class of the 12,500) form ``val`` and are removed from ``train``. The rule depends only on
file names, never on directory listing order or a random seed. Examples are ordered by
(label, id).
"""

from __future__ import annotations

from pathlib import Path

from rmaat.data.tasks import TaskSpec, check_split
from rmaat.errors import DataError

#: A train review goes to ``val`` when its numeric id is a multiple of this.
VAL_ID_MODULUS = 10

_CLASSES = (("neg", 0), ("pos", 1))


def _review_id(path: Path) -> int:
    """The ``<id>`` of ``<id>_<rating>.txt``; DataError for other names."""
    stem = path.stem
    head, sep, rating = stem.partition("_")
    if not (sep and head.isdigit() and rating.isdigit()):
        raise DataError(f"{path}: not an aclImdb review file name (expected <id>_<rating>.txt)")
    return int(head)


def list_reviews(root: Path, split: str) -> list[tuple[Path, int]]:
    """(file, label) pairs of ``split`` in (label, id) order, applying the val hold-out."""
    source = "test" if split == "test" else "train"
    out: list[tuple[Path, int]] = []
    for name, label in _CLASSES:
        folder = root / source / name
        if not folder.is_dir():
            raise DataError(
                f"missing IMDb directory {folder}; expected aclImdb/{{train,test}}/{{pos,neg}}/"
                "*.txt (download https://ai.stanford.edu/~amaas/data/sentiment/"
                "aclImdb_v1.tar.gz and unpack it)"
            )
        files = sorted(((_review_id(p), p) for p in folder.glob("*.txt")), key=lambda t: t[0])
        if split != "test":
            keep_val = split == "val"
            files = [(i, p) for i, p in files if (i % VAL_ID_MODULUS == 0) == keep_val]
        out += [(p, label) for _, p in files]
    return out


def load_imdb(spec: TaskSpec, root: Path, split: str):
    """Read the reviews of ``split`` as bytes (truncated to ``spec.seq_len``)."""
    import numpy as np

    from rmaat.data.tokenize import Ragged, SequenceDataset, encode_bytes

    reviews = list_reviews(root, check_split(split))
    if not reviews:
        raise DataError(f"no reviews for split {split!r} under {root} "
                        f"(val holds train reviews whose id is a multiple of {VAL_ID_MODULUS})")
    tokens = []
    for path, _ in reviews:
        data = path.read_bytes()
        if not data.strip():
            raise DataError(f"{path}: empty review")
        # Keep one byte beyond seq_len so truncation is visible in n_truncated.
        tokens.append(encode_bytes(data, spec.seq_len + 1))
    labels = np.asarray([label for _, label in reviews])
    return SequenceDataset(spec, split, Ragged(tokens), labels, str(root))
