"""Real text that installs offline: the King James Bible from Debian's ``bible-kjv`` package.

``bible -f "Genesis1:1-Revelation22:21"`` prints all 31,102 verses, one a line, each prefixed by
a book/chapter/verse reference (``Ge1:1 In the beginning ...``). :func:`load_kjv` turns that into
a :class:`Corpus` (verse texts with their book and reference) and caches it once as a TSV under
the user's data directory (``$RMAAT_DATA_HOME``, default ``~/.local/share/rmaat``), so later runs
need neither the command nor its parse.

Splits are disjoint in text by construction: :func:`split_verses` gives every book's first 80% of
verses to ``train``, the next 10% to ``val`` and the last 10% to ``test`` (cut at verse
boundaries), so each split draws from every book and no verse is in two splits.
:class:`SplitText` joins one split's verses (of all books, or of some) into one haystack string
with verse offsets, which is what the generators cut windows from.

There is no fallback: without the package this module raises DataError naming it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retention.atomic import atomic_write_bytes
from rmaat.errors import DataError

#: The package to install, named in every error (``bible-kjv-text`` holds the text itself).
KJV_PACKAGES = "bible-kjv bible-kjv-text"
KJV_INSTALL_HINT = f"install Debian's King James Bible: apt-get install {KJV_PACKAGES}"
KJV_COMMAND = ("bible", "-f", "Genesis1:1-Revelation22:21")
KJV_VERSES = 31_102

#: The 66 books in canonical order: (reference prefix printed by ``bible``, name).
BOOKS: tuple[tuple[str, str], ...] = (
    ("Ge", "Genesis"), ("Exo", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"),
    ("Deu", "Deuteronomy"), ("Josh", "Joshua"), ("Jdgs", "Judges"), ("Ruth", "Ruth"),
    ("1Sm", "1 Samuel"), ("2Sm", "2 Samuel"), ("1Ki", "1 Kings"), ("2Ki", "2 Kings"),
    ("1Chr", "1 Chronicles"), ("2Chr", "2 Chronicles"), ("Ezra", "Ezra"), ("Neh", "Nehemiah"),
    ("Est", "Esther"), ("Job", "Job"), ("Psa", "Psalms"), ("Prv", "Proverbs"),
    ("Eccl", "Ecclesiastes"), ("SSol", "Song of Solomon"), ("Isa", "Isaiah"), ("Jer", "Jeremiah"),
    ("Lam", "Lamentations"), ("Eze", "Ezekiel"), ("Dan", "Daniel"), ("Hos", "Hosea"),
    ("Joel", "Joel"), ("Amos", "Amos"), ("Obad", "Obadiah"), ("Jonah", "Jonah"), ("Mic", "Micah"),
    ("Nahum", "Nahum"), ("Hab", "Habakkuk"), ("Zep", "Zephaniah"), ("Hag", "Haggai"),
    ("Zec", "Zechariah"), ("Mal", "Malachi"), ("Mat", "Matthew"), ("Mark", "Mark"), ("Luke", "Luke"),
    ("John", "John"), ("Acts", "Acts"), ("Rom", "Romans"), ("1Cor", "1 Corinthians"),
    ("2Cor", "2 Corinthians"), ("Gal", "Galatians"), ("Eph", "Ephesians"), ("Phi", "Philippians"),
    ("Col", "Colossians"), ("1Th", "1 Thessalonians"), ("2Th", "2 Thessalonians"),
    ("1Tim", "1 Timothy"), ("2Tim", "2 Timothy"), ("Titus", "Titus"), ("Phmn", "Philemon"),
    ("Heb", "Hebrews"), ("Jas", "James"), ("1Pet", "1 Peter"), ("2Pet", "2 Peter"), ("1Jn", "1 John"),
    ("2Jn", "2 John"), ("3Jn", "3 John"), ("Jude", "Jude"), ("Rev", "Revelation"),
)
_BOOK_INDEX = {prefix: i for i, (prefix, _) in enumerate(BOOKS)}
_REFERENCE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")

#: Fractions of every book's verses (in order) given to train / val / test.
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class Corpus:
    """The verses of the King James Bible, in canonical order.

    Attributes:
        verses: the text of each verse (ASCII, stripped, no reference).
        books: (V,) int book index of each verse (into :data:`BOOKS`).
        refs: ``Ge1:1``-style reference of each verse.
    """

    verses: tuple[str, ...]
    books: np.ndarray
    refs: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.verses)

    def book_verses(self, book: int) -> np.ndarray:
        """Indices of the verses of one book, in order."""
        return np.flatnonzero(self.books == book)


def data_home() -> Path:
    """The user's data directory: ``$RMAAT_DATA_HOME`` or ``~/.local/share/rmaat``."""
    return Path(os.environ.get("RMAAT_DATA_HOME") or "~/.local/share/rmaat").expanduser()


def kjv_cache_path() -> Path:
    """Where :func:`load_kjv` caches the parsed corpus."""
    return data_home() / "corpus" / "kjv_verses.tsv"


def parse_bible_output(text: str) -> Corpus:
    """Parse ``bible -f`` output (one ``<Book><chapter>:<verse> <text>`` line a verse)."""
    verses, books, refs = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _REFERENCE.match(line)
        if match is None or match.group(1) not in _BOOK_INDEX:
            raise DataError(f"line {number} of the bible output is not '<Book><chapter>:<verse> <text>': "
                            f"{line[:60]!r}; reinstall it ({KJV_INSTALL_HINT})")
        prefix, chapter, verse, body = match.groups()
        verses.append(" ".join(body.split()))
        books.append(_BOOK_INDEX[prefix])
        refs.append(f"{prefix}{chapter}:{verse}")
    if len(verses) != KJV_VERSES:
        raise DataError(f"the bible command printed {len(verses)} verses, not the King James Bible's "
                        f"{KJV_VERSES}; {KJV_INSTALL_HINT}")
    return Corpus(tuple(verses), np.asarray(books, dtype=np.int64), tuple(refs))


def _run_bible() -> str:
    if shutil.which(KJV_COMMAND[0]) is None:
        raise DataError(f"the 'bible' command is missing: {KJV_INSTALL_HINT}")
    try:
        done = subprocess.run(KJV_COMMAND, capture_output=True, check=False, timeout=120,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataError(f"could not run 'bible' ({error}); {KJV_INSTALL_HINT}") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise DataError(f"'bible' failed ({message[0]}); {KJV_INSTALL_HINT}")
    return done.stdout.decode("ascii", errors="replace")


def _write_cache(corpus: Corpus, path: Path) -> None:
    text = "".join(f"{ref} {verse}\n" for ref, verse in zip(corpus.refs, corpus.verses))
    atomic_write_bytes(path, text.encode("ascii"))


def load_kjv(cache: bool = True) -> Corpus:
    """The King James Bible as a :class:`Corpus`, from the cache or the ``bible`` command.

    A damaged cache is rebuilt from the command. Raises DataError naming the Debian package
    when the command is missing or prints something else than the 31,102 verses.
    """
    path = kjv_cache_path()
    if cache and path.is_file():
        try:
            return parse_bible_output(path.read_text(encoding="ascii"))
        except (DataError, UnicodeDecodeError, OSError):
            pass  # rebuilt below
    corpus = parse_bible_output(_run_bible())
    if cache:
        try:
            _write_cache(corpus, path)
        except OSError:
            pass  # a read-only home still gets the corpus, just not cached
    return corpus


def split_verses(corpus: Corpus) -> dict[str, np.ndarray]:
    """Verse indices of each split: per book, the first 80% train, next 10% val, last 10% test."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_FRACTIONS}
    for book in range(len(BOOKS)):
        idx = corpus.book_verses(book)
        n_train = int(round(len(idx) * SPLIT_FRACTIONS["train"]))
        n_val = int(round(len(idx) * SPLIT_FRACTIONS["val"]))
        out["train"].append(idx[:n_train])
        out["val"].append(idx[n_train:n_train + n_val])
        out["test"].append(idx[n_train + n_val:])
    return {name: np.concatenate(parts) for name, parts in out.items()}


class SplitText:
    """Some verses joined by single spaces into one string, with each verse's start offset.

    Attributes:
        text: the joined verses (ASCII, so byte offsets = character offsets).
        verse_ids: (n,) global verse index of each verse, in order.
        starts: (n + 1,) offset of each verse in ``text``; ``starts[-1]`` is ``len(text) + 1``.
    """

    def __init__(self, corpus: Corpus, verse_ids: np.ndarray):
        if len(verse_ids) == 0:
            raise DataError("no verses to join (an empty split or book selection)")
        self.verse_ids = np.asarray(verse_ids, dtype=np.int64)
        parts = [corpus.verses[i] for i in self.verse_ids]
        lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
        self.starts = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        self.text = " ".join(parts)

    def __len__(self) -> int:
        return len(self.text)

    def window_starts(self, length: int) -> np.ndarray:
        """Indices of the verses at which a window of ``length`` characters fits in the text."""
        return np.flatnonzero(self.starts[:-1] + length <= len(self.text))

    def verses_of(self, begin: int, end: int) -> tuple[int, int]:
        """Global ids of the first and last verse overlapping ``text[begin:end]``."""
        first = int(np.searchsorted(self.starts, begin, side="right")) - 1
        last = int(np.searchsorted(self.starts, max(begin, end - 1), side="right")) - 1
        return int(self.verse_ids[first]), int(self.verse_ids[last])
