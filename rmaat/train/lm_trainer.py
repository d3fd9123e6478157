"""Training and evaluating the causal byte LM (``pipeline train --task kjv_lm``, SPEC §8).

:class:`LMTrainer` is :class:`rmaat.train.trainer.Trainer` with a language-modelling objective:
the same run directory, checkpoints, exact resume, signals, TensorBoard, metrics and curves;
what differs is the objective's part (the hooks of the Trainer):

* data: byte streams of the held-out-book splits (:mod:`rmaat.data.kjv_lm`), training windows
  from a :class:`~rmaat.data.kjv_lm.WindowSampler` whose position is a batch counter;
* model: :class:`rmaat.lm.model.CausalLM` from the run config (``model.preset`` rmaat / rmt / rlt /
  transformer; ``data.seq_len`` bytes of context cut into ``model.segments`` segments; every
  other ``model.*`` key is an :class:`~rmaat.lm.config.LMConfig` field such as ``d_model`` or ``n_mem``);
* step: next-byte cross-entropy on every segment, through AMRB (rmaat's default, the
  per-segment-loss replay of :mod:`rmaat.lm.amrb`) or BPTT (the baselines' default);
* metric: bits per byte, lower is better; the best checkpoint has the lowest validation bpb
  (stored as the score ``-bpb``), and the test pass prints it next to a unigram byte baseline.

Gradient accumulation and several processes: AMRB replays segments outside ``forward``, where
DistributedDataParallel's hooks would not see them, so this trainer does not wrap the model in
DDP; it sums the micro-batches' gradients and averages them over micro-batches and processes
itself (:meth:`LMTrainer._sync_gradients`), which is what DDP computes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmaat.data.kjv_lm import (
    LM_TITLE, WindowSampler, bigram_bits_per_byte, bits, eval_windows, load_byte_split, unigram_bits_per_byte,
)
from rmaat.errors import CheckpointError, ConfigError, DataError
from rmaat.lm.amrb import lm_forward_backward
from rmaat.lm.config import LMConfig
from rmaat.lm.model import CausalLM
from rmaat.train.checkpoint import load_checkpoint, load_model_weights, stored_config
from rmaat.train.config import RunConfig, config_hash
from rmaat.train.distributed import DistInfo, all_reduce_sum, distributed_session
from rmaat.train.evaluation import autocast_context
from rmaat.train.summary import peak_memory
from rmaat.train.trainer import Trainer

#: AMRB for RMAAT, BPTT for the baselines (the paper's comparison); the transformer has no segments.
DEFAULT_BACKPROP = {"rmaat": "amrb", "rmt": "bptt", "rlt": "bptt", "transformer": "bptt"}
#: LMConfig fields the run config sets through other keys.
_DERIVED_FIELDS = {"preset": "model.preset", "segment_len": "data.seq_len / model.segments",
                   "max_len": "data.seq_len", "retention": "model.retention_variant"}


# ================================================================================ model
def lm_config_from_run(config: RunConfig) -> LMConfig:
    """The LMConfig a run config describes (ConfigError naming a bad ``model.*`` key)."""
    m = config.model
    for key, where in _DERIVED_FIELDS.items():
        if key in m.overrides:
            raise ConfigError(f"set the LM's {key} through {where}, not model.{key}")
    fields = {f.name for f in dataclasses.fields(LMConfig)} - set(_DERIVED_FIELDS)
    unknown = sorted(set(m.overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)} for the byte LM; valid: {', '.join(sorted(fields))}")
    if m.preset not in DEFAULT_BACKPROP:
        raise ConfigError(f"model.preset {m.preset!r} is not a language-model preset; choose one of "
                          f"{', '.join(DEFAULT_BACKPROP)}")
    recurrent = m.preset != "transformer"
    # the paper RF and the 1/T ablation are both "factors that sum to one over the input's T";
    # the overwrite rule (RMT's) reads no factors at all
    retention = (None if m.preset != "rmaat" else
                 "none" if m.overrides.get("memory_rule") == "overwrite" else
                 "streaming" if m.retention_variant == "streaming" else "paper")
    return LMConfig(preset=m.preset, segment_len=config.segment_len if recurrent else config.data.seq_len,
                    max_len=config.data.seq_len, retention=retention, **m.overrides)


def lm_backprop(config: RunConfig) -> str:
    """The run's backprop mode: ``model.backprop`` or the preset's default."""
    mode = config.model.backprop or DEFAULT_BACKPROP.get(config.model.preset, "bptt")
    if mode == "amrb" and config.model.preset == "transformer":
        raise ConfigError("the transformer LM reads its context in one call: it has no segments to replay "
                          "with AMRB; use --backprop bptt")
    return mode


def retention_loader(config: RunConfig):
    """(T, variant) -> factors: the run's table (``model.retention_table``), or 1/T for ``uniform``."""
    variant_of_run, table = config.model.retention_variant, config.model.retention_table

    def load(total_segments: int, variant: str) -> np.ndarray:
        if variant_of_run == "uniform":
            return np.full(total_segments, 1.0 / total_segments)
        from retention import load_retention_factors

        return load_retention_factors(total_segments, path=table, variant=variant)

    return load


