"""Parsing helpers shared by the CLI subcommands."""

from __future__ import annotations

import click


def parse_int_list(text: str, option: str) -> list[int]:
    """Parse ``"4,8,16"`` or ``"1-4,8"`` into a sorted list of unique positive ints.

    Raises ``click.BadParameter`` (a one-line usage error) for anything else.
    """
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
                if lo > hi:
                    raise ValueError
                values.update(range(lo, hi + 1))
            else:
                values.add(int(part))
        except ValueError:
            raise click.BadParameter(
                f"{part!r} is not a whole number or a range like 1-64", param_hint=option
            ) from None
    if not values:
        raise click.BadParameter("give at least one value, e.g. 16 or 4,8,16", param_hint=option)
    if min(values) < 1:
        raise click.BadParameter(f"values must be >= 1, got {min(values)}", param_hint=option)
    return sorted(values)
