"""The training loop behind ``pipeline train`` and ``pipeline evaluate``.

One :class:`Trainer` serves a single CPU/GPU and ``torchrun`` (DistributedDataParallel): AdamW
with linear warm-up and cosine/linear decay, gradient clipping, gradient accumulation, bf16
autocast on CUDA, periodic validation with the best checkpoint kept, JSON-lines + TensorBoard
metrics, a tqdm bar, and checkpoints that make an interrupted run resumable *exactly*: the
parameters after "5 steps, stop, resume, 5 steps" equal those after 10 uninterrupted steps.

Exact resume rests on three things saved in ``last.pt`` at a step boundary: the optimiser and
scheduler states, every RNG state (dropout masks, AMRB's replayed segments), and the data
position (epoch + index into that epoch's seeded permutation, see
:class:`rmaat.train.distributed.ResumableSampler`). Evaluation draws no random numbers (the
model is in eval mode) and the DataLoader gets its own generator, so neither shifts the
global RNG between a checkpoint and the next step.

Run directory layout: architecture Contract 6 (:mod:`rmaat.train.rundir`). The run's data, model
and batches come from :mod:`rmaat.train.batching`; validation, test and checkpoint evaluation
from :mod:`rmaat.train.evaluation`; the final record from :mod:`rmaat.train.summary`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from retention.lock import FileLock
from rmaat.errors import CheckpointError, DataError, TrainingDivergedError
from rmaat.train.batching import BatchStream, Collate, batch_tokens, build_run_model, load_splits, model_inputs
from rmaat.train.checkpoint import (
    FORMAT, atomic_torch_save, capture_rng_state, check_resumable, init_weights, load_checkpoint, restore_rng_state,
)
from rmaat.train.config import RunConfig, config_hash
from rmaat.train.distributed import (
    ResumableSampler, all_reduce_sum, any_rank, barrier, gather_objects, init_distributed, shutdown_distributed,
)
from rmaat.train.evaluation import autocast_context, evaluate_split
from rmaat.train.metrics import MetricsLogger, atomic_write_json, atomic_write_text, plot_curves, truncate_metrics
from rmaat.train.optim import build_optimizer
from rmaat.train.rundir import check_run_dir, clear_run_dir, default_run_dir, lock_run_dir, start_mode
from rmaat.train.signals import stop_signals
from rmaat.train.summary import format_summary, parameter_digest, run_summary


def click_style_echo(message: str, err: bool = False) -> None:
    """``print`` with click.echo's ``err`` keyword (the default ``echo`` of :class:`Trainer`)."""
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