def build_run_lm(config: RunConfig) -> tuple[CausalLM, list[float] | None]:
    """The CausalLM of a run and the retention factors of its training T (None without RF).

    Reading the factors here makes a missing table row an error before any file is written."""
    model = CausalLM(lm_config_from_run(config), retention_loader(config))
    rf = model.retention_factors(config.model.segments if model.cfg.recurrent else 1)
    return model, None if rf is None else [float(v) for v in rf]


# =========================================================================== evaluation
@torch.no_grad()
def evaluate_lm(model: CausalLM, data: np.ndarray, *, length: int, batch_size: int, device: torch.device,
                precision: str = "fp32", info: DistInfo = DistInfo(), max_windows: int | None = None
                ) -> dict[str, Any]:
    """Bits per byte of ``model`` over consecutive ``length``-byte windows of ``data``.

    Each window starts from the model's initial memory (as in training); rank r scores windows
    r, r + W, ... and the sums are all-reduced. Returns loss (nats/byte), bpb, next-byte
    accuracy, n (bytes predicted) and windows.
    """
    was_training = model.training
    model.eval()
    starts = eval_windows(data, length, max_windows)[info.rank::info.world_size]
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, correct, bytes
    for i in range(0, len(starts), batch_size):
        windows = np.stack([data[s:s + length + 1] for s in starts[i:i + batch_size]]).astype(np.int64)
        batch = torch.from_numpy(windows).to(device)                         # (B, L + 1)
        idx, targets = batch[:, :-1], batch[:, 1:]
        with autocast_context(device, precision):
            logits, loss = model(idx, targets)
        totals[0] += loss.double() * targets.numel()
        totals[1] += (logits.argmax(-1) == targets).sum()
        totals[2] += targets.numel()
    all_reduce_sum(totals, info)
    model.train(was_training)
    n = max(1.0, totals[2].item())
    return {"loss": totals[0].item() / n, "bpb": bits(totals[0].item() / n), "accuracy": totals[1].item() / n,
            "n": int(totals[2].item()), "windows": len(eval_windows(data, length, max_windows))}


def scored_bytes(data: np.ndarray, result: dict[str, Any], length: int) -> np.ndarray:
    """The bytes an :func:`evaluate_lm` result predicted (the targets of its windows)."""
    return data[1:result["windows"] * length + 1]


def baselines(train: np.ndarray, data: np.ndarray, result: dict[str, Any], length: int) -> dict[str, float]:
    """Unigram and bigram bits per byte of the bytes an :func:`evaluate_lm` result predicted."""
    return {"unigram_bpb": unigram_bits_per_byte(train, scored_bytes(data, result, length)),
            "bigram_bpb": bigram_bits_per_byte(train, data[:result["windows"] * length + 1])}


