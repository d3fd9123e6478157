"""What the memory of a recurrent classifier holds: linear probes, norms and sensitivity per boundary.

Boundary b (1..T) is the state after the model has read b segments (0-based segments 0..b-1):

- *carried*: the memory entering segment b (the model's mem_{b+1}, after the memory rule);
- *write*: the encoder's output at the memory positions of segment b-1 (mem'_{b+1}, before it).

For each boundary a multinomial logistic regression (:func:`fit_probe`) is trained on the train
split's states to decode the label and scored on another split, overall and by the segment of the
supporting fact (``metadata["depth_segment"]`` of the memory tasks): a fact in segment s can only
be in the memory at boundaries b > s. Next to it: the memory's norm relative to the token
embeddings it is concatenated with, and how much segment b's outputs change when its incoming
memory is swapped for another example's (near 0: the segment ignores its memory).
Behind ``pipeline probe memory``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from rmaat.errors import ConfigError

NOTE = ("In one-fact stories (qa1 with one fact) the answer is a property of the memory alone. With "
        "distractors (qa2, or more than one fact) the probe decodes the answer without the question, "
        "so it measures something weaker: whether the memory holds the fact the question will ask about, "
        "not whether it holds every fact.")


def story_note(task: str, source: str) -> str:
    """:data:`NOTE`, led by which case this memory-task set is (its ``generation.json``)."""
    if not task.startswith("babi_"):
        return NOTE
    from rmaat.data.babi import read_generation

    params = read_generation(Path(source).parent)["params"]
    one_fact = params.get("task") == "qa1" and params.get("n_facts") == 1
    case = ("This set has one fact per story." if one_fact else
            f"This set has distractors ({params.get('task')}, {params.get('n_facts')} facts per story).")
    return f"{case} {NOTE}"


# ----------------------------------------------------------------------------- the probe
@dataclass
class LinearProbe:
    """Standardisation (train mean/std) followed by a linear map to class logits."""

    mean: torch.Tensor  # (F,)
    std: torch.Tensor  # (F,)
    weight: torch.Tensor  # (F, C)
    bias: torch.Tensor  # (C,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, F) -> logits (N, C)."""
        return ((x.double() - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, F) -> predicted labels (N,)."""
        return self.logits(x).argmax(-1)


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-3,
              max_iter: int = 100, seed: int = 0) -> LinearProbe:
    """Multinomial logistic regression of labels y (N,) on features x (N, F), full-batch L-BFGS.

    Features are standardised with their mean and std over x (constant ones map to 0); the loss
    is the mean cross-entropy plus ``l2`` * ||W||^2. float64 and a fixed seed: the same inputs
    give the same probe."""
    x = x.double().flatten(1)  # (N, F)
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-8 * (1.0 + mean.abs()), std, torch.ones_like(std))
    z = (x - mean) / std  # (N, F)
    generator = torch.Generator().manual_seed(seed)
    weight = (1e-3 * torch.randn(z.shape[1], n_classes, generator=generator, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    y = y.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of predicted (N,) equal to labels (N,); 0.0 for no examples."""
    return float((predicted == labels).double().mean()) if len(labels) else 0.0


# ----------------------------------------------------------------------------- segment loop
@torch.no_grad()
def run_segments(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 generator: torch.Generator | None = None) -> dict[str, Any]:
    """The model's segment recurrence on one batch, keeping what the probe needs.

    Returns ``carried`` and ``writes`` (T tensors (B, M, D) each: boundary b = 1..T), ``read``
    (B, D) (the classifier's features: ``model.classify(read)`` are the model's logits),
    ``mem_norm``/``write_norm`` (T,) mean ||memory token||, ``emb_norm`` (T,) mean ||token
    embedding|| of each segment's real tokens, ``init_norm`` (mean ||mem_1||) and, with
    ``generator``, ``sensitivity`` (T - 1, 2): for segment b = 1..T-1 the mean relative change
    of its (write, read-out) when its incoming memory is another example's (a seeded derangement
    of the batch; NaN for a batch of one).
    """
    ids, mask = model.prepare_inputs(input_ids, attention_mask)  # (B, L), (B, L) or None
    b = ids.shape[0]
    mem, read = model.initial_state(b)  # (B, M, D), (B, D)
    out: dict[str, Any] = {"carried": [], "writes": [], "emb_norm": [], "sensitivity": [],
                           "init_norm": float(mem.norm(dim=-1).mean())}
    perm = None
    if generator is not None and b > 1:
        cycle = torch.randperm(b, generator=generator)
        perm = torch.empty_like(cycle)
        perm[cycle] = cycle.roll(-1)  # one cycle through the batch: no example keeps its own memory
        perm = perm.to(ids.device)
    for t, (ids_t, mask_t) in enumerate(model.split_segments(ids, mask)):
        real = torch.ones_like(ids_t, dtype=torch.bool) if mask_t is None else mask_t  # (B, n)
        emb = model.embed(ids_t).norm(dim=-1)  # (B, n)
        out["emb_norm"].append(float(emb[real].mean()) if real.any() else float("nan"))
        write, pooled = model.segment_outputs(ids_t, mask_t, mem)  # (B, M, D), (B, D)
        if t > 0 and generator is not None:
            out["sensitivity"].append(_swap_change(model, ids_t, mask_t, mem, perm, write, pooled, real))
        mem, read = model.segment_step(t, ids_t, mask_t, mem, read)  # the carried state, as forward()
        out["carried"].append(mem.detach())
        out["writes"].append(write.detach())
    out["read"] = read
    out["mem_norm"] = [float(m.norm(dim=-1).mean()) for m in out["carried"]]
    out["write_norm"] = [float(w.norm(dim=-1).mean()) for w in out["writes"]]
    return out


def _swap_change(model: torch.nn.Module, ids_t: torch.Tensor, mask_t: torch.Tensor | None, mem: torch.Tensor,
                 perm: torch.Tensor | None, write: torch.Tensor, pooled: torch.Tensor,
                 real: torch.Tensor) -> tuple[float, float]:
    """Mean ||out_swapped - out|| / ||out|| over the batch's non-empty examples, for (write, read-out)."""
    keep = real.any(dim=1)  # (B,)
    if perm is None or not keep.any():
        return float("nan"), float("nan")
    write_s, pooled_s = model.segment_outputs(ids_t, mask_t, mem[perm])  # (B, M, D), (B, D)

    def change(a: torch.Tensor, a_s: torch.Tensor) -> float:
        rel = (a_s - a).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
        return float(rel[keep].mean())

    return change(write, write_s), change(pooled, pooled_s)


@dataclass
class States:
    """Memory states of a set of examples: per boundary (N, M*D) features, labels (N,)."""

    carried: list[torch.Tensor] = field(default_factory=list)
    writes: list[torch.Tensor] = field(default_factory=list)
    labels: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (N, C) from the loop's read-out
    stats: dict[str, list[float]] = field(default_factory=dict)  # batch-weighted means


@torch.no_grad()
def collect_states(model: torch.nn.Module, dataset: Dataset, *, batch_size: int, collate: Any,
                   device: torch.device, seed: int | None = None) -> States:
    """:func:`run_segments` over ``dataset`` in order; ``seed`` (None: no sensitivity) seeds the swaps."""
    from rmaat.train.batching import model_inputs

    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    parts: dict[str, list] = {"carried": [], "writes": [], "labels": [], "logits": []}
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    check = float("nan")
    for batch in loader:
        inputs = model_inputs(batch, device)
        r = run_segments(model, inputs["input_ids"], inputs.get("attention_mask"), generator)
        logits = model.classify(r["read"])  # (B, C)
        if check != check:  # first batch: the loop must give the model's own logits
            check = float((model(**inputs) - logits).abs().max())
        parts["carried"].append(torch.stack(r["carried"], 1).flatten(2).float().cpu())  # (B, T, M*D)
        parts["writes"].append(torch.stack(r["writes"], 1).flatten(2).float().cpu())
        parts["labels"].append(batch["label"])
        parts["logits"].append(logits.float().cpu())
        n = len(batch["label"])
        for key in ("mem_norm", "write_norm", "emb_norm", "init_norm", "sensitivity"):
            value = np.atleast_1d(np.asarray(r[key], dtype=np.float64))
            w = np.where(np.isnan(value), 0.0, float(n))
            sums[key] = sums.get(key, 0.0) + np.nan_to_num(value) * w
            weights[key] = weights.get(key, 0.0) + w
    carried, writes = torch.cat(parts["carried"]), torch.cat(parts["writes"])  # (N, T, M*D)
    stats = {key: (sums[key] / np.where(weights[key] > 0, weights[key], np.nan)).tolist() for key in sums}
    stats["logit_check"] = [check]
    return States(carried=list(carried.unbind(1)), writes=list(writes.unbind(1)),
                  labels=torch.cat(parts["labels"]), logits=torch.cat(parts["logits"]), stats=stats)


# ----------------------------------------------------------------------------- the report
def load_probe_model(checkpoint: str | Path, *, split: str, data_dir: str | None
                     ) -> tuple[Any, Any, torch.nn.Module, int, dict[str, Dataset]]:
    """(run config, task spec, model with the checkpoint's weights, its step, {train, split} datasets).

    One-line errors: a missing/corrupt checkpoint (CheckpointError), a byte LM, a non-recurrent
    or dual-encoder model (ConfigError), missing data (DataError)."""
    from rmaat.data import get_task
    from rmaat.data.kjv_lm import is_lm_task
    from rmaat.data.tasks import check_split
    from rmaat.train.batching import build_run_model, load_splits
    from rmaat.train.checkpoint import load_checkpoint, load_model_weights, stored_config

    check_split(split)
    state = load_checkpoint(checkpoint)
    needs = "the memory probe needs a recurrent single-document classifier (rmaat, rmt, rlt)"
    if is_lm_task(str(state["config"].get("task", ""))):
        raise ConfigError(f"{needs}; {checkpoint} is a byte language model")
    config = stored_config(state, checkpoint)
    if data_dir is not None:
        config.data.data_dir = data_dir
    spec = get_task(config.task)
    model, _ = build_run_model(config, spec, state.get("retention_factors"))
    if not model.cfg.recurrent or model.cfg.dual_encoder:
        kind = "dual-encoder" if model.cfg.dual_encoder else "non-recurrent"
        raise ConfigError(f"{needs}; {checkpoint} is a {kind} {config.model.preset} model of {config.task}")
    load_model_weights(model, dict(state["model"]), f"checkpoint {checkpoint}")
    datasets = load_splits(config, spec, tuple(dict.fromkeys(("train", split))))
    return config, spec, model, int(state["step"]), datasets


def _boundary_report(train: list[torch.Tensor], scored: list[torch.Tensor], y_train: torch.Tensor,
                     y_scored: torch.Tensor, depths: np.ndarray | None, n_classes: int, l2: float,
                     seed: int) -> list[dict[str, Any]]:
    """Probe accuracy per boundary (and by depth) for one kind of state."""
    rows = []
    for b, (x_train, x_scored) in enumerate(zip(train, scored), start=1):
        probe = fit_probe(x_train, y_train, n_classes, l2=l2, seed=seed)
        predicted = probe.predict(x_scored)
        row: dict[str, Any] = {"accuracy": accuracy(predicted, y_scored),
                               "train_accuracy": accuracy(probe.predict(x_train), y_train)}
        if depths is not None:
            row["by_depth_segment"] = {
                str(s): {"accuracy": accuracy(predicted[depths == s], y_scored[depths == s]),
                         "n": int((depths == s).sum()), "fact_read": bool(b > s)}
                for s in sorted(set(depths.tolist()))}
        rows.append(row)
    return rows


def run_memory_probe(checkpoint: str | Path, *, data_dir: str | None = None, split: str = "test",
                     device: str = "cpu", batch_size: int | None = None, max_examples: int = 2000,
                     l2: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """The probe report of a classifier checkpoint (see the module docstring); JSON-ready."""
    from rmaat.train.batching import Collate, task_identity
    from rmaat.train.distributed import distributed_session

    if max_examples < 2:
        raise ConfigError(f"--max-examples must be >= 2, got {max_examples}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    config, spec, model, step, datasets = load_probe_model(checkpoint, split=split, data_dir=data_dir)
    subsets = {name: Subset(d, range(min(len(d), max_examples))) for name, d in datasets.items()}
    collate = Collate(config.data.seq_len, spec.pad_id)
    bs = batch_size or max(1, config.train.batch_size // config.train.grad_accum)
    with distributed_session(device) as (_, torch_device):
        model.to(torch_device).eval()
        train = collect_states(model, subsets["train"], batch_size=bs, collate=collate, device=torch_device)
        scored = collect_states(model, subsets[split], batch_size=bs, collate=collate, device=torch_device,
                                seed=seed)
    y_train, y = train.labels, scored.labels
    metadata = getattr(datasets[split], "metadata", {})
    depths = (np.asarray(metadata["depth_segment"])[: len(y)] if "depth_segment" in metadata else None)
    kinds = {kind: _boundary_report(getattr(train, kind), getattr(scored, kind), y_train, y, depths,
                                    spec.n_classes, l2, seed) for kind in ("carried", "writes")}
    n_seg = model.cfg.n_segments
    emb = scored.stats["emb_norm"]  # (T,): the segment a boundary's memory enters (the last for b = T)
    sens = scored.stats.get("sensitivity", [])
    boundaries = []
    for b in range(1, n_seg + 1):
        e = emb[min(b, n_seg - 1)]
        boundaries.append({
            "boundary": b, "after_segment": b - 1, "carried": kinds["carried"][b - 1], "write": kinds["writes"][b - 1],
            "carried_norm_ratio": scored.stats["mem_norm"][b - 1] / e,
            "write_norm_ratio": scored.stats["write_norm"][b - 1] / e,
            "sensitivity": (None if b == n_seg else {"write": sens[b - 1][0], "readout": sens[b - 1][1]}),
        })
    title, _ = task_identity(spec, datasets[split])
    counts = torch.bincount(y, minlength=spec.n_classes)
    return {
        "checkpoint": str(checkpoint), "task": config.task, "task_title": title, "preset": config.model.preset,
        "memory_rule": model.memory_rule, "step": step, "segments": n_seg, "segment_len": model.cfg.segment_len,
        "n_mem": model.cfg.n_mem, "d_model": model.cfg.d_model, "split": split, "n": len(y), "n_train": len(y_train),
        "chance": float(counts.max()) / len(y), "probe": {"kind": "multinomial logistic regression, L-BFGS",
                                                          "l2": l2, "seed": seed, "standardised": "train mean/std"},
        "initial_norm_ratio": scored.stats["init_norm"][0] / emb[0],
        "model_accuracy": accuracy(scored.logits.argmax(-1), y),
        "loop_vs_forward_max_logit_diff": scored.stats["logit_check"][0],
        "boundaries": boundaries,
        "note": story_note(config.task, str(getattr(datasets[split], "source", ""))),
        "definitions": {
            "boundary": "b = 1..T: after b segments; carried = memory entering segment b (0-based), after the "
                        "memory rule; write = the encoder's memory output of segment b-1, before it",
            "norm_ratio": "mean ||memory token|| / mean ||token embedding|| of the real tokens of the segment the "
                          "memory enters (the last segment for b = T)",
            "sensitivity": "mean ||out_swapped - out|| / ||out|| of segment b's write and read-out when its "
                           "incoming memory is another example's; none for b = T (no segment follows)",
            "by_depth_segment": "accuracy by the segment of the supporting fact; fact_read: b > depth",
        },
    }
