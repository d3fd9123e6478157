"""Pathfinder: labels agree with connectivity on the rendered pixels; LRA layout and loader."""

import random
from collections import deque

import numpy as np
import pytest
from PIL import Image

from rmaat.data import load_split
from rmaat.data.pathfinder import PathfinderConfig, generate_pathfinder, generate_sample
from rmaat.errors import DataError


def connected(image: np.ndarray, a: tuple[int, int], b: tuple[int, int], reach: int) -> bool:
    """Flood fill over lit pixels from ``a``; a step may jump ``reach`` pixels (Chebyshev),
    i.e. across the unlit gap between two paddles of a contour. True when ``b`` is reached."""
    lit = image > 0
    n = lit.shape[0]
    seen = {a}
    queue = deque([a])
    while queue:
        y, x = queue.popleft()
        if (y, x) == b:
            return True
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                p = (y + dy, x + dx)
                if 0 <= p[0] < n and 0 <= p[1] < n and lit[p] and p not in seen:
                    seen.add(p)
                    queue.append(p)
    return False


@pytest.mark.parametrize("cfg, n", [(PathfinderConfig(), 300),
                                    (PathfinderConfig(paddle_gap=0, contour_length=10), 60)])
def test_labels_match_connectivity_of_rendered_pixels(cfg, n):
    labels = []
    for k in range(n):
        sample = generate_sample(random.Random(f"test-{k}"), cfg)
        img, (m1, m2) = sample.image, sample.markers
        assert img.shape == (32, 32) and img.dtype == np.uint8
        assert img[m1] > 0 and img[m2] > 0
        # markers are 3x3 discs (radius 1.5) at the contour tips
        for y, x in (m1, m2):
            assert (img[max(0, y - 1):y + 2, max(0, x - 1):x + 2] > 0).all()
        assert connected(img, m1, m2, cfg.reach) == bool(sample.label), f"sample {k}"
        labels.append(sample.label)
    assert 0.3 < np.mean(labels) < 0.7


def test_images_hold_contours_and_distractors():
    sample = generate_sample(random.Random(0))
    lit = int((sample.image > 0).sum())
    # two targets of 14 paddles (28 px) + markers + distractors
    assert lit > 2 * 14 * 2 + 9
    assert set(np.unique(sample.image)) <= {0, 255}


def test_generation_is_deterministic():
    a = generate_sample(random.Random("s"))
    b = generate_sample(random.Random("s"))
    assert np.array_equal(a.image, b.image) and a.label == b.label and a.markers == b.markers


def test_layout_metadata_and_loader(tmp_path):
    cfg = PathfinderConfig(images_per_batch=8)
    sizes = generate_pathfinder(tmp_path, size=20, seed=1, progress=False, cfg=cfg)
    assert sizes == {"train": 16, "val": 2, "test": 2}
    root = tmp_path / "pathfinder32" / "curv_contour_length_14"
    assert sorted(p.name for p in (root / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]
    first = (root / "metadata" / "0.npy").read_text().splitlines()[0].split()
    assert first[:3] == ["imgs/0", "sample_0.png", "0"] and first[3] in ("0", "1")
    assert len(first) == 11
    png = Image.open(root / "imgs" / "0" / "sample_0.png")
    assert png.size == (32, 32) and png.mode == "L"

    train, val, test = (load_split("pathfinder", tmp_path, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (16, 2, 2)
    # split order is by batch number then line: test = the last two images (batch 2)
    expected = generate_sample(random.Random("pathfinder32-1-19"), cfg)
    item = test[1]
    assert item["input_ids"].reshape(32, 32).numpy().tolist() == expected.image.tolist()
    assert item["label"].item() == expected.label and item["attention_mask"].all()
    # a directory level lower is found too
    assert len(load_split("pathfinder", tmp_path / "pathfinder32", "val")) == 2


def test_numeric_metadata_order_and_empty_images(tmp_path):
    root = tmp_path / "curv_contour_length_14"
    (root / "metadata").mkdir(parents=True)
    for batch in (0, 2, 10):  # "10" must sort after "2"
        (root / "imgs" / str(batch)).mkdir(parents=True)
        lines = []
        for i in range(4):
            value = batch * 10 + i
            Image.fromarray(np.full((32, 32), value, np.uint8)).save(
                root / "imgs" / str(batch) / f"sample_{i}.png")
            lines.append(f"imgs/{batch} sample_{i}.png {i} {i % 2} 1.0 14 4 2 1 1 1")
        (root / "metadata" / f"{batch}.npy").write_text("\n".join(lines) + "\n")
    (root / "imgs/10/sample_3.png").write_bytes(b"")  # LRA drops empty images
    test = load_split("pathfinder", root, "test")  # 12 images: test = [90%:] = last 2 listed
    assert [int(test[i]["input_ids"][0]) for i in range(len(test))] == [102]
    train = load_split("pathfinder", root, "train")
    assert [int(train[i]["input_ids"][0]) for i in range(len(train))] == [0, 1, 2, 3, 20, 21,
                                                                          22, 23, 100]


def test_npy_format_metadata(tmp_path):
    cfg = PathfinderConfig(images_per_batch=10)
    generate_pathfinder(tmp_path, size=10, seed=0, progress=False, cfg=cfg)
    root = tmp_path / "pathfinder32" / "curv_contour_length_14"
    meta = root / "metadata" / "0.npy"
    rows = np.array([line.split() for line in meta.read_text().splitlines()])
    np.save(meta.with_suffix(".tmp.npy"), rows)
    meta.with_suffix(".tmp.npy").replace(meta)
    assert len(load_split("pathfinder", tmp_path, "train")) == 8


@pytest.mark.parametrize(
    "line, message",
    [
        ("imgs/0 sample_0.png 0", "expected '<subdir> <file> <index> <label> ...'"),
        ("imgs/0 sample_0.png 0 2 1.0", "label '2' is not 0 or 1"),
        ("imgs/0 missing.png 0 1 1.0", "missing.png does not exist"),
    ],
)
def test_bad_metadata_names_file_and_line(tmp_path, line, message):
    cfg = PathfinderConfig(images_per_batch=10)
    generate_pathfinder(tmp_path, size=10, seed=0, progress=False, cfg=cfg)
    meta = tmp_path / "pathfinder32" / "curv_contour_length_14" / "metadata" / "0.npy"
    lines = meta.read_text().splitlines()
    lines[0] = line
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        load_split("pathfinder", tmp_path, "train")
    assert f"{meta}:1" in str(err.value)


def test_wrong_image_size(tmp_path):
    generate_pathfinder(tmp_path, size=10, seed=0, progress=False,
                        cfg=PathfinderConfig(images_per_batch=10))
    png = tmp_path / "pathfinder32/curv_contour_length_14/imgs/0/sample_9.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    with pytest.raises(DataError, match=r"sample_9.png is 28x28, expected 32x32"):
        load_split("pathfinder", tmp_path, "test")