# ============================================================================== trainer
class LMTrainer(Trainer):
    """:class:`Trainer` with the byte-LM objective (see the module docstring)."""

    SCORE_KEY = "best_val_score"  # -bpb: the Trainer keeps the checkpoint with the highest score

    def _build(self, retention_factors: Any) -> None:
        cfg = self.config
        self.spec = None
        # every split must hold one context: checked here, before the run directory is written
        fix = "lower data.seq_len (--seq-len)" + ("" if cfg.data.data_dir is None else " or give a longer file")
        self.data = {split: load_byte_split(split, cfg.data.data_dir, context=cfg.data.seq_len, fix=fix)
                     for split in self.splits}
        torch.manual_seed(cfg.train.seed)  # every rank builds the same initial parameters
        self.model, self.retention_factors = build_run_lm(cfg)
        self.backprop = lm_backprop(cfg)
        self.title = LM_TITLE if cfg.data.data_dir is None else f"bytes of {cfg.data.data_dir}"

    def _setup(self) -> None:
        super()._setup()
        self.module = self.model  # no DDP wrapper: AMRB's replay runs outside forward (module docstring)

    def _train_stream(self, micro_batch: int) -> WindowSampler:
        return WindowSampler(self.data["train"], self.config.data.seq_len, micro_batch, self.config.train.seed,
                             rank=self.info.rank)

    def _micro_step(self, batch: Any, accum: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        idx = torch.from_numpy(batch["idx"]).to(self.device)                 # (B, L)
        targets = torch.from_numpy(batch["targets"]).to(self.device)         # (B, L)
        with autocast_context(self.device, self.config.train.precision):
            loss = lm_forward_backward(self.model, idx, targets, backprop=self.backprop)
        # the 1/accum (and 1/world) scaling happens once, in _sync_gradients
        return loss * targets.numel(), torch.zeros((), device=self.device), targets.numel(), idx.numel()

    def _sync_gradients(self) -> None:
        scale = 1.0 / (self.config.train.grad_accum * self.info.world_size)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.info.enabled:
            flat = torch.cat([g.flatten() for g in grads])
            all_reduce_sum(flat, self.info)
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))
        for g in grads:
            g.mul_(scale)

    def _train_record(self, loss_sum: float, correct: float, count: float) -> dict[str, float]:
        loss = loss_sum / max(1, count)
        return {"loss": loss, "bpb": bits(loss)}

    def _evaluate(self, split: str, full: bool, by: str | None = None) -> dict[str, Any]:
        t = self.config.train
        batches = t.final_eval_batches if full else t.eval_batches
        return evaluate_lm(self.model, self.data[split], length=self.config.data.seq_len,
                           batch_size=self.micro_batch, device=self.device, precision=t.precision, info=self.info,
                           max_windows=None if batches is None else batches * self.micro_batch * self.info.world_size)

    def _score(self, result: dict[str, Any]) -> float:
        return -result["bpb"]

    def _val_record(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"loss": result["loss"], "bpb": result["bpb"], "accuracy": result["accuracy"], "n": result["n"]}

    def _start_notes(self) -> None:
        pass

    def _finish(self) -> dict[str, Any]:
        final_val, digests = self._final_validation()
        title = f"{self.title}: {self.config.model.preset} ({self.backprop})"
        if not self.config.train.evaluate_test:  # a tuning run: validation only
            base = baselines(self.data["train"], self.data["val"], final_val, self.config.data.seq_len)
            summary = lm_run_summary(self, None, final_val, base)
            self._publish(summary, digests, format_lm_summary(summary), baseline=base["unigram_bpb"],
                          metric="bpb", title=title)
            return summary
        test = self._evaluate("test", full=True)
        base = baselines(self.data["train"], self.data["test"], test, self.config.data.seq_len)
        self.logger.log({"step": self.step, "split": "test", **self._val_record(test), **base,
                         "checkpoint_step": self.best_step, "elapsed_s": self.elapsed()})
        summary = lm_run_summary(self, test, final_val, base)
        self._publish(summary, digests, format_lm_summary(summary), baseline=base["unigram_bpb"], metric="bpb",
                      title=f"{self.title}: {self.config.model.preset} ({self.backprop})")
        return summary


def lm_run_summary(trainer: LMTrainer, test: dict[str, Any] | None, final_val: dict[str, Any],
                   base: dict[str, float]) -> dict[str, Any]:
    """summary.json of a finished LM run (``test`` None: the test split was not scored, and the
    baselines ``base`` are those of the validation bytes)."""
    cfg, model = trainer.config, trainer.model
    return {
        "task": cfg.task, "task_title": trainer.title, "is_lra": False, "objective": "lm",
        "preset": cfg.model.preset, "backprop": trainer.backprop, "steps": trainer.step,
        "best_step": trainer.best_step, "val_bpb": -trainer.best_val, "final_val_bpb": final_val["bpb"],
        **({} if test is None else {"test_bpb": test["bpb"], "test_loss": test["loss"],
                                     "test_accuracy": test["accuracy"], "n_test": test["n"]}),
        **base, "n_val": final_val["n"],
        "wall_time_s": trainer.elapsed(), "train_tokens_per_s": trainer.tokens_seen / max(trainer.train_time, 1e-9),
        "train_time_s": trainer.train_time, "parameters": model.num_parameters(),
        "device": str(trainer.device), "world_size": trainer.info.world_size, "seq_len": cfg.data.seq_len,
        "segments": cfg.model.segments if model.cfg.recurrent else 1, "segment_len": model.cfg.segment_len,
        "retention_variant": model.cfg.retention_variant, "retention_factors": trainer.retention_factors,
        "config_hash": config_hash(cfg), **peak_memory(trainer.device),
    }


