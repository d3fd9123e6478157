"""``pipeline data``: generate ListOps / Pathfinder in LRA's layout and the offline stand-ins
(memory tasks ``babi_qa1``/``babi_qa2``, ``kjv_text``, ``kjv_match``); check a data directory.

``generate`` writes into a temporary directory beside ``--out`` and renames it into place when
complete (rmaat.data.generate), so an interrupted run never leaves a half-written data set.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from rmaat.errors import ConfigError

#: LRA's full sizes (and the stand-ins'), used when --size is not given.
DEFAULT_SIZES = {"listops": 100_000, "pathfinder": 200_000, "babi_qa1": 20_000, "babi_qa2": 20_000,
                 "kjv_text": 20_000, "kjv_match": 20_000}
#: Smallest sizes the split rules accept (one example per split / an 80-10-10 split).
MIN_SIZES = {"listops": 3, "pathfinder": 10, "babi_qa1": 3, "babi_qa2": 3, "kjv_text": 3, "kjv_match": 3}
MEMORY_TASKS = ("babi_qa1", "babi_qa2")


def memory_task_config(task: str, length: int | None, segment_length: int | None, facts: int | None,
                       people: int | None, fact_segments: str | None):
    """The BabiConfig of ``--task babi_*`` from the generate options (ConfigError on impossible ones)."""
    from pipelines.options import parse_int_list
    from rmaat.data.babi import BabiConfig

    given = {"length": length, "segment_length": segment_length, "n_facts": facts, "n_people": people}
    segments = None
    if fact_segments is not None:
        def non_negative(value: int) -> None:
            if value < 0:
                raise ConfigError(f"--fact-segments values are 0-based segment indices, got {value}")
        segments = tuple(parse_int_list(fact_segments, "--fact-segments", check=non_negative))
    return BabiConfig(task=task.removeprefix("babi_"), fact_segments=segments,
                      **{k: v for k, v in given.items() if v is not None})


@click.group()
def data() -> None:
    """Task data: fetch a public archive, generate ListOps/Pathfinder and the stand-ins, check a data directory."""


@data.command()
@click.option("--task", required=True,
              help="listops or pathfinder (LRA's generated tasks); babi_qa1, babi_qa2, kjv_text or "
                   "kjv_match (offline stand-ins on the King James Bible, never LRA results).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output directory (official layout is written inside it).")
@click.option("--size", type=int, default=None,
              help="Total examples over all splits [default: LRA's, listops 100000 "
                   "(96000/2000/2000), pathfinder 200000 (80/10/10)].")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--min-length", type=int, default=None,
              help="listops only: keep expressions longer than this many tokens [default: LRA's 500]. "
                   "Other bounds make a short-ListOps demo set, not LRA ListOps.")
@click.option("--max-length", type=int, default=None,
              help="listops only: keep expressions shorter than this many tokens [default: LRA's 2000].")
@click.option("--length", type=int, default=None,
              help="babi_* only: bytes per example, question included [default: 4096].")
@click.option("--segment-length", type=int, default=None,
              help="babi_* only: bytes per model segment; facts never straddle one [default: 512].")
@click.option("--facts", type=int, default=None,
              help="babi_* only: fact sentences per story, distractors included [default: 4].")
@click.option("--people", type=int, default=None, help="babi_* only: people per story [default: 4].")
@click.option("--fact-segments", default=None,
              help="babi_* only: 0-based segments that may hold facts, e.g. 0 or 0-2 [default: all].")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def generate(task: str, out: Path, size: int | None, seed: int, min_length: int | None,
             max_length: int | None, length: int | None, segment_length: int | None, facts: int | None,
             people: int | None, fact_segments: str | None, force: bool) -> None:
    """Generate a data set from the published rules, written in LRA's layout.

    With --min-length/--max-length (listops), the set is a short-ListOps demo set; the rules
    used are recorded in listops-1000/generation.json. The babi_* memory tasks hide bAbI facts in
    King James Bible text (Debian's bible-kjv); their generation.json records every parameter.
    """
    from rmaat.data import get_task

    spec = get_task(task)
    if spec.generator is None:
        raise ConfigError(f"task {task!r} is not generated (only {', '.join(DEFAULT_SIZES)}); "
                          f"to get it, {spec.obtain}")
    options: dict[str, object] = {}
    if min_length is not None or max_length is not None:
        if task != "listops":
            raise ConfigError(f"--min-length/--max-length apply to listops only, not {task}; drop them")
        from rmaat.data.listops import ListOpsConfig

        lra = ListOpsConfig()
        options["cfg"] = ListOpsConfig(  # ConfigError on impossible bounds, before any work
            min_length=lra.min_length if min_length is None else min_length,
            max_length=lra.max_length if max_length is None else max_length)
    memory_options = {"--length": length, "--segment-length": segment_length, "--facts": facts,
                      "--people": people, "--fact-segments": fact_segments}
    given = [name for name, value in memory_options.items() if value is not None]
    if task in MEMORY_TASKS:
        options["cfg"] = memory_task_config(task, length, segment_length, facts, people, fact_segments)
    elif given:
        raise ConfigError(f"{', '.join(given)} apply to {' and '.join(MEMORY_TASKS)} only, not {task}; drop them")
    size = DEFAULT_SIZES[task] if size is None else size
    if size < MIN_SIZES[task]:
        raise ConfigError(f"--size {size} is too small for {task}; give at least {MIN_SIZES[task]}")
    from rmaat.data.generate import check_out_dir, generate_task

    out = check_out_dir(out, force)

    start = time.perf_counter()
    sizes = generate_task(task, out, size=size, seed=seed, progress=sys.stderr.isatty(), **options)
    seconds = time.perf_counter() - start
    counts = ", ".join(f"{split} {n}" for split, n in sizes.items())
    title = spec.title
    cfg = options.get("cfg")
    if task == "listops" and cfg is not None and not cfg.is_lra:
        title = (f"a short-ListOps demo set ({cfg.min_length} < length < {cfg.max_length} tokens; "
                 f"not LRA ListOps)")
    if not spec.is_lra:
        title = f"{spec.title} [stand-in, not an LRA task]"
    click.echo(f"wrote {title} to {out} ({counts}; seed {seed}; {seconds:.1f} s)")
    click.echo(f"next: pipeline data check --task {task} --data-dir {out}")
    if task in MEMORY_TASKS:
        cfg = options["cfg"]
        click.echo(f"then: pipeline train --task {task} --data-dir {out} --seq-len {cfg.length} "
                   f"--segments {cfg.n_segments}")


@data.command()
@click.option("--task", required=True,
              help="listops, text, retrieval, image, pathfinder; stand-ins fashion_mnist, babi_qa1, "
                   "babi_qa2, kjv_text, kjv_match.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Directory holding the data (the task folder, its parent or the unpacked "
                   "LRA release); fashion_mnist defaults to the Debian package's folder.")
@click.pass_context
def check(ctx: click.Context, task: str, data_dir: Path | None) -> None:
    """Validate a data directory: counts per split and label balance, or what is missing."""
    from rmaat.data.check import check_task

    report = check_task(task, data_dir)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        ctx.exit(1)


@data.command()
@click.option("--task", required=True,
              type=click.Choice(["text", "image", "listops", "retrieval", "pathfinder"]),
              help="text (IMDb), image (CIFAR-10) or listops, retrieval, pathfinder (the LRA release).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output directory; the task's folder (aclImdb/, cifar-10-batches-py/, listops-1000/, "
                   "tsv_data/, pathfinder32/curv_contour_length_14/) is written inside it.")
@click.option("--url", default=None,
              help="Download from this mirror instead. The LRA release's official URL is known to "
                   "answer 403 Forbidden; a mirror of lra_release.gz is then needed.")
@click.option("--md5", default=None,
              help="Expected MD5 of the archive (replaces the known one). IMDb and CIFAR-10 have "
                   "known MD5s, also checked on a mirror; the LRA release has no published hash.")
@click.option("--sha256", default=None, help="Expected SHA-256 of the archive (instead of --md5).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where downloads are cached and reused [default: $RMAAT_DATA_CACHE if set, "
                   "else ~/.cache/rmaat-pipeline].")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def fetch(task: str, out: Path, url: str | None, md5: str | None, sha256: str | None,
          cache_dir: Path | None, force: bool) -> None:
    """Download a task's public archive, unpack it into the layout the loaders read, check it.

    The archive is cached (a second fetch reuses it) and checked against its hash when one is
    known or given: IMDb and CIFAR-10 have published MD5s; the LRA release (listops, retrieval,
    pathfinder) has none, so without --md5/--sha256 its download is unverified. Only the task's
    folder is unpacked, into a temporary directory beside --out that is checked like
    `pipeline data check` and then renamed into place: --out never holds a partial data set.
    """
    from rmaat.data.fetch import fetch_task, resolve_source
    from rmaat.data.generate import check_out_dir

    source = resolve_source(task, url, md5, sha256)
    out = check_out_dir(out, force)  # before a long download
    if source.known_hash is None:
        click.echo(f"warning: the download is unverified ({source.archive.title} has no published "
                   "hash); pass --md5 or --sha256 to check it", err=True)
    else:
        click.echo(f"expected hash: {source.known_hash}")
    result = fetch_task(task, out, source, cache_dir=cache_dir, force=force,
                        progress=sys.stderr.isatty(), echo=click.echo)
    for line in result.report.lines():
        click.echo(line)
    click.echo(f"wrote {result.n_files} files of {source.archive.title} to {result.out}")
    click.echo(f"next: pipeline train --task {task} --data-dir {result.out}")
