"""What a finished run reports: ``summary.json``'s record and the lines ``pipeline train`` prints."""

from __future__ import annotations

import hashlib
import resource
from typing import Any, Protocol

import torch

from rmaat.data.tasks import TaskSpec
from rmaat.train.batching import task_identity
from rmaat.train.config import RunConfig, config_hash
from rmaat.train.distributed import DistInfo


class FinishedRun(Protocol):
    """What :func:`run_summary` reads of a run at its end (a :class:`rmaat.train.trainer.Trainer`).

    A protocol rather than the Trainer class, so that this module needs nothing of the loop that
    imports it."""

    config: RunConfig
    model: torch.nn.Module
    spec: TaskSpec
    data: dict[str, Any]
    step: int
    best_step: int
    best_val: float
    tokens_seen: int
    train_time: float
    device: torch.device
    info: DistInfo

    def elapsed(self) -> float: ...


def run_summary(trainer: FinishedRun, test: dict[str, Any] | None, final_val: dict[str, Any]) -> dict[str, Any]:
    """The record of a finished run (``summary.json``, Contract 6) from its trainer and its final
    test (best checkpoint; None for a run that does not score the test split) and validation results."""
    cfg, model = trainer.config, trainer.model
    scored = {} if test is None else {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"], "majority_baseline": test["majority_baseline"],
        "n_test": test["n"]}
    return {
        "task": cfg.task, **dict(zip(("task_title", "is_lra"),
                                     task_identity(trainer.spec, trainer.data.get("test", trainer.data["val"])))),
        "preset": cfg.model.preset, "backprop": model.cfg.backprop,
        "steps": trainer.step, "best_step": trainer.best_step,
        "val_accuracy": trainer.best_val, **scored, "val_majority_baseline": final_val["majority_baseline"],
        "final_val_accuracy": final_val["accuracy"], "n_val": final_val["n"],
        "wall_time_s": trainer.elapsed(), "train_tokens_per_s": trainer.tokens_seen / max(trainer.train_time, 1e-9),
        "train_time_s": trainer.train_time,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(trainer.device), "world_size": trainer.info.world_size, "seq_len": cfg.data.seq_len,
        "segments": model.cfg.n_segments, "config_hash": config_hash(cfg),
        **peak_memory(trainer.device),
    }


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_memory_kind": "cuda_max_allocated"}
    return {"peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "peak_memory_kind": "cpu_max_rss"}


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameters' bytes: equal digests mean bit-identical replicas."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def format_summary(summary: dict[str, Any]) -> str:
    """The lines ``pipeline train`` prints at the end of a run."""
    stand_in = "" if summary.get("is_lra", True) else " [stand-in task, not an LRA result]"
    if "test_accuracy" not in summary:  # train.evaluate_test: false
        return (f"{summary['task_title']}{stand_in}, {summary['preset']} ({summary['backprop']}), "
                f"{summary['steps']} steps in {summary['wall_time_s']:.1f} s (test split not scored)\n"
                f"  best val accuracy {summary['val_accuracy']:.4f} (step {summary['best_step']}); final val accuracy "
                f"{summary['final_val_accuracy']:.4f} vs majority-class baseline {summary['val_majority_baseline']:.4f}")
    return (f"{summary['task_title']}{stand_in}, {summary['preset']} ({summary['backprop']}), "
            f"{summary['steps']} steps in {summary['wall_time_s']:.1f} s\n"
            f"  test accuracy {summary['test_accuracy']:.4f} vs majority-class baseline "
            f"{summary['majority_baseline']:.4f} (n={summary['n_test']}, checkpoint of step {summary['best_step']})\n"
            f"  best val accuracy {summary['val_accuracy']:.4f}; "
            f"{summary['train_tokens_per_s']:.4g} tokens/s; peak memory "
            f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB ({summary['peak_memory_kind']})"
            + ("\n" + format_by_depth(summary["test_accuracy_by_depth"]) if "test_accuracy_by_depth" in summary else ""))


def format_by_depth(groups: dict[str, dict[str, float]]) -> str:
    """One line: accuracy (n) per 0-based segment of the supporting fact."""
    cells = [f"segment {g}: {v['accuracy']:.3f} (n={v['n']})" for g, v in sorted(groups.items(), key=lambda kv: int(kv[0]))]
    return "  by depth of the supporting fact: " + "; ".join(cells)
