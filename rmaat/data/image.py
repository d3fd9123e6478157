"""Pixel-level image classification: LRA Image (CIFAR-10 grayscale) and the Fashion-MNIST stand-in.

Both are 1024 pixels (32 x 32, row-major), one token per pixel, the 8-bit intensity as the id.

CIFAR-10 (``cifar-10-batches-py``): the Python pickles ``data_batch_1..5`` and ``test_batch``,
each a dict with ``data`` (N, 3072) uint8 (1024 R, then G, then B) and ``labels``. Converted to
grayscale with TensorFlow's ``rgb_to_grayscale`` weights as LRA does. Splits follow LRA's
pipeline: ``train[:90%]`` / ``train[90%:]`` of the 50,000 training images (45,000 / 5,000,
in batch order) and the 10,000 ``test_batch`` images as test. Pickles are read with an
unpickler that only accepts numpy arrays and plain containers, so a wrong or hostile file
fails with a DataError instead of running code.

Fashion-MNIST (stand-in, never an LRA number): the idx files (optionally gzipped) of the
Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or
``--data-dir``; 28 x 28 images zero-padded by 2 pixels on every side to 32 x 32. Splits use
the same rule as LRA's (MNIST and CIFAR) pipelines: first 90% of train / last 10% / t10k.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
from pathlib import Path

import numpy as np

from rmaat.data.tasks import TaskSpec, check_split
from rmaat.errors import DataError

#: Fraction of the official training images kept for training (LRA: ``train[:90%]``).
TRAIN_FRACTION = 0.9

CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"

#: The only globals a CIFAR batch pickle needs (numpy arrays written by Python 2 or 3, any
#: protocol; ``_codecs.encode`` is how protocol 2 stores bytes from Python 3).
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_SAFE_GLOBALS`` (no arbitrary code)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):  # numpy >= 2 moved numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core"):]
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # pragma: no cover - numpy 1.x has no numpy._core
            legacy = module.replace("numpy._core", "numpy.core")
            return getattr(importlib.import_module(legacy), name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> (N, 3072) uint8 data, (N,) int64 labels."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file {path}; download https://www.cs.toronto.edu/"
                        "~kriz/cifar-10-python.tar.gz and unpack it")
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means "not a CIFAR batch"
        raise DataError(f"{path}: not a CIFAR-10 Python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path}: not a CIFAR-10 batch (needs 'data' array and 'labels')")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), "
                        f"got {data.dtype} {data.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    if labels.size and not (0 <= labels.min() and labels.max() <= 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data, labels


def cifar_to_gray(data: np.ndarray) -> np.ndarray:
    """(N, 3072) planar RGB -> (N, 1024) uint8 grayscale."""
    from rmaat.data.tokenize import rgb_to_gray

    rgb = data.reshape(-1, 3, 1024).transpose(0, 2, 1)  # (N, 1024, 3)
    return rgb_to_gray(rgb)


def _split_train(images: np.ndarray, labels: np.ndarray, split: str):
    cut = int(round(TRAIN_FRACTION * len(labels)))
    if split == "train":
        return images[:cut], labels[:cut]
    return images[cut:], labels[cut:]


def load_cifar10(spec: TaskSpec, root: Path, split: str):
    """CIFAR-10 grayscale split as a :class:`SequenceDataset` of 1024 pixels."""
    from rmaat.data.tokenize import Ragged, SequenceDataset

    check_split(split)
    if split == "test":
        data, labels = _load_cifar_batch(root / CIFAR_TEST_FILE)
        source = str(root / CIFAR_TEST_FILE)
    else:
        batches = [_load_cifar_batch(root / name) for name in CIFAR_TRAIN_FILES]
        data = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        data, labels = _split_train(data, labels, split)
        source = str(root / "data_batch_{1..5}")
    return SequenceDataset(spec, split, Ragged.from_fixed(cifar_to_gray(data)), labels, source)


# --------------------------------------------------------------------------- Fashion-MNIST

_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned-byte idx files of 1 and 3 dimensions


def _open_idx(root: Path, name: str) -> tuple[Path, bytes]:
    for path in (root / name, root / (name + ".gz")):
        if path.is_file():
            raw = path.read_bytes()
            if path.suffix == ".gz":
                try:
                    raw = gzip.decompress(raw)
                except (OSError, EOFError) as e:
                    raise DataError(f"{path}: not a valid gzip file ({e})") from None
            return path, raw
    raise DataError(f"missing Fashion-MNIST file {root / name}[.gz]; install the Debian package "
                    "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass "
                    "--data-dir holding the idx files")


def read_idx(root: Path, name: str, ndim: int) -> np.ndarray:
    """Read an unsigned-byte idx file (``name`` or ``name.gz``) of ``ndim`` dimensions."""
    path, raw = _open_idx(root, name)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise DataError(f"{path}: idx magic {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x} "
                        f"(unsigned bytes, {ndim} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: {len(raw) - header} data bytes, header says {expected} {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def pad_to_32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) -> (N, 32, 32) with 2 zero pixels on each side (content centred)."""
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))


def load_fashion_mnist(spec: TaskSpec, root: Path, split: str):
    """Fashion-MNIST split as a :class:`SequenceDataset` of 1024 pixels (stand-in task)."""
    from rmaat.data.tokenize import Ragged, SequenceDataset

    prefix = "t10k" if check_split(split) == "test" else "train"
    images = read_idx(root, f"{prefix}-images-idx3-ubyte", 3)
    labels = read_idx(root, f"{prefix}-labels-idx1-ubyte", 1).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(f"{root}: {prefix} images {images.shape} and labels {labels.shape} "
                        "do not match (expected N x 28 x 28 and N)")
    if labels.size and labels.max() > 9:
        raise DataError(f"{root}: {prefix} labels outside 0..9")
    if split != "test":
        images, labels = _split_train(images, labels, split)
    rows = pad_to_32(images).reshape(len(labels), 1024)
    return SequenceDataset(spec, split, Ragged.from_fixed(rows), labels,
                           str(root / f"{prefix}-*-idx*-ubyte"))
