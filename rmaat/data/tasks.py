"""The Long Range Arena task registry: lengths, classes, vocabularies, segments, file layouts.

Torch-free on purpose: the CLI, configs and ``pipeline data check`` read task facts without
loading torch. Loaders live in one module per task and are named here as ``"module:function"``.

Segment counts follow the paper's "segments of 512 tokens": ListOps 2048 -> 4, Text 4096 -> 8,
Retrieval 4096 per document -> 8 per document (16 over the pair, the paper's 16-segment
Retrieval setting), and the 1K pixel tasks 1024 -> 2. For the 1K tasks 2 x 512 is kept rather than
4 x 256 so that every task uses the same segment length the paper ablates (its Retrieval ablation
fixes 512 tokens per segment); the training config can override ``n_segments``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rmaat.errors import ConfigError, DataError

#: Split names used everywhere in the pipeline (official files may call "val" "eval").
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Prefixes under a user's ``--data-dir`` that are searched for a task's directory: the LRA
#: archive unpacks as ``lra_release/lra_release/...``, so users may point at any level.
_RELEASE_PREFIXES: tuple[str, ...] = ("", "lra_release", "lra_release/lra_release")

LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"


@dataclass(frozen=True)
class TaskSpec:
    """Facts about one classification task.

    Attributes:
        name: registry key (``listops``, ``text``, ``retrieval``, ``image``, ``pathfinder``;
            the stand-ins ``fashion_mnist``, ``babi_qa1``, ``babi_qa2``, ``kjv_text``, ``kjv_match``).
        title: human-readable name for reports.
        seq_len: tokens per document after padding/truncation (per document for dual tasks).
        n_classes: number of labels.
        vocab_size: token ids are in ``[0, vocab_size)``.
        pad_id: id of padding positions. Pixel tasks are never padded (every image has
            exactly ``seq_len`` pixels), so there 0 is also the black intensity; always use
            ``attention_mask``, not the ids, to find padding.
        tokenizer: ``listops`` (operator/bracket/digit tokens), ``bytes`` (UTF-8 bytes + 1)
            or ``pixels`` (grayscale intensity 0-255 as the id).
        dual: two documents per example (Retrieval); items then carry ``input_ids_2``.
        n_segments: default segment count per document (512-token segments; see module doc).
        is_lra: False for stand-in tasks, whose numbers must never be reported as LRA results.
        subdir: the task's directory inside the official release (searched under --data-dir).
        probe: a file or directory that must exist inside ``subdir`` to recognise it.
        layout: the official files, relative to ``subdir``, for messages and docs.
        obtain: how to get the data (download and/or generate command).
        loader: ``"module:function"`` with signature ``(spec, root: Path, split) -> Dataset``.
        default_data_dir: used when no ``--data-dir`` is given (Debian package paths).
        generator: ``"module:function"`` writing the task's files (``pipeline data generate``).
        class_names: label names, index = class.
        fixed_length: every example has the generated length and ends with the question (the
            memory tasks); a run must use that length, or keep the end (``data.truncate=left``).
    """

    name: str
    title: str
    seq_len: int
    n_classes: int
    vocab_size: int
    tokenizer: str
    n_segments: int
    subdir: str
    probe: str
    layout: tuple[str, ...]
    obtain: str
    loader: str
    dual: bool = False
    is_lra: bool = True
    pad_id: int = 0
    default_data_dir: str | None = None
    generator: str | None = None
    class_names: tuple[str, ...] = field(default=())
    fixed_length: bool = False

    @property
    def segment_len(self) -> int:
        """Tokens per segment (``seq_len / n_segments``)."""
        return self.seq_len // self.n_segments

    @property
    def total_len(self) -> int:
        """Tokens per example over all documents (8K for Retrieval)."""
        return self.seq_len * (2 if self.dual else 1)


#: The memory tasks' classes (bAbI's six places; rmaat.data.babi.PLACES, checked by a test).
BABI_PLACES: tuple[str, ...] = ("bathroom", "hallway", "bedroom", "kitchen", "garage", "balcony")
KJV_PACKAGE_NOTE = "Debian's bible-kjv and bible-kjv-text"



def _memory_task(qa: str, title: str) -> TaskSpec:
    """The registry entry of a memory task (``rmaat.data.babi``): bytes, 6 places, any length."""
    return TaskSpec(
        name=f"babi_{qa}", title=title, seq_len=65536, n_classes=len(BABI_PLACES),
        vocab_size=257, tokenizer="bytes", n_segments=128, is_lra=False,  # the longest; runs use the data's
        subdir=f"babi_{qa}", probe="generation.json",
        layout=("train.jsonl", "val.jsonl", "test.jsonl", "generation.json"),
        obtain=(f"generate it: pipeline data generate --task babi_{qa} --out DIR --length 4096 "
                f"(needs {KJV_PACKAGE_NOTE})"),
        loader="rmaat.data.babi:load_babi", generator=f"rmaat.data.babi:generate_babi_{qa}",
        class_names=BABI_PLACES, fixed_length=True,
    )


_LISTOPS_VOCAB_SIZE = 18  # pad, "]", 6 operators, 10 digits: see rmaat.data.tokenize.LISTOPS_VOCAB

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="listops", title="ListOps", seq_len=2048, n_classes=10,
            vocab_size=_LISTOPS_VOCAB_SIZE, tokenizer="listops", n_segments=4,
            subdir="listops-1000", probe="basic_train.tsv",
            layout=("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"),
            obtain=(f"download the LRA release ({LRA_RELEASE_URL}, unpack, pass its directory) "
                    "or generate it: pipeline data generate --task listops --out DIR"),
            loader="rmaat.data.listops:load_listops",
            generator="rmaat.data.listops:generate_listops",
            class_names=tuple(str(d) for d in range(10)),
        ),
        TaskSpec(
            name="text", title="Text / IMDb", seq_len=4096, n_classes=2,
            vocab_size=257, tokenizer="bytes", n_segments=8,
            subdir="aclImdb", probe="train",
            layout=("train/pos/*.txt", "train/neg/*.txt", "test/pos/*.txt", "test/neg/*.txt"),
            obtain=("download IMDb (https://ai.stanford.edu/~amaas/data/sentiment/"
                    "aclImdb_v1.tar.gz), unpack, pass the directory holding aclImdb/"),
            loader="rmaat.data.text:load_imdb",
            class_names=("neg", "pos"),
        ),
        TaskSpec(
            name="retrieval", title="Retrieval / AAN", seq_len=4096, n_classes=2,
            vocab_size=257, tokenizer="bytes", n_segments=8, dual=True,
            subdir="tsv_data", probe="new_aan_pairs.train.tsv",
            layout=("new_aan_pairs.train.tsv", "new_aan_pairs.eval.tsv",
                    "new_aan_pairs.test.tsv"),
            obtain=f"download the LRA release ({LRA_RELEASE_URL}, unpack, pass its directory)",
            loader="rmaat.data.retrieval:load_aan",
            class_names=("unrelated", "cited"),
        ),
        TaskSpec(
            name="image", title="Image / CIFAR-10 grayscale", seq_len=1024, n_classes=10,
            vocab_size=256, tokenizer="pixels", n_segments=2,
            subdir="cifar-10-batches-py", probe="data_batch_1",
            layout=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
            obtain=("download CIFAR-10 for Python (https://www.cs.toronto.edu/~kriz/"
                    "cifar-10-python.tar.gz), unpack, pass the directory holding "
                    "cifar-10-batches-py/"),
            loader="rmaat.data.image:load_cifar10",
            class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                         "horse", "ship", "truck"),
        ),
        TaskSpec(
            name="pathfinder", title="Pathfinder 32x32", seq_len=1024, n_classes=2,
            vocab_size=256, tokenizer="pixels", n_segments=2,
            subdir="pathfinder32/curv_contour_length_14", probe="metadata",
            layout=("metadata/<batch>.npy", "imgs/<batch>/sample_<i>.png"),
            obtain=(f"download the LRA release ({LRA_RELEASE_URL}, unpack, pass its directory) "
                    "or generate it: pipeline data generate --task pathfinder --out DIR"),
            loader="rmaat.data.pathfinder:load_pathfinder",
            generator="rmaat.data.pathfinder:generate_pathfinder",
            class_names=("disconnected", "connected"),
        ),
        TaskSpec(
            name="fashion_mnist", title="Fashion-MNIST 28x28 padded to 32x32",
            seq_len=1024, n_classes=10, vocab_size=256, tokenizer="pixels", n_segments=2,
            is_lra=False, subdir="fashion-mnist", probe="train-labels-idx1-ubyte",
            layout=("train-images-idx3-ubyte[.gz]", "train-labels-idx1-ubyte[.gz]",
                    "t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]"),
            obtain="install the Debian package: apt-get install dataset-fashion-mnist",
            loader="rmaat.data.image:load_fashion_mnist",
            default_data_dir="/usr/share/datasets/fashion-mnist",
            class_names=("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle-boot"),
        ),
        _memory_task("qa1", "bAbI qa1 in KJV haystacks"),
        _memory_task("qa2", "bAbI qa2 in KJV haystacks"),
        TaskSpec(
            name="kjv_text", title="KJV book group (Text-shaped stand-in)", seq_len=4096, n_classes=6,
            vocab_size=257, tokenizer="bytes", n_segments=8, is_lra=False,
            subdir="kjv_text", probe="generation.json",
            layout=("train.jsonl", "val.jsonl", "test.jsonl", "generation.json"),
            obtain=f"generate it: pipeline data generate --task kjv_text --out DIR (needs {KJV_PACKAGE_NOTE})",
            loader="rmaat.data.kjv:load_kjv_task", generator="rmaat.data.kjv:generate_kjv_text",
            class_names=("law", "history", "wisdom", "prophets", "gospels_acts", "epistles_revelation"),
        ),
        TaskSpec(
            name="kjv_match", title="KJV same-book pairs (Retrieval-shaped stand-in)", seq_len=4096,
            n_classes=2, vocab_size=257, tokenizer="bytes", n_segments=8, dual=True, is_lra=False,
            subdir="kjv_match", probe="generation.json",
            layout=("train.jsonl", "val.jsonl", "test.jsonl", "generation.json"),
            obtain=f"generate it: pipeline data generate --task kjv_match --out DIR (needs {KJV_PACKAGE_NOTE})",
            loader="rmaat.data.kjv:load_kjv_task", generator="rmaat.data.kjv:generate_kjv_match",
            class_names=("different_book", "same_book"),
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """Return the :class:`TaskSpec` called ``name``; ConfigError listing valid names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(
            f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}"
        ) from None