def format_lm_summary(summary: dict[str, Any]) -> str:
    """The lines ``pipeline train`` prints at the end of an LM run."""
    if "test_bpb" not in summary:  # train.evaluate_test: false
        return (f"{summary['task_title']}, {summary['preset']} ({summary['backprop']}), "
                f"{summary['steps']} steps in {summary['wall_time_s']:.1f} s (test split not scored)\n"
                f"  best val bits/byte {summary['val_bpb']:.4f}; final val bits/byte {summary['final_val_bpb']:.4f} "
                f"vs unigram byte baseline {summary['unigram_bpb']:.4f} (byte bigram {summary['bigram_bpb']:.4f})")
    return (f"{summary['task_title']}, {summary['preset']} ({summary['backprop']}), "
            f"{summary['steps']} steps in {summary['wall_time_s']:.1f} s, {summary['parameters']:,} parameters\n"
            f"  test bits/byte {summary['test_bpb']:.4f} vs unigram byte baseline {summary['unigram_bpb']:.4f} "
            f"(byte bigram {summary['bigram_bpb']:.4f}; n={summary['n_test']:,} bytes, {summary['seq_len']}-byte "
            f"contexts, checkpoint of step {summary['best_step']})\n"
            f"  best val bits/byte {summary['val_bpb']:.4f}; next-byte accuracy {summary['test_accuracy']:.4f}; "
            f"{summary['train_tokens_per_s']:.4g} bytes/s; peak memory "
            f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB ({summary['peak_memory_kind']})")


# ======================================================================== checkpoints
def load_lm_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                       ) -> tuple[CausalLM, RunConfig, dict[str, Any]]:
    """(model in eval mode on ``device``, run config, checkpoint state) of an LM checkpoint."""
    state = load_checkpoint(path)
    config = stored_config(state, path)
    from rmaat.data.kjv_lm import is_lm_task

    if not is_lm_task(config.task):
        raise CheckpointError(f"checkpoint {path} is a {config.task} classifier, not a language model; "
                              "train one with `pipeline train --task kjv_lm`")
    model = CausalLM(lm_config_from_run(config), retention_loader(config))
    load_model_weights(model, state["model"], f"checkpoint {path}")
    return model.to(device).eval(), config, state


def _data_dir(config: RunConfig, data_dir: str | None, path: str | Path) -> str | None:
    """``--data-dir`` if given, else the run's recorded one (DataError if it has moved); None = the KJV."""
    if data_dir is not None:
        return data_dir
    if config.data.data_dir is not None and not Path(config.data.data_dir).exists():
        raise DataError(f"the data directory {config.data.data_dir} recorded by the run in {path} does not "
                        "exist; pass --data-dir with the data's current location")
    return config.data.data_dir


def evaluate_lm_checkpoint(path: str | Path, *, split: str = "test", data_dir: str | None = None,
                           device: str = "auto", batch_size: int | None = None) -> dict[str, Any]:
    """Bits per byte of an LM checkpoint on a split at its training context, with the unigram baseline."""
    with distributed_session(device) as (info, torch_device):
        model, config, state = load_lm_checkpoint(path, torch_device)
        config.data.data_dir = _data_dir(config, data_dir, path)
        data = load_byte_split(split, config.data.data_dir, context=config.data.seq_len,
                               fix=f"the checkpoint reads {config.data.seq_len}-byte contexts: give --data-dir "
                                   "with a longer file")
        bs = batch_size or config.train.batch_size // config.train.grad_accum
        result = evaluate_lm(model, data, length=config.data.seq_len, batch_size=bs, device=torch_device,
                             precision=config.train.precision, info=info)
        train = load_byte_split("train", config.data.data_dir)
    result.update({"split": split, "task": config.task, "preset": config.model.preset, "step": int(state["step"]),
                   "checkpoint": str(path), "seq_len": config.data.seq_len,
                   **baselines(train, data, result, config.data.seq_len)})
    return result


def stream_evaluate_checkpoint(path: str | Path, *, split: str = "test", data_dir: str | None = None,
                               device: str = "auto", stream_bytes: int = 65536,
                               max_streams: int | None = None) -> dict[str, Any]:
    """Bits per byte by position over long streams with memory carried (rmaat.lm.stream)."""
    from rmaat.lm.stream import evaluate_stream

    with distributed_session(device) as (_, torch_device):
        model, config, state = load_lm_checkpoint(path, torch_device)
        data = load_byte_split(split, _data_dir(config, data_dir, path), context=stream_bytes,
                               fix="lower --stream-bytes")
        result = evaluate_stream(model, data, stream_bytes=stream_bytes, train_segments=config.model.segments,
                                 loader=retention_loader(config), max_streams=max_streams, device=torch_device)
    result.update({"split": split, "task": config.task, "preset": config.model.preset, "step": int(state["step"]),
                   "checkpoint": str(path)})
    return result