# ================================================================================ trainer
class Trainer:
    """Train one run config into one run directory (see module docstring).

    Build with everything validated (config, data, model) so that errors surface before any
    file is written; :meth:`fit` then runs to ``max_steps`` (or to a stop request) and returns
    the summary dict, or None when the session stopped early with a checkpoint.
    """

    #: the checkpoint key of the best validation score (higher is better, see :meth:`_score`)
    SCORE_KEY = "best_val_accuracy"

    def __init__(self, config: RunConfig, run_dir: str | Path, *, resume: bool = False, force: bool = False,
                 progress: bool = True, echo: Callable[..., None] = click_style_echo):
        config.validate()
        if config.data.data_dir is not None:  # absolute, so that evaluate and --resume work from anywhere
            data_dir = Path(config.data.data_dir).expanduser()
            if resume and not data_dir.exists():
                raise DataError(f"the data directory {data_dir} recorded by the run in {run_dir} does not exist; "
                                "pass --data-dir with the data's current location")
            config.data.data_dir = str(data_dir.resolve())
        self.config, self.run_dir = config, Path(run_dir)
        self.progress, self.echo = progress, echo
        self._stop_requested = False
        #: why the last :meth:`fit` ended early: "signal" (SIGINT/SIGTERM), "stop_after", or None
        self.stop_reason: str | None = None
        #: the signal that stopped it (SIGINT or SIGTERM's number), for ``pipeline train``'s exit status
        self.stop_signal: int | None = None
        #: the run directory's lock (main process), held from here to the end of :meth:`fit`
        self._run_dir_lock: FileLock | None = None
        # The process group comes first, so that every rank has validated everything before
        # rank 0 writes anything (fit() starts with a barrier).
        self.info, self.device = init_distributed(config.train.device)
        try:
            # before the run directory's state is even read: while another process trains
            # there, what it holds is changing under us, and --force would delete it
            self._run_dir_lock = lock_run_dir(self.run_dir, self.info)
            resume, force = start_mode(self.run_dir, resume=resume, force=force, echo=echo)
            self.resume, self._force = resume, force
            check_run_dir(self.run_dir, resume=resume, force=force)
            self.checkpoint: dict[str, Any] | None = None
            if resume:
                self.checkpoint = load_checkpoint(self.run_dir / "checkpoints" / "last.pt")
                check_resumable(self.checkpoint, self.run_dir / "checkpoints" / "last.pt", self.config,
                                self.info.world_size)
            rf = self.checkpoint.get("retention_factors") if self.checkpoint else None
            self._build(rf)
            if config.train.init_from is not None and not resume:
                init_weights(self.model, Path(config.train.init_from))
        except BaseException:
            self._release_run_dir()
            shutdown_distributed()
            raise

    def _release_run_dir(self) -> None:
        """Give up the run directory's lock (a no-op where none is held)."""
        if self._run_dir_lock is not None:
            self._run_dir_lock.release()

    # ------------------------------------------------- what the objective decides (hooks)
    @property
    def splits(self) -> tuple[str, ...]:
        """The splits this run reads: the test split only when it is scored (``train.evaluate_test``)."""
        return ("train", "val", "test") if self.config.train.evaluate_test else ("train", "val")

    def _build(self, retention_factors: Any) -> None:
        """Set ``spec``, ``data`` (:attr:`splits`), ``model`` and ``retention_factors``."""
        from rmaat.data import get_task

        self.spec = get_task(self.config.task)
        self.data = load_splits(self.config, self.spec, self.splits)
        torch.manual_seed(self.config.train.seed)  # every rank builds the same initial parameters
        self.model, self.retention_factors = build_run_model(self.config, self.spec, retention_factors)

    def _train_stream(self, micro_batch: int) -> Any:
        """The training batches: an object with ``next()``, ``position()`` and ``restore(position)``."""
        cfg = self.config
        self.collate = Collate(cfg.data.seq_len, self.spec.pad_id)
        sampler = ResumableSampler(len(self.data["train"]), seed=cfg.train.seed, rank=self.info.rank,
                                   world_size=self.info.world_size)
        return BatchStream(self.data["train"], sampler, micro_batch, self.collate, cfg.data.num_workers,
                           cfg.train.seed)

    def _micro_step(self, batch: Any, accum: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Forward + backward of one micro-batch (gradients scaled by 1/accum) ->
        (loss sum, number correct, examples, tokens) for the training log."""
        labels = batch["label"].to(self.device)
        with autocast_context(self.device, self.config.train.precision):
            logits = self.module(**model_inputs(batch, self.device), backprop=self.model.cfg.backprop)
        loss = F.cross_entropy(logits.float(), labels)
        (loss / accum).backward()
        correct = (logits.detach().argmax(-1) == labels).sum()
        return loss.detach() * labels.numel(), correct, labels.numel(), batch_tokens(batch)

    def _train_record(self, loss_sum: float, correct: float, count: float) -> dict[str, float]:
        """The objective's part of a training log record from the window's sums."""
        return {"loss": loss_sum / max(1, count), "accuracy": correct / max(1, count)}

    def _score(self, result: dict[str, Any]) -> float:
        """The validation score the best checkpoint maximises."""
        return result["accuracy"]

    def _val_record(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"loss": result["loss"], "accuracy": result["accuracy"], "n": result["n"]}

    def _start_notes(self) -> None:
        """Warnings printed once before training (main process)."""
        if self.config.data.seq_len < self.spec.seq_len and not self.spec.fixed_length:
            self.echo(f"note: data.seq_len={self.config.data.seq_len} is below the task's length "
                      f"{self.spec.seq_len}: longer inputs are cut", err=True)

    # ------------------------------------------------------------------------- set-up
    def _setup(self) -> None:
        cfg, info, device = self.config, self.info, self.device
        torch.manual_seed(cfg.train.seed)  # same on every rank (dropout masks alike, see checkpoint.py)
        np.random.seed(cfg.train.seed)
        self.model.to(device)
        if cfg.train.compile:  # in place: parameter names, checkpoints and DDP see the same model
            from rmaat.compile import compile_model

            compile_model(self.model)
        self.module = self.model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, device)
        t = cfg.train
        self.micro_batch = t.batch_size // t.grad_accum
        self.stream = self._train_stream(self.micro_batch)
        self.step, self.best_val, self.best_step = 0, -math.inf, 0
        self.elapsed_prev, self.tokens_seen, self.train_time = 0.0, 0, 0.0
        self.window = {"loss": 0.0, "correct": 0.0, "count": 0.0, "tokens": 0.0, "steps": 0.0, "grad_norm": 0.0}
        if self.checkpoint is not None:
            self._load_state(self.checkpoint)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def _state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "step": self.step,
            "config": self.config.to_dict(),
            "config_hash": config_hash(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "data_position": self.stream.position(),
            self.SCORE_KEY: self.best_val,
            "best_step": self.best_step,
            "elapsed_s": self.elapsed_prev + (time.perf_counter() - self.session_start),
            "tokens_seen": self.tokens_seen,
            "train_time_s": self.train_time,
            "log_window": dict(self.window),
            "retention_factors": self.retention_factors,
            "world_size": self.info.world_size,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # the checkpoint's device chose it: choose again
                group["fused"] = self.device.type == "cuda"
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"checkpoint state does not fit this model ({str(error).splitlines()[0]})") from None
        self.step = int(state["step"])
        self.best_val, self.best_step = float(state[self.SCORE_KEY]), int(state["best_step"])
        self.elapsed_prev, self.tokens_seen = float(state["elapsed_s"]), int(state["tokens_seen"])
        self.train_time = float(state["train_time_s"])
        self.window = {k: float(v) for k, v in state["log_window"].items()}
        self.stream.restore(state["data_position"])
        restore_rng_state(state["rng"])

    def _save(self, name: str, state: dict[str, Any]) -> None:
        if self.info.is_main:
            atomic_torch_save(state, self.run_dir / "checkpoints" / name)

    def _save_best(self) -> None:
        if self.info.is_main:
            state = {k: v for k, v in self._state().items()
                     if k not in ("optimizer", "scheduler", "rng", "log_window")}
            atomic_torch_save(state, self.run_dir / "checkpoints" / "best.pt")

    # ------------------------------------------------------------------------- loop
    def _train_step(self) -> None:
        cfg = self.config
        accum = cfg.train.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        count = tokens = 0
        for micro in range(accum):
            batch = self.stream.next()
            sync = (contextlib.nullcontext() if not self.info.enabled or micro == accum - 1
                    or not hasattr(self.module, "no_sync") else self.module.no_sync())
            with sync:
                step_loss, step_correct, step_count, step_tokens = self._micro_step(batch, accum)
            loss_sum += step_loss
            correct += step_correct
            count += step_count
            tokens += step_tokens
        self._sync_gradients()
        # with grad_clip 0 an infinite bound only measures the norm, for the log
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf)
        self._check_finite(loss_sum / max(1, count), grad_norm)
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used, for the log
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += tokens * self.info.world_size
        w = self.window
        w["loss"] += loss_sum.item()
        w["correct"] += correct.item()
        w["count"] += count
        w["tokens"] += tokens
        w["steps"] += 1
        w["grad_norm"] += float(grad_norm)

    def _sync_gradients(self) -> None:
        """Average gradients over processes where DDP does not (its wrapper does it in backward)."""

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Stop before a non-finite loss or gradient reaches the weights (no optimiser step, no
        checkpoint written): TrainingDivergedError naming the step and the last good checkpoint."""
        bad = not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm)))
        if not any_rank(bad, self.info, self.device):
            return
        last = self.run_dir / "checkpoints" / "last.pt"
        saved = (f"the last good checkpoint is {last} (step {int(load_checkpoint(last)['step'])})" if last.is_file()
                 else "no checkpoint was written yet")
        raise TrainingDivergedError(
            f"training diverged at step {self.step + 1}: loss {float(loss):.4g}, gradient norm {float(grad_norm):.4g}; "
            f"{saved}; lower the learning rate (--lr) or clip gradients (--set optim.grad_clip=1.0)")

    def _log_train(self, bar, window_time: float) -> None:
        w = self.window
        sums = all_reduce_sum(torch.tensor([w["loss"], w["correct"], w["count"], w["tokens"]],
                                           dtype=torch.float64, device=self.device), self.info).tolist()
        record = {"step": self.step, "split": "train", **self._train_record(*sums[:3]), "lr": self.step_lr,
                  "tokens_per_s": sums[3] / max(window_time, 1e-9), "elapsed_s": self.elapsed(),
                  "grad_norm": w["grad_norm"] / max(1.0, w["steps"])}
        self.logger.log(record)
        if bar is not None:
            shown = {k: f"{record[k]:.3f}" for k in ("loss", "accuracy", "bpb") if k in record}
            bar.set_postfix(**shown, tok_s=f"{record['tokens_per_s']:.3g}")
        self.window = {k: 0.0 for k in w}

    def elapsed(self) -> float:
        return self.elapsed_prev + (time.perf_counter() - self.session_start)

    def _evaluate(self, split: str, full: bool, by: str | None = None) -> dict[str, Any]:
        t = self.config.train
        return evaluate_split(self.model, self.data[split], batch_size=self.micro_batch, collate=self.collate,
                              device=self.device, precision=t.precision, n_classes=self.spec.n_classes,
                              info=self.info, max_batches=t.final_eval_batches if full else t.eval_batches, by=by)

    def _validate(self, full: bool) -> dict[str, Any]:
        result = self._evaluate("val", full)
        self.logger.log({"step": self.step, "split": "val", **self._val_record(result), "elapsed_s": self.elapsed()})
        if self._score(result) > self.best_val:
            self.best_val, self.best_step = self._score(result), self.step
            self._save_best()
        return result

    def request_stop(self, signum: int | None = None, *_: Any) -> None:
        """Finish the current step, save ``last.pt`` and end the session (SIGINT/SIGTERM).

        The first signal's number is kept in ``stop_signal`` (SIGINT when called without one),
        so that ``pipeline train`` exits with that signal's status (128 + number).
        A second signal aborts without saving, except under torchrun: there the terminal's
        SIGINT reaches each worker and torchrun forwards another, which must not abort.
        """
        if self._stop_requested and not self.info.enabled:
            raise KeyboardInterrupt
        if not self._stop_requested:
            self.stop_signal = int(signum) if signum is not None else int(signal.SIGINT)
        self._stop_requested = True
        if self.info.is_main:
            print("\nstop requested: finishing the current step and saving a checkpoint "
                  "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def fit(self) -> dict[str, Any] | None:
        """Train to ``max_steps``; return the summary, or None if stopped early (checkpoint saved)."""
        completed = False
        try:
            result = self._fit()
            completed = True
            return result
        finally:
            try:
                if hasattr(self, "logger"):
                    self.logger.close()
                # the DDP wrapper holds a reference to the process group: drop it, so that
                # shutdown_distributed frees the group and joins its threads (see there)
                if hasattr(self, "module"):
                    self.module = self.model
                shutdown_distributed(synchronize=completed)
            finally:
                self._release_run_dir()  # last: the run's files are complete and closed

    def _fit(self) -> dict[str, Any] | None:
        cfg, info = self.config, self.info
        barrier(info)  # every rank has validated config, data and model
        if info.is_main:
            self._start_notes()
            if self._force and not self.resume:
                clear_run_dir(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            if not self.resume:
                atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
        barrier(info)
        self.session_start = time.perf_counter()
        self._setup()
        if self.resume and self.step >= cfg.train.max_steps and info.is_main:
            # a finished run resumed: its final evaluation is redone, so drop the old one
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step,
                             keep=lambda r: not (r["step"] == self.step and r["split"] in ("val", "test")))
        self.logger = MetricsLogger(self.run_dir, enabled=info.is_main,
                                    resume_step=self.step if self.resume else None)
        t = cfg.train
        start_step = self.step
        bar = None
        if info.is_main and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.max_steps, initial=self.step, desc=f"{cfg.task} {cfg.model.preset}",
                       unit="step", dynamic_ncols=True)
        stopped = False
        window_time = 0.0
        try:
            with stop_signals(self.request_stop):
                self.model.train()
                while self.step < t.max_steps:
                    tick = time.perf_counter()
                    self._train_step()
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    dt = time.perf_counter() - tick
                    self.train_time += dt
                    window_time += dt
                    if bar is not None:
                        bar.update(1)
                    if self.step % t.log_every == 0:
                        self._log_train(bar, window_time)
                        window_time = 0.0
                    if self.step % t.eval_every == 0 and self.step < t.max_steps:
                        self._validate(full=False)
                        self.model.train()
                    session_done = t.stop_after is not None and self.step - start_step >= t.stop_after
                    if any_rank(self._stop_requested or session_done, info, self.device) and self.step < t.max_steps:
                        stopped = True
                        self.stop_reason = "signal" if self._stop_requested else "stop_after"
                        break
                    if self.step % t.save_every == 0 and self.step < t.max_steps:
                        self._save("last.pt", self._state())
        finally:
            if bar is not None:
                bar.close()
        if stopped:
            self._save("last.pt", self._state())
            self.logger.flush()
            if info.is_main:
                self.echo(f"stopped at step {self.step}/{t.max_steps}; checkpoint saved to "
                          f"{self.run_dir / 'checkpoints' / 'last.pt'}; continue with --resume")
            return None
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        cfg = self.config
        final_val, digests = self._final_validation()
        title = f"{self.spec.title}: {cfg.model.preset} ({self.model.cfg.backprop})"
        if not cfg.train.evaluate_test:  # a tuning run: validation only
            summary = run_summary(self, None, final_val)
            self._publish(summary, digests, format_summary(summary), baseline=final_val["majority_baseline"],
                          title=title)
            return summary
        depth = "depth_segment" if "depth_segment" in getattr(self.data["test"], "metadata", {}) else None
        test = self._evaluate("test", full=True, by=depth)
        self.logger.log({"step": self.step, "split": "test", "loss": test["loss"], "accuracy": test["accuracy"],
                         "n": test["n"], "checkpoint_step": self.best_step, "elapsed_s": self.elapsed()})
        summary = run_summary(self, test, final_val)
        if depth is not None:  # memory tasks: accuracy by the segment that holds the supporting fact
            summary["test_accuracy_by_depth"] = test["by_depth_segment"]
        self._publish(summary, digests, format_summary(summary), baseline=test["majority_baseline"], title=title)
        return summary

    def _final_validation(self) -> tuple[dict[str, Any], list[str]]:
        """Save the trained state, validate on the whole split, and load the best checkpoint's
        weights for the test pass -> (final validation result, every replica's parameter digest)."""
        self._save("last.pt", self._state())  # trained state first: the final evaluation can be long
        final_val = self._validate(full=True)
        self._save("last.pt", self._state())
        digests = gather_objects(parameter_digest(self.model), self.info)
        barrier(self.info)
        if self.best_step != self.step:
            best = load_checkpoint(self.run_dir / "checkpoints" / "best.pt", map_location=self.device)
            self.model.load_state_dict(best["model"])
        return final_val, digests

    def _publish(self, summary: dict[str, Any], digests: list[str], report: str, *, baseline: float,
                 title: str, metric: str = "accuracy") -> None:
        """Write summary.json and curves.png and print ``report`` (main process)."""
        if self.info.enabled:
            summary["replica_param_sha256"] = digests
            summary["replicas_identical"] = len(set(digests)) == 1
        if self.info.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
            self.logger.flush()
            plot_curves(self.logger.path, self.run_dir / "curves.png", baseline=baseline, title=title, metric=metric)
            self.echo(report)


def train(config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False, force: bool = False,
          progress: bool = True, echo: Callable[..., None] | None = None) -> dict[str, Any] | None:
    """Train ``config`` into ``run_dir`` (default ``runs/<task>-<preset>-<time>``); see :class:`Trainer`."""
    trainer = Trainer(config, run_dir or default_run_dir(config), resume=resume, force=force,
                      progress=progress, echo=echo or click_style_echo)
    return trainer.fit()