def check_split(split: str) -> str:
    """Validate a split name (ConfigError listing the valid ones)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def _exists(root: Path, probe: str) -> bool:
    """``probe`` exists under ``root``; a trailing ``[.gz]``-style variant is accepted too."""
    return (root / probe).exists() or (root / (probe + ".gz")).exists()


def find_task_root(spec: TaskSpec, data_dir: str | Path | None) -> Path:
    """Locate the task's directory (the one holding ``spec.layout``) under ``data_dir``.

    ``data_dir`` may be the task directory itself, its parent, or the unpacked LRA release at
    any nesting level (``lra_release/lra_release/<subdir>``). Raises DataError saying what is
    missing and how to obtain or generate it.
    """
    if data_dir is None:
        if spec.default_data_dir is None:
            raise DataError(f"task {spec.name!r} needs --data-dir; to get the data, {spec.obtain}")
        data_dir = spec.default_data_dir
    base = Path(data_dir).expanduser()
    if not base.is_dir():
        raise DataError(
            f"data directory {base} does not exist; task {spec.name!r} expects "
            f"{spec.subdir}/{{{', '.join(spec.layout)}}}; to get it, {spec.obtain}"
        )
    candidates = [base] + [base / prefix / spec.subdir for prefix in _RELEASE_PREFIXES]
    # Also accept a parent of the last path component (e.g. --data-dir .../pathfinder32).
    tail = Path(spec.subdir).name
    candidates.append(base / tail)
    for root in candidates:
        if root.is_dir() and _exists(root, spec.probe):
            return root
    raise DataError(
        f"no {spec.title} data under {base}: expected {spec.subdir}/{spec.probe} "
        f"(files: {', '.join(spec.layout)}); to get it, {spec.obtain}"
    )
