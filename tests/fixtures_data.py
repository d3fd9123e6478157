"""Writers of tiny data sets in each task's official on-disk format (used by tests/test_data_*.py).

Each writer produces exactly the layout a user would unpack (file names, headers, encodings),
so the loaders are exercised on the real formats, not on a private shortcut.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

# A short ListOps expression in LRA's binary-tree text form and its value:
# [MAX 2 9 [MIN 4 7 ] 0 ] = 9 ;  [SM 3 8 ] = 1 ;  [MED 1 5 2 8 ] = (2 + 5) // 2 = 3
LISTOPS_ROWS = [
    ("( ( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ) ] )", 9),
    ("( ( ( [SM 3 ) 8 ) ] )", 1),
    ("( ( ( ( ( [MED 1 ) 5 ) 2 ) 8 ) ] )", 3),
]


def write_listops(root: Path, rows=LISTOPS_ROWS, splits=("train", "val", "test")) -> Path:
    """``root/listops-1000/basic_<split>.tsv`` with LRA's ``Source\\tTarget`` header."""
    folder = root / "listops-1000"
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        lines = ["Source\tTarget"] + [f"{src}\t{label}" for src, label in rows]
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_imdb(root: Path, n_per_class: int = 12) -> Path:
    """``root/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` plus the ignored extras."""
    base = root / "aclImdb"
    for source in ("train", "test"):
        for name, rating in (("pos", 8), ("neg", 2)):
            folder = base / source / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                text = f"{name} review {i} of {source}. <br />Great film!" if name == "pos" \
                    else f"{name} review {i} of {source}. Dull — très ennuyeux."
                (folder / f"{i}_{rating}.txt").write_text(text, encoding="utf-8")
    (base / "train" / "unsup").mkdir(exist_ok=True)
    (base / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    (base / "train" / "urls_pos.txt").write_text("http://example.org\n")
    (base / "imdb.vocab").write_text("the\n")
    return base


def write_aan(root: Path, n: int = 6, label_style: str = "int") -> Path:
    """``root/tsv_data/new_aan_pairs.{train,eval,test}.tsv``: label, id1, id2, text1, text2."""
    folder = root / "tsv_data"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval", "test"):
        lines = []
        for i in range(n):
            label = i % 2
            label_text = f"{label}.0" if label_style == "float" else str(label)
            lines.append(f"{label_text}\tP{i:02d}-1\tP{i:02d}-2\tabstract {i} of paper one "
                         f"{'x' * i}\t\"quoted\" abstract {i} of paper two")
        (folder / f"new_aan_pairs.{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def cifar_batch(n: int, seed: int) -> dict:
    """A CIFAR-10 batch dict as the official pickles hold it (bytes keys)."""
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fixture batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar(root: Path, n_per_batch: int = 4, protocol: int = 2) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        with open(folder / name, "wb") as f:
            pickle.dump(cifar_batch(n_per_batch, seed), f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10}, f, protocol=protocol)
    return folder


def _idx_bytes(array: np.ndarray) -> bytes:
    magic = (0x08 << 8) | array.ndim  # unsigned byte, ndim dimensions
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_idx(folder: Path, n_train: int = 20, n_test: int = 5, gz: bool = True) -> Path:
    """Fashion-MNIST idx files (images N x 28 x 28, labels N), gzipped like the Debian package."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(1, 256, (n, 28, 28), dtype=np.uint8)  # no zeros: padding is visible
        labels = np.arange(n, dtype=np.uint8) % 10
        for name, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):
            data = _idx_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder
