"""Parsing and checking helpers shared by the CLI subcommands (torch-free at import: ``pipeline
simulate`` uses them too)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import click


def _at_least_one(option: str) -> Callable[[int], None]:
    def check(value: int) -> None:
        if value < 1:
            raise click.ClickException(f"{option} values must be >= 1, got {value}")
    return check


def parse_int_list(specs: str | Iterable[str], option: str, *,
                   check: Callable[[int], object] | None = None) -> list[int]:
    """Parse ``"16"``, ``"4,8,16"``, ``"1-64"`` and mixtures (one string or several, as from a
    repeatable option) into a sorted list of unique ints.

    ``check(value)`` validates every number and both ends of every range *before* a range is
    expanded (so ``1-999999999`` fails at once instead of building a huge set); it raises the
    caller's one-line error. Default: every value must be >= 1. Syntax errors raise
    ``click.ClickException``, printed by click as one ``Error: ...`` line.
    """
    check = check or _at_least_one(option)
    values: set[int] = set()
    for spec in [specs] if isinstance(specs, str) else list(specs):
        for token in (t.strip() for t in str(spec).split(",")):
            if not token:
                raise click.ClickException(f"{option} {spec!r} has an empty entry; use e.g. 16, 4,8,16 or 1-64")
            lo_text, sep, hi_text = token.partition("-")
            try:
                if not lo_text or not sep:  # a plain number, possibly negative: "16", "-3"
                    lo = hi = int(token)
                    sep = ""
                else:
                    lo, hi = int(lo_text), int(hi_text)
            except ValueError:
                raise click.ClickException(
                    f"{option} {token!r} is not a whole number or range; use e.g. 16, 4,8,16 or 1-64"
                ) from None
            if sep and lo > hi:
                raise click.ClickException(f"{option} range {token!r} is empty; write it as low-high")
            check(lo)
            check(hi)
            values.update(range(lo, hi + 1))
    if not values:
        raise click.ClickException(f"{option}: give at least one value, e.g. 16 or 4,8,16")
    return sorted(values)


def check_device(device: str) -> str:
    """``device`` if ``pipeline train`` would take it as ``--device``, else its one-line ConfigError.

    The rule is the run config's ``train.device`` rule (auto, cpu, cuda, cuda:N;
    :meth:`rmaat.train.config.RunConfig.validate`), applied here through a default config so
    that every command refuses the same devices with the same words. Whether CUDA is there is
    decided where the device is opened (:func:`rmaat.train.distributed.init_distributed`)."""
    from rmaat.train.config import RunConfig, TrainSection

    RunConfig(task="--device", train=TrainSection(device=device)).validate()
    return device


def check_output_file(path: str | os.PathLike, option: str, suffixes: tuple[str, ...]) -> Path:
    """The file that writing ``path`` will replace, checked before the work whose result it is to hold.

    One-line errors: a directory or device at ``path`` (:func:`retention.atomic.output_path`); a
    suffix not in ``suffixes`` (the format follows the suffix; ConfigError); a nearest existing
    ancestor that is not a directory, or one in which no file can be created (OutputPathError).
    The last is found by creating a nameless temporary file there: permission bits cannot tell
    (root passes every check, and ``/proc`` refuses new files whatever its mode says).
    """
    from retention.atomic import output_path
    from retention.errors import OutputPathError
    from rmaat.errors import ConfigError

    given = Path(path)
    target = output_path(given)  # first: "a directory" says more than "no suffix"
    if given.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {given} must end in {' or '.join(suffixes)} (the suffix chooses the format)")
    folder = target.parent
    while not folder.exists():  # the nearest existing ancestor creates the rest
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {option} {given}: {folder} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputPathError(f"cannot write {option} {given}: no file can be created in {folder} "
                              f"({error.strerror or error}); choose another path") from None
    return target
