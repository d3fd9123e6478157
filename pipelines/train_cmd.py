"""``pipeline train`` and ``pipeline evaluate``.

    pipeline train --task listops --data-dir d --max-steps 50 --run-dir r
    torchrun --nproc-per-node 4 -m pipelines.cli train --task retrieval --data-dir lra_release
    pipeline train --run-dir r --resume            # continue an interrupted run
    pipeline evaluate --checkpoint r/checkpoints/best.pt --split test

The run config is the task's packaged YAML (``rmaat/configs/<task>.yaml``, or ``--config FILE``)
with the options below applied on top; ``--set section.field=value`` reaches every other field
(e.g. ``--set train.grad_accum=4``, ``--set model.n_mem=4``, ``--set optim.schedule=linear``).
torch is imported only when a command runs, inside the rmaat.train modules.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

#: CLI option -> run-config key (see rmaat.train.config).
OPTION_KEYS: dict[str, str] = {
    "preset": "model.preset",
    "backprop": "model.backprop",
    "segments": "model.segments",
    "d_model": "model.d_model",
    "layers": "model.n_layers",
    "seq_len": "data.seq_len",
    "data_dir": "data.data_dir",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "device": "train.device",
    "seed": "train.seed",
    "eval_every": "train.eval_every",
    "init_from": "train.init_from",
    "compile": "train.compile",
}


def resolve_config(task: str | None, config_path: str | None, run_dir: str | None, resume: bool,
                   options: dict[str, object], set_items: tuple[str, ...]):
    """The run config: a base plus the given options and ``--set`` items (later wins).

    The base is ``--config``, else (with ``--resume``) the run's own ``config.yaml``, else the
    task's packaged YAML. Resuming with the original command line therefore works, and any
    option that changes what is trained is refused by the checkpoint's config hash.
    """
    from rmaat.errors import ConfigError
    from rmaat.train.config import (
        apply_overrides, available_tasks, load_config_file, load_task_config, parse_set_options,
    )

    saved = Path(run_dir) / "config.yaml" if run_dir is not None else None
    if config_path is None and resume and saved is not None and saved.is_file():
        config_path = saved  # resuming: the run's own resolved config, so only changes show up
    if config_path is not None:
        config = load_config_file(config_path)
        if task is not None and task != config.task:
            raise ConfigError(f"--task {task} contradicts task {config.task!r} in {config_path}; drop one")
    elif task is not None:
        config = load_task_config(task)
    else:
        raise ConfigError(f"give --task (one of {', '.join(available_tasks())}) or --config FILE"
                          + ("" if not resume else ", or --run-dir of a run to resume"))
    overrides = {OPTION_KEYS[name]: value for name, value in options.items() if value is not None}
    overrides.update(parse_set_options(set_items))
    config = apply_overrides(config, overrides)
    config.validate()
    return config


@click.command()
@click.option("--task", default=None, help="listops, text, retrieval, image, pathfinder; stand-ins fashion_mnist, "
                                           "babi_qa1, babi_qa2, kjv_text, kjv_match; kjv_lm (byte LM).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="A run-config YAML to start from instead of the task's packaged one.")
@click.option("--preset", default=None, help="rmaat (default), rmt, rlt, at or transformer.")
@click.option("--backprop", default=None, type=click.Choice(["amrb", "bptt"]),
              help="Training mode through the segments (default: the preset's).")
@click.option("--max-steps", type=int, default=None, help="Optimiser steps.")
@click.option("--batch-size", type=int, default=None, help="Examples per optimiser step and process.")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--segments", type=int, default=None, help="Segments T per input (seq_len / T tokens each).")
@click.option("--seq-len", type=int, default=None, help="Tokens per input (per document for retrieval).")
@click.option("--d-model", type=int, default=None, help="Model width.")
@click.option("--layers", type=int, default=None, help="Encoder layers.")
@click.option("--data-dir", default=None, help="Task data directory (official layout or generated).")
@click.option("--run-dir", default=None, help="Output directory (default runs/<task>-<preset>-<time>).")
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="Seed of initialisation, dropout and data order.")
@click.option("--eval-every", type=int, default=None, help="Validate every N steps.")
@click.option("--init-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Start from another run's checkpoint (curriculum: e.g. the same model at fewer segments); "
                   "the retention factors stay this run's.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from checkpoints/last.pt.")
@click.option("--force", is_flag=True, help="Overwrite the artefacts of a previous run in --run-dir.")
@click.option("--set", "set_items", multiple=True, metavar="KEY=VALUE",
              help="Any other config field, e.g. train.grad_accum=4 or model.n_mem=4 (repeatable).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the encoder blocks (train.compile; how, not what, is trained).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(task, config_path, preset, backprop, max_steps, batch_size, lr, segments, seq_len, d_model, layers,
          data_dir, run_dir, device, seed, eval_every, init_from, resume, force, set_items, compile_,
          no_progress) -> None:
    """Train a model on an LRA task; prints test accuracy against the majority-class baseline
    (kjv_lm: test bits per byte against a unigram byte baseline).

    Writes RUN_DIR/{config.yaml, metrics.jsonl, tensorboard/, checkpoints/{last,best}.pt,
    summary.json, curves.png}. Ctrl-C saves a checkpoint first; continue with --resume.
    Multi-GPU: run the same command under `torchrun --nproc-per-node N -m pipelines.cli`.
    """
    from rmaat.errors import ConfigError

    if resume and force:
        raise ConfigError("--resume and --force contradict each other; give one")
    if resume and run_dir is None:
        raise ConfigError("--resume needs the --run-dir of the run to continue")
    options = dict(preset=preset, backprop=backprop, max_steps=max_steps, batch_size=batch_size, lr=lr,
                   segments=segments, seq_len=seq_len, d_model=d_model, layers=layers, data_dir=data_dir,
                   device=device, seed=seed, eval_every=eval_every, compile=compile_,
                   init_from=None if init_from is None else str(Path(init_from).resolve()))
    config = resolve_config(task, config_path, run_dir, resume, options, set_items)

    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.train.rundir import default_run_dir
    from rmaat.train.trainer import Trainer

    if is_lm_task(config.task):
        from rmaat.train.lm_trainer import LMTrainer as Trainer  # same loop, byte-LM objective
    trainer = Trainer(config, run_dir or default_run_dir(config), resume=resume, force=force,
                      progress=not no_progress, echo=click.echo)
    if trainer.info.is_main:
        click.echo(f"run directory: {trainer.run_dir}", err=True)
    summary = trainer.fit()
    if summary is None and trainer.stop_reason == "signal":
        # a shell's status for a process its signal stopped: 130 for SIGINT, 143 for SIGTERM
        raise SystemExit(128 + (trainer.stop_signal or signal.SIGINT))


@click.command()
@click.option("--checkpoint", required=True, help="A checkpoint written by `pipeline train` (last.pt or best.pt).")
@click.option("--split", default="test", show_default=True, help="train, val or test.")
@click.option("--data-dir", default=None, help="Data directory (default: the one the run used).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=None, help="Evaluation batch size (default: the run's).")
@click.option("--by", type=click.Choice(["depth"]), default=None,
              help="Also report accuracy per segment of the supporting fact (memory tasks).")
@click.option("--segments", type=int, default=None,
              help="Evaluate at T segments of the trained segment length (length generalisation; "
                   "retention factors of the new T). Needs data of that length (--data-dir).")
@click.option("--stream-bytes", type=int, default=None,
              help="Byte LMs: read streams of this many bytes with memory carried across all their segments "
                   "and report bits per byte by position for each retention rule (e.g. 65536).")
@click.option("--streams", type=int, default=None, help="With --stream-bytes: at most this many streams.")
@click.option("--figure", default=None,
              help="With --stream-bytes: write the bpb-by-position figure here (.png or .svg).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(checkpoint, split, data_dir, device, batch_size, by, segments, stream_bytes, streams, figure,
             as_json) -> None:
    """Report a checkpoint's accuracy on a split, next to the majority-class baseline
    (byte LMs: bits per byte next to the unigram byte baseline, or by position with --stream-bytes)."""
    from pipelines.options import check_device, check_output_file
    from rmaat.errors import ConfigError
    from rmaat.lm.stream import FIGURE_SUFFIXES

    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    check_device(device)
    if figure is not None:  # a figure that cannot be written fails now, not after the (long) streaming pass
        check_output_file(figure, "--figure", FIGURE_SUFFIXES)
    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.train.checkpoint import load_checkpoint

    if is_lm_task(load_checkpoint(checkpoint).get("config", {}).get("task", "")):
        if by is not None or segments is not None:
            raise ConfigError("--by and --segments are for classifiers; a byte LM takes --stream-bytes for long inputs")
        _evaluate_lm(checkpoint, split, data_dir, device, batch_size, stream_bytes, streams, figure, as_json)
        return
    if stream_bytes is not None or streams is not None or figure is not None:
        raise ConfigError("--stream-bytes, --streams and --figure are for byte-LM checkpoints (pipeline train --task kjv_lm)")
    from rmaat.train.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, split=split, data_dir=data_dir, device=device,
                                 batch_size=batch_size, by=by, segments=segments)
    if as_json:
        click.echo(json.dumps(result))
        return
    stand_in = "" if result["is_lra"] else " [stand-in task, not an LRA result]"
    click.echo(f"{result['task_title']}{stand_in}, {result['preset']} at step {result['step']}, "
               f"{result['segments']} segment(s) of {result['seq_len'] // result['segments']} tokens, "
               f"{split} split (n={result['n']}): accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}; "
               f"majority-class baseline {result['majority_baseline']:.4f}")
    if by == "depth":
        from rmaat.train.summary import format_by_depth

        click.echo(format_by_depth(result["by_depth_segment"]))


def _evaluate_lm(checkpoint, split, data_dir, device, batch_size, stream_bytes, streams, figure, as_json) -> None:
    """``pipeline evaluate`` of a byte-LM checkpoint."""
    from rmaat.errors import ConfigError

    if stream_bytes is None:
        if streams is not None or figure is not None:
            raise ConfigError("--streams and --figure need --stream-bytes")
        from rmaat.train.lm_trainer import evaluate_lm_checkpoint

        r = evaluate_lm_checkpoint(checkpoint, split=split, data_dir=data_dir, device=device, batch_size=batch_size)
        click.echo(json.dumps(r) if as_json else
                   f"{r['task']} {r['preset']} at step {r['step']}, {r['seq_len']}-byte contexts, {split} split "
                   f"(n={r['n']:,} bytes): bits/byte {r['bpb']:.4f} vs unigram byte baseline {r['unigram_bpb']:.4f} "
                   f"(byte bigram {r['bigram_bpb']:.4f})")
        return
    if streams is not None and streams < 1:
        raise ConfigError(f"--streams must be >= 1, got {streams}")
    from rmaat.train.lm_trainer import stream_evaluate_checkpoint

    result = stream_evaluate_checkpoint(checkpoint, split=split, data_dir=data_dir, device=device,
                                        stream_bytes=stream_bytes, max_streams=streams)
    if figure is not None:
        from rmaat.lm.stream import plot_stream

        plot_stream(result, figure, f"{result['preset']} (step {result['step']}): bits per byte "
                                    f"by position, {split} split")
    if as_json:
        click.echo(json.dumps(result))
        return
    from rmaat.lm.stream import format_stream

    click.echo(format_stream(result))
    if figure is not None:
        click.echo(f"figure: {figure}")
