"""Retrieval (LRA): AAN citation pairs, byte-level, 4K bytes per document, dual encoder.

Files: ``tsv_data/new_aan_pairs.{train,eval,test}.tsv`` (``eval`` is our ``val``), no header,
five tab-separated fields per line: label, id1, id2, text1, text2 (LRA reads them with quoting
off, so quotes are literal text). The label is written as an integer or a float (``1`` or
``1.0``) and must be 0 or 1. Files are read in binary so that the byte tokens are the file's
own bytes.
"""

from __future__ import annotations

from pathlib import Path

from rmaat.data.tasks import TaskSpec, check_split
from rmaat.errors import DataError

_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv",
          "test": "new_aan_pairs.test.tsv"}


def _parse_label(text: bytes, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: label {text[:20]!r} is not a number") from None
    if value not in (0.0, 1.0):
        raise DataError(f"{where}: label {value:g} is not 0 or 1")
    return int(value)


def load_aan(spec: TaskSpec, root: Path, split: str):
    """Read ``root/new_aan_pairs.<split>.tsv`` into a dual :class:`SequenceDataset`."""
    import numpy as np

    from rmaat.data.tokenize import Ragged, SequenceDataset, encode_bytes

    path = root / _FILES[check_split(split)]
    if not path.is_file():
        raise DataError(f"missing AAN file {path}; to get it, {spec.obtain}")
    docs_1, docs_2, labels = [], [], []
    keep = spec.seq_len + 1  # one byte beyond seq_len so truncation shows in n_truncated
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            where = f"{path}:{number}"
            fields = line.split(b"\t")
            if len(fields) != 5:
                raise DataError(f"{where}: expected 5 tab-separated fields "
                                f"(label, id1, id2, text1, text2), got {len(fields)}")
            labels.append(_parse_label(fields[0], where))
            docs_1.append(encode_bytes(fields[3], keep))
            docs_2.append(encode_bytes(fields[4], keep))
    if not labels:
        raise DataError(f"{path}: no examples")
    return SequenceDataset(spec, split, Ragged(docs_1), np.asarray(labels), str(path),
                           tokens_2=Ragged(docs_2))
