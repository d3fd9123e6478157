"""Training throughput and peak memory of RMAAT vs RMT vs Transformer at equal size, side by side.

The paper's comparison (Retrieval, 2 x 4K bytes, 16 segments of 512 tokens over the pair):
RMAAT trains 1.73x faster than RMT. Here every preset is built at the same width/depth on the
Retrieval shape (dual encoder, byte vocabulary) with random bytes — throughput does not depend on
the text — and one training step of each preset is timed in rounds, the order of presets rotating
between rounds so machine noise hits all alike. Reported figures are ratios within one run.

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the exact live-tensor count of
``memory_bench.live_tensor_counter`` (every tensor created during the step, while it is alive).

``compile=True`` adds a compiled twin ``NAME+compiled`` of every preset (same seed, same
weights, ``rmaat.compile.compile_model``), timed in the same rotating rounds as the eager
models. Its first step, which pays the compilation, is timed on its own: ``compile_seconds``
= first step - steady-state step (about 0 for a twin whose graphs an earlier twin compiled, e.g.
rmaat:bptt after rmaat: the blocks are the same). On CPU a compiled twin's peak memory is not
measured (the live-tensor counter is a dispatch mode, under which the compiled step would
recompile)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from rmaat.benchmarks.memory_bench import live_tensor_counter
from rmaat.compile import compile_model
from rmaat.encoder.amrb import train_step
from rmaat.encoder.model import build_model

#: Preset -> the training mode it is compared in (its own default: AMRB for RMAAT, BPTT for RMT).
DEFAULT_PRESETS: tuple[str, ...] = ("rmaat", "rmt", "transformer")
#: Suffix of the compiled twin of a preset in rows and summaries.
COMPILED = "+compiled"


def _model_and_batch(preset: str, doc_len: int, segments: int, d_model: int, n_layers: int,
                     batch: int, device: torch.device, seed: int):
    torch.manual_seed(seed)
    recurrent = preset not in ("transformer", "at")
    model = build_model(
        preset, vocab_size=257, n_classes=2, d_model=d_model, n_heads=4, n_layers=n_layers,
        d_ff=2 * d_model, seq_len=doc_len, n_segments=segments if recurrent else 1,
        dual_encoder=True,  # RMAAT's RF for T = segments comes from the retention table
    ).to(device)
    gen = torch.Generator().manual_seed(seed)
    data = {
        "input_ids": torch.randint(1, 257, (batch, doc_len), generator=gen),
        "attention_mask": torch.ones(batch, doc_len, dtype=torch.bool),
        "input_ids_2": torch.randint(1, 257, (batch, doc_len), generator=gen),
        "attention_mask_2": torch.ones(batch, doc_len, dtype=torch.bool),
        "label": torch.randint(0, 2, (batch,), generator=gen),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, data, optimizer


def _peak_bytes(step, device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with live_tensor_counter() as counter:
        step()
    return int(counter.peak)


def _timed(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_throughput_bench(presets: Sequence[str] = DEFAULT_PRESETS, doc_len: int = 4096, segments: int = 8,
                         d_model: int = 128, n_layers: int = 2, batch: int = 1, rounds: int = 3,
                         device: str | None = None, threads: int | None = 1,
                         seed: int = 0, compile: bool = False, compile_mode: str | None = None
                         ) -> list[dict[str, Any]]:
    """One row per preset ("name" or "name:bptt|amrb" to force a training mode), and with
    `compile` one more per preset ("name+compiled"): {"preset", "backprop", "compiled", "tokens",
    "step_seconds", "tokens_per_s", "peak_bytes", "compile_seconds", "method", "device"};
    tokens = 2 * doc_len * batch (both documents)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads is not None and dev.type == "cpu":
        torch.set_num_threads(threads)
    names = list(presets) + ([p + COMPILED for p in presets] if compile else [])
    built = {}
    for name in names:
        p = name.removesuffix(COMPILED)
        built[name] = _model_and_batch(p.split(":")[0], doc_len, segments, d_model, n_layers, batch, dev, seed)
        if name.endswith(COMPILED):
            compile_model(built[name][0], mode=compile_mode)
    autocast = torch.bfloat16 if dev.type == "cuda" else None
    modes = {n: (n.removesuffix(COMPILED).split(":")[1] if ":" in n else None) for n in names}  # None: own mode
    steps = {n: (lambda m=m, d=d, o=o, b=modes[n]: train_step(m, d, o, backprop=b, autocast_dtype=autocast))
             for n, (m, d, o) in built.items()}
    first = {n: _timed(steps[n], dev) for n in names if n.endswith(COMPILED)}  # compile + one step
    # the eager warm-up step doubles as the memory step; a compiled step under the CPU counter
    # (a dispatch mode) would recompile, so compiled twins are measured on CUDA only
    peaks = {n: (_peak_bytes(step, dev) if dev.type == "cuda" or n not in first else None)
             for n, step in steps.items()}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            times[n].append(_timed(steps[n], dev))
    tokens = 2 * doc_len * batch
    method = ("torch.cuda.max_memory_allocated" if dev.type == "cuda"
              else "exact live-tensor bytes during one step (TorchDispatchMode)")
    rows = []
    for n in names:
        seconds = statistics.median(times[n])
        cfg = built[n][0].cfg
        rows.append({"preset": n, "backprop": (modes[n] or cfg.backprop) if cfg.recurrent else "none",
                     "compiled": n in first, "tokens": tokens, "step_seconds": seconds,
                     "tokens_per_s": tokens / seconds, "peak_bytes": peaks[n],
                     "compile_seconds": max(first[n] - seconds, 0.0) if n in first else None, "method": method,
                     "device": str(dev)})
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput and memory of each preset relative to eager RMT (the paper's reference); when
    compiled twins were measured, also each twin relative to its eager preset (`compiled_vs_eager`)
    and its compile time."""
    ref = next((r for r in rows if r["preset"] == "rmt"), rows[0])
    eager = {r["preset"]: r for r in rows if not r.get("compiled")}
    any_compiled = any(r.get("compiled") for r in rows)
    out = []
    for r in rows:
        entry = {"preset": r["preset"], "throughput_vs_" + ref["preset"]: r["tokens_per_s"] / ref["tokens_per_s"],
                 "memory_vs_" + ref["preset"]: (None if r["peak_bytes"] is None
                                                else r["peak_bytes"] / ref["peak_bytes"])}
        if any_compiled:
            twin = eager.get(r["preset"].removesuffix(COMPILED)) if r.get("compiled") else None
            entry["compiled_vs_eager"] = None if twin is None else r["tokens_per_s"] / twin["tokens_per_s"]
            entry["compile_seconds"] = r.get("compile_seconds")
        out.append(entry)
    return out
