"""Parsing helpers shared by the CLI subcommands."""

from __future__ import annotations

from collections.abc import Callable, Iterable

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
