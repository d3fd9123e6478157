"""Loaders for IMDb, AAN, CIFAR-10 and Fashion-MNIST on fixtures in the official formats,
the task registry, and the bad inputs a user can give."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_data import cifar_batch, write_aan, write_cifar, write_fashion_idx, write_imdb
from rmaat.data import SPLITS, TASKS, find_task_root, get_task, load_split
from rmaat.data.image import pad_to_32
from rmaat.data.text import VAL_ID_MODULUS
from rmaat.data.tokenize import GRAY_WEIGHTS
from rmaat.errors import ConfigError, DataError

FASHION_PACKAGE = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------- registry

def test_registry_has_the_paper_lengths_and_segments():
    lengths = {name: spec.seq_len for name, spec in TASKS.items()}
    assert lengths == {"listops": 2048, "text": 4096, "retrieval": 4096, "image": 1024,
                       "pathfinder": 1024, "fashion_mnist": 1024, "kjv_text": 4096, "kjv_match": 4096,
                       "babi_qa1": 65536, "babi_qa2": 65536}  # memory tasks: the longest; runs use the data's
    assert get_task("retrieval").dual and get_task("retrieval").total_len == 8192
    assert get_task("kjv_match").dual and get_task("kjv_match").total_len == 8192
    assert all(spec.segment_len == 512 for spec in TASKS.values())
    stand_ins = {"fashion_mnist", "babi_qa1", "babi_qa2", "kjv_text", "kjv_match"}
    assert all(spec.is_lra == (name not in stand_ins) for name, spec in TASKS.items())


def test_unknown_task_and_split_list_valid_names(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'cifar'.*listops, text, retrieval"):
        get_task("cifar")
    write_aan(tmp_path)
    with pytest.raises(ConfigError, match="unknown split 'dev'.*train, val, test"):
        load_split("retrieval", tmp_path, "dev")


def test_missing_directory_says_how_to_obtain(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*lra_release"):
        load_split("retrieval", tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match=r"no Image / CIFAR-10 .* under .*cifar-10-python.tar.gz"):
        load_split("image", tmp_path, "train")
    with pytest.raises(DataError, match="needs --data-dir"):
        load_split("text", None, "train")


def test_release_nesting_levels_are_found(tmp_path):
    nested = tmp_path / "lra_release" / "lra_release"
    write_aan(nested)
    spec = get_task("retrieval")
    for given in (tmp_path, tmp_path / "lra_release", nested, nested / "tsv_data"):
        assert find_task_root(spec, given) == nested / "tsv_data"


# ----------------------------------------------------------------------------- IMDb

def test_imdb_splits_labels_and_bytes(tmp_path):
    write_imdb(tmp_path, n_per_class=12)
    train, val, test = (load_split("text", tmp_path, s) for s in SPLITS)
    # ids 0 and 10 are multiples of 10 -> val; both classes.
    assert len(val) == 4 and len(train) == 20 and len(test) == 24
    assert train.class_counts().tolist() == [10, 10] and val.class_counts().tolist() == [2, 2]
    item = test[0]  # neg review 0 of test
    text = (tmp_path / "aclImdb/test/neg/0_2.txt").read_bytes()
    n = int(item["attention_mask"].sum())
    assert n == len(text) and item["label"].item() == 0
    assert item["input_ids"][:n].tolist() == [b + 1 for b in text]  # UTF-8 bytes, 0 = padding
    assert item["input_ids"].shape == (4096,) and not item["attention_mask"][n:].any()


def test_imdb_val_rule_is_id_based(tmp_path):
    write_imdb(tmp_path, n_per_class=25)
    val = load_split("text", tmp_path, "val")
    assert len(val) == 2 * len([i for i in range(25) if i % VAL_ID_MODULUS == 0])


def test_imdb_truncates_long_reviews_and_rejects_bad_names(tmp_path):
    base = write_imdb(tmp_path, n_per_class=3)
    (base / "test/pos/1_9.txt").write_bytes(b"a" * 5000)
    test = load_split("text", tmp_path, "test")
    assert test.n_truncated == 1
    assert all(int(test[i]["attention_mask"].sum()) <= 4096 for i in range(len(test)))
    (base / "train/neg/review.txt").write_text("no id")
    with pytest.raises(DataError, match=r"review.txt: not an aclImdb review file name"):
        load_split("text", tmp_path, "train")


def test_imdb_missing_class_folder(tmp_path):
    base = write_imdb(tmp_path, n_per_class=2)
    for f in (base / "test/pos").iterdir():
        f.unlink()
    (base / "test/pos").rmdir()
    with pytest.raises(DataError, match=r"missing IMDb directory .*test/pos.*aclImdb_v1"):
        load_split("text", tmp_path, "test")


# ----------------------------------------------------------------------------- AAN

@pytest.mark.parametrize("label_style", ["int", "float"])
def test_aan_dual_items(tmp_path, label_style):
    folder = write_aan(tmp_path, n=6, label_style=label_style)
    ds = load_split("retrieval", tmp_path, "val")  # reads new_aan_pairs.eval.tsv
    assert ds.source.endswith("new_aan_pairs.eval.tsv")
    assert ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    item = ds[3]
    fields = (folder / "new_aan_pairs.eval.tsv").read_bytes().split(b"\n")[3].split(b"\t")
    for key, text in (("", fields[3]), ("_2", fields[4])):
        n = int(item["attention_mask" + key].sum())
        assert item["input_ids" + key][:n].tolist() == [b + 1 for b in text]
        assert item["input_ids" + key].shape == (4096,)
    assert set(item) == {"input_ids", "attention_mask", "input_ids_2", "attention_mask_2", "label"}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("1\tA\tB\tonly four", "expected 5 tab-separated fields"),
        ("yes\tA\tB\tt1\tt2", "label b'yes' is not a number"),
        ("2\tA\tB\tt1\tt2", "label 2 is not 0 or 1"),
    ],
)
def test_aan_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    folder = write_aan(tmp_path, n=4)
    path = folder / "new_aan_pairs.test.tsv"
    lines = path.read_text().splitlines()
    lines.insert(2, bad_line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_split("retrieval", tmp_path, "test")
    assert f"{path}:3:" in str(err.value)


# ----------------------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_grayscale_and_lra_splits(tmp_path, protocol):
    write_cifar(tmp_path, n_per_batch=4, protocol=protocol)
    train, val, test = (load_split("image", tmp_path, s) for s in SPLITS)
    assert (len(train), len(val), len(test)) == (18, 2, 4)  # 90% / 10% of 20, test_batch
    batch5 = cifar_batch(4, seed=4)  # the last 10% of the training images are batch 5's tail
    assert val.labels.tolist() == batch5[b"labels"][2:]
    rgb = batch5[b"data"][2].reshape(3, 1024).T.astype(float)
    expected = np.floor(rgb @ GRAY_WEIGHTS + 0.5)
    item = val[0]
    assert item["input_ids"].tolist() == expected.astype(int).tolist()
    assert item["attention_mask"].all() and item["input_ids"].shape == (1024,)
    assert 0 <= int(item["input_ids"].min()) and int(item["input_ids"].max()) <= 255


def test_cifar_wrong_pickles(tmp_path):
    folder = write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"test_batch: 'data' must be uint8 of shape \(N, 3072\)"):
        load_split("image", tmp_path, "test")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(DataError, match="test_batch: not a CIFAR-10 batch"):
        load_split("image", tmp_path, "test")
    (folder / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="test_batch: not a CIFAR-10 Python pickle"):
        load_split("image", tmp_path, "test")
    # A pickle that would run code is refused, not executed.
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(Path("/"), f)
    with pytest.raises(DataError, match="refusing to load"):
        load_split("image", tmp_path, "test")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 file .*data_batch_3"):
        load_split("image", tmp_path, "train")


# ----------------------------------------------------------------------------- Fashion-MNIST

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_fixture_padding_and_splits(tmp_path, gz):
    write_fashion_idx(tmp_path, n_train=20, n_test=5, gz=gz)
    train, val, test = (load_split("fashion_mnist", tmp_path, s) for s in SPLITS)
    assert (len(train), len(val), len(test)) == (18, 2, 5)
    image = train[3]["input_ids"].reshape(32, 32)
    assert (image[:2] == 0).all() and (image[-2:] == 0).all()
    assert (image[:, :2] == 0).all() and (image[:, -2:] == 0).all()
    assert (image[2:30, 2:30] > 0).all()  # fixture pixels are never 0
    assert train[3]["label"].item() == 3 and test[4]["label"].item() == 4


def test_fashion_mnist_bad_idx(tmp_path):
    write_fashion_idx(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: idx magic"):
        load_split("fashion_mnist", tmp_path, "test")
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="missing Fashion-MNIST file .*dataset-fashion-mnist"):
        load_split("fashion_mnist", tmp_path, "train")


@pytest.mark.skipif(not (FASHION_PACKAGE / "train-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist is not installed "
                           "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_package_files():
    test = load_split("fashion_mnist", None, "test")  # default: the package's folder
    val = load_split("fashion_mnist", None, "val")
    assert len(test) == 10_000 and len(val) == 6_000
    assert test.class_counts().tolist() == [1000] * 10
    image = test[0]["input_ids"].reshape(32, 32)
    assert image[:2].sum() == 0 and image[2:30, 2:30].sum() > 0
    repadded = pad_to_32(image[2:30, 2:30].numpy()[None])[0]
    assert torch.equal(image, torch.from_numpy(repadded).long())


def test_items_batch_with_the_default_collate(tmp_path):
    write_aan(tmp_path, n=5)
    ds = load_split("retrieval", tmp_path, "train")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["input_ids"].shape == (4, 4096) and batch["input_ids_2"].shape == (4, 4096)
    assert batch["attention_mask"].dtype == torch.bool and batch["label"].shape == (4,)
    assert len(ds) == 5 and ds[-1]["label"].item() == ds.labels[-1]
    with pytest.raises(IndexError):
        ds[5]
