"""``pipeline experiment``: the paper's claims as grids of runs with seeds and confidence intervals.

    pipeline experiment list
    pipeline experiment run memory --scale cpu --seeds 3 --jobs 2     # resumable; --dry-run plans only
    pipeline experiment report memory                                 # table + figure from the run dirs
    pipeline experiment stream lm --points rmaat_2k,rmt_2k --stream-bytes 65536   # LM: bpb by position

Experiment files: ``rmaat/configs/experiments/NAME.yaml`` (format in rmaat.experiments.spec).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import click

SCALE = click.option("--scale", type=click.Choice(["cpu", "paper"]), default="cpu", show_default=True,
                     help="cpu: small, <= 30 min on 2 cores; paper: the paper's sizes (a GPU).")
ROOT = click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
                    help="Where experiments live [default: runs/experiments/<scale>].")


def _root(root: Path | None, scale: str, name: str) -> Path:
    """The experiment's folder under ``--root``, checked to be (or to be able to become) a
    writable folder, so that a root below a regular file fails here in one line, not mid-run."""
    from rmaat.experiments.jobs import DEFAULT_ROOT

    folder = (root or DEFAULT_ROOT / scale) / name
    _check_folder(folder, "--root" if root is not None else "the default root")
    return folder


def _check_folder(folder: Path, what: str) -> None:
    """ConfigError when the nearest existing folder on the way to ``folder`` is a file or not writable."""
    import os

    from rmaat.errors import ConfigError

    for parent in (folder, *folder.parents):
        if not os.path.lexists(parent):
            continue
        if not parent.is_dir():
            raise ConfigError(f"{what}: {parent} is a file, not a folder, so {folder} cannot be made; "
                              "give a --root that is (or can become) a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{what}: cannot write in {parent} (permission denied); give a --root you can write to")
        return


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt("SIGTERM") in this block, so ``finally`` clauses run."""
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group()
def experiment() -> None:
    """Reproduce the paper's claims: list, run and report experiments."""


@experiment.command("list")
def list_() -> None:
    """The packaged experiments and their questions."""
    from rmaat.experiments.spec import available_experiments, load_experiment

    for name in available_experiments():
        exp = load_experiment(name)
        click.echo(f"{name:<24} {exp.task:<12} {len(exp.points)} points x {exp.seeds} seeds  "
                   f"{' '.join(exp.question.split())[:90]}")


@experiment.command()
@click.argument("name")
@SCALE
@click.option("--seeds", type=int, default=None, help="Seeds per grid point [default: the file's].")
@click.option("--jobs", type=int, default=1, show_default=True,
              help="Runs in parallel, one process and one torch thread each.")
@click.option("--dry-run", is_flag=True, help="Print the grid, sizes and estimated wall time; run nothing.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="A progress bar of finished runs (the per-run lines are printed either way).")
@click.option("--force", is_flag=True,
              help="Replace runs made with another configuration than the file now gives (stale runs).")
@ROOT
def run(name: str, scale: str, seeds: int | None, jobs: int, dry_run: bool, progress: bool, force: bool,
        root: Path | None) -> None:
    """Run experiment NAME (finished runs are skipped, interrupted ones resume), then report it.

    Ctrl-C or SIGTERM: every running run finishes its step, saves its checkpoint and stops (a
    second signal stops them at once); the same command resumes. Exit status 130 / 143."""
    from rmaat.errors import ConfigError
    from rmaat.experiments.report import run_command, write_report
    from rmaat.experiments.runner import ExperimentStopped, check_stale, estimate_seconds, run_experiment
    from rmaat.experiments.spec import load_experiment
    from rmaat.experiments.validate import validate_experiment

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    exp = load_experiment(name, scale, seeds)
    folder = _root(root, scale, exp.name)
    validate_experiment(exp, folder)  # every point's config, before anything runs (or is planned)
    if dry_run:
        click.echo(f"{exp.name} ({scale}): {exp.question.strip()}")
        click.echo(f"task {exp.task}, base config {exp.base_config}, metric {exp.metric}, "
                   f"{len(exp.points)} grid points x {exp.seeds} seeds = {exp.n_runs} runs -> {folder}")
        for point in exp.points:
            for i, stage in enumerate(point.stages):
                label = point.name if len(point.stages) == 1 else f"{point.name} stage {i}"
                label += f" ({stage.name})" if stage.name else ""
                if stage.trains:
                    click.echo(f"  {label:<28} data {stage.data}  set {stage.overrides}")
                else:
                    click.echo(f"  {label:<28} data {stage.data}  evaluate the last trained stage's best.pt "
                               f"at {stage.evaluate_segments} segments")
        if exp.tuning is not None:
            from rmaat.experiments.tuning import describe

            for line in describe(exp.tuning, exp):
                click.echo(line)
        minutes = estimate_seconds(exp, jobs) / 60
        tuning = f"; tuning {estimate_seconds(exp, jobs, 'tuning') / 60:.0f} min of it" if exp.tuning else ""
        click.echo(f"estimated wall time with --jobs {jobs}: {minutes:.0f} min{tuning} (at {exp.tokens_per_s:.3g} "
                   "tokens/s per process, the experiment file's figure)")
        return
    import time

    check_stale(exp, folder, force=force, log=click.echo)
    start = time.perf_counter()
    try:
        with _sigterm_unwinds():  # data generation cleans its temp folder on SIGTERM too
            run_experiment(exp, folder, jobs=jobs, log=click.echo, progress=progress, force=force)
    except ExperimentStopped as stopped:
        click.echo(str(stopped), err=True)
        raise SystemExit(stopped.exit_code) from None
    except KeyboardInterrupt as interrupt:  # before the workers started (data generation)
        click.echo(f"{exp.name} stopped before any run started; run the same command again", err=True)
        raise SystemExit(143 if "SIGTERM" in str(interrupt) else 130) from None
    click.echo(f"this invocation took {(time.perf_counter() - start) / 60:.1f} min")
    paths = write_report(exp, folder, run_command(exp, jobs=jobs, root=root))
    click.echo(paths["md"].read_text())
    click.echo(f"wrote {paths['csv']}, {paths['md']}, {paths['figure']}")


@experiment.command()
@click.argument("name")
@SCALE
@click.option("--seeds", type=int, default=None, help="Seeds per grid point [default: the file's].")
@ROOT
def report(name: str, scale: str, seeds: int | None, root: Path | None) -> None:
    """Rebuild results.csv, results.md and the figure of NAME from its run directories (runs of
    an older version of the experiment file are marked stale and left out of the means)."""
    from rmaat.experiments.report import run_command, write_report
    from rmaat.experiments.spec import load_experiment

    exp = load_experiment(name, scale, seeds)
    paths = write_report(exp, _root(root, scale, exp.name), run_command(exp, root=root))
    click.echo(paths["md"].read_text())
    click.echo(f"wrote {paths['csv']}, {paths['md']}, {paths['figure']}")


@experiment.command()
@click.argument("name")
@click.option("--points", required=True, help="Comma-separated grid points of a language-model experiment.")
@click.option("--stream-bytes", type=int, default=65536, show_default=True,
              help="Bytes per stream (a multiple of the segment length).")
@click.option("--streams", type=int, default=None, help="At most this many streams [default: all that fit].")
@SCALE
@click.option("--seeds", type=int, default=None, help="Seeds per grid point [default: the file's].")
@ROOT
def stream(name: str, points: str, stream_bytes: int, streams: int | None, scale: str, seeds: int | None,
           root: Path | None) -> None:
    """Bits per byte by position over long held-out streams for the trained runs of POINTS, memory
    carried across every segment, per retention rule (rmaat.lm.stream); writes streaming.md and
    streaming.png under the experiment's streaming-<bytes>/ folder."""
    import shlex

    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.errors import ConfigError
    from rmaat.experiments.spec import load_experiment
    from rmaat.experiments.streaming import run_streaming, stream_folder, streaming_figure, streaming_markdown
    from rmaat.train.metrics import atomic_write_text

    exp = load_experiment(name, scale, seeds)
    if not is_lm_task(exp.task):
        raise ConfigError(f"{exp.name} trains {exp.task}, not a language model; stream evaluates LM experiments (lm)")
    if streams is not None and streams < 1:
        raise ConfigError(f"--streams must be >= 1, got {streams}")
    if stream_bytes < 1:
        raise ConfigError(f"--stream-bytes must be >= 1, got {stream_bytes}")
    chosen = list(dict.fromkeys(p.strip() for p in points.split(",") if p.strip()))
    if not chosen:
        raise ConfigError(f"--points names no grid point; choose from {', '.join(p.name for p in exp.points)}")
    folder = _root(root, scale, exp.name)
    results = run_streaming(exp, folder, chosen, stream_bytes=stream_bytes, streams=streams, log=click.echo)
    command = (f"pipeline experiment stream {exp.argument} --points {','.join(chosen)} --stream-bytes {stream_bytes}"
               + (f" --streams {streams}" if streams else "") + f" --scale {scale} --seeds {exp.seeds}"
               + (f" --root {shlex.quote(str(root))}" if root is not None else ""))
    out = stream_folder(folder, stream_bytes)
    atomic_write_text(out / "streaming.md", streaming_markdown(results, command))
    streaming_figure(results, out / "streaming.png", f"{exp.name}: bits per byte by position, memory carried "
                                                     f"over {stream_bytes:,}-byte test streams")
    click.echo((out / "streaming.md").read_text())
    click.echo(f"wrote {out / 'streaming.md'}, {out / 'streaming.png'}")
