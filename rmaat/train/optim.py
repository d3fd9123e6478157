"""The optimiser and learning-rate schedule of a run (``optim.*`` of the run config).

AdamW with weight decay on matrices only (biases, LayerNorms and the 1-D memory parameters get
none), fused on CUDA; the rate rises linearly over ``optim.warmup * max_steps`` steps and then
decays to ``min_lr_ratio`` of its peak, by a cosine, linearly, or not at all (``constant``).
"""

from __future__ import annotations

import math

import torch

from rmaat.train.config import RunConfig


def lr_multiplier(step: int, max_steps: int, warmup: float, schedule: str, min_ratio: float) -> float:
    """LR factor for optimiser step ``step`` (0-based): linear warm-up over ``warmup * max_steps``
    steps (never 0 at step 0), then cosine/linear decay to ``min_ratio`` at ``max_steps``."""
    warm = int(round(warmup * max_steps))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, max_steps - warm))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * shape


def build_optimizer(model: torch.nn.Module, config: RunConfig, device: torch.device
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(AdamW, its LambdaLR schedule) for ``model`` under ``config``'s ``optim`` and ``train.max_steps``."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    o = config.optim
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
        fused=device.type == "cuda")
    t = config.train
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_multiplier(s, t.max_steps, o.warmup, o.schedule, o.min_lr_ratio))
    return optimizer, scheduler
