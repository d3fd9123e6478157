"""Forward+backward time and peak memory of astromorphic vs linear vs softmax attention.

All kinds are measured side by side in one run, interleaved (every repeat visits every
length and kind, the order of kinds rotating from repeat to repeat), so load from other
processes hits all kinds alike; only the ratios are meant to be compared, never absolute
times across runs or machines.

Default size: d_model = 128 with 4 heads (d_k = 32), batch 1 — the small-model regime of the
paper's LRA settings (widths of 128-256, a few heads), where an attention call sees one
segment plus memory tokens. Each measured step is one full layer as built by
``build_attention`` (Q/K/V and output projections included, as a model would run it):
forward, then backward of a fixed random output gradient into the input and all parameters.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from rmaat.attention import AttentionConfig, build_attention
from rmaat.errors import ConfigError

KINDS = ("astro", "linear", "softmax")
# Short labels for the rows; the full definitions are in the docstrings of the functions.
CPU_METHOD = "cpu allocator peak (torch.profiler memory events)"
CUDA_METHOD = "cuda max_memory_allocated"


def _step(layer: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> None:
    """One training-like step of the layer: forward, backward into x and every parameter."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    layer(x).backward(grad_out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes_cpu(layer: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[int, float]:
    """Peak extra allocator bytes of one step on CPU, and the step's wall time (seconds).

    The profiler reports every allocation and free of torch's CPU allocator; the running
    sum of those events, from the start of the step, peaks at the bytes the step needed on
    top of what existed before it (parameters, input): activations saved for backward,
    every transient buffer inside the kernels, and the gradients of input and parameters.
    Memory that torch does not allocate (e.g. a BLAS library's private workspace) is not seen.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        t0 = time.perf_counter()
        _step(layer, x, grad_out)
        seconds = time.perf_counter() - t0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return int(peak), seconds


def _peak_bytes_cuda(layer: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[int, float]:
    """Peak extra bytes of one step on CUDA: max_memory_allocated minus memory_allocated at its start."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    torch.cuda.synchronize(x.device)
    start = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    t0 = time.perf_counter()
    _step(layer, x, grad_out)
    torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - t0
    return int(torch.cuda.max_memory_allocated(x.device) - start), seconds


def run_attention_bench(lengths: Sequence[int] = (1024, 2048, 4096, 8192, 16384), batch: int = 1,
                        d_model: int = 128, n_heads: int = 4, device: str | torch.device | None = None,
                        repeats: int = 3, kinds: Sequence[str] = KINDS, seed: int = 0,
                        num_threads: int | None = 1, long_step_s: float = 1.0,
                        progress: bool = False) -> list[dict]:
    """Time and peak memory of one forward+backward per (length, kind); one row each.

    Every case first runs one memory-measuring step, which also serves as its warm-up. Then
    ``repeats`` rounds visit every length and kind (the order of kinds rotating between
    rounds) and ``seconds`` is the median of the timed steps. A case whose first step took
    at least ``long_step_s`` seconds (softmax at the longest lengths) is not repeated: its
    ``seconds`` is that first step's time, where first-call and profiler overheads are
    negligible; this bounds the bench's run time (single-threaded softmax attention at 16K
    takes 20 s or more per step on a 2-core CPU).
    ``timed_steps`` in each row says which applied (0 = the single first step).

    Rows: ``{"length", "kind", "seconds", "peak_bytes", "method", "timed_steps", "device",
    "batch", "d_model", "n_heads", "threads"}``; ``peak_bytes`` is the memory one step needs
    beyond the parameters and the input (see ``_peak_bytes_cpu`` / ``_peak_bytes_cuda``).
    ``device`` defaults to CUDA when available.
    ``num_threads`` sets torch's intra-op CPU threads for the run (restored afterwards; None
    keeps the current setting). The default is 1: on a small CPU shared with other busy
    processes, multi-threaded steps were erratic (OpenMP threads wait for each other at every
    parallel region, which hurts the many short ops of the linear kinds far more than the few
    long softmax kernels), while single-threaded ratios were steady from run to run.
    """
    lengths = [int(n) for n in lengths]
    if not lengths or min(lengths) < 1:
        raise ConfigError("lengths must be a non-empty list of positive integers, e.g. 1024,2048,4096")
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be at least 1")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"unknown attention kind(s) {unknown}; choose from {', '.join(KINDS)}")
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available; use --device cpu")
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        rows = _run(lengths, batch, d_model, n_heads, dev, repeats, list(kinds), seed, long_step_s, progress)
    finally:
        threads = torch.get_num_threads()
        torch.set_num_threads(threads_before)
    for row in rows:
        row.update(device=str(dev), batch=batch, d_model=d_model, n_heads=n_heads,
                   threads=threads if dev.type == "cpu" else None)
    return rows


def _run(lengths: list[int], batch: int, d_model: int, n_heads: int, dev: torch.device, repeats: int,
         kinds: list[str], seed: int, long_step_s: float, progress: bool) -> list[dict]:
    measure_peak = _peak_bytes_cuda if dev.type == "cuda" else _peak_bytes_cpu
    method = CUDA_METHOD if dev.type == "cuda" else CPU_METHOD

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    gen = torch.Generator().manual_seed(seed)
    cases: dict[tuple[int, str], tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = {}
    peaks: dict[tuple[int, str], int] = {}
    first: dict[tuple[int, str], float] = {}
    for n in lengths:
        x = torch.randn(batch, n, d_model, generator=gen).to(dev).requires_grad_(True)
        grad_out = torch.randn(batch, n, d_model, generator=gen).to(dev)
        for kind in kinds:
            torch.manual_seed(seed)
            layer = build_attention(AttentionConfig(kind=kind, d_model=d_model, n_heads=n_heads, seq_len=n))
            layer = layer.to(dev)
            cases[(n, kind)] = (layer, x, grad_out)
            if dev.type == "cuda":
                _step(layer, x, grad_out)  # warm-up (kernel selection, workspaces)
            peaks[(n, kind)], first[(n, kind)] = measure_peak(layer, x, grad_out)
            say(f"length {n} {kind}: first step {first[(n, kind)]:.3f} s, "
                f"peak {peaks[(n, kind)] / 2**20:.1f} MiB")

    repeated = [key for key in cases if first[key] < long_step_s]
    times: dict[tuple[int, str], list[float]] = {key: [] for key in repeated}
    for r in range(repeats):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]  # rotate who goes first
        for n in lengths:
            for kind in order:
                if (n, kind) not in times:
                    continue
                layer, x, grad_out = cases[(n, kind)]
                _sync(dev)
                t0 = time.perf_counter()
                _step(layer, x, grad_out)
                _sync(dev)
                times[(n, kind)].append(time.perf_counter() - t0)
        say(f"timing round {r + 1}/{repeats} done")

    return [{"length": n, "kind": kind,
             "seconds": statistics.median(times[(n, kind)]) if (n, kind) in times else first[(n, kind)],
             "peak_bytes": peaks[(n, kind)], "method": method,
             "timed_steps": len(times.get((n, kind), []))}
            for n in lengths for kind in kinds]


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Ratios per length plus time growth exponents, from ``run_attention_bench`` rows.

    One dict per length: ``softmax_over_astro_time``, ``astro_over_linear_time``,
    ``softmax_over_astro_memory``, ``astro_over_linear_memory`` and, per kind,
    ``<kind>_time_exponent``: the local log-log slope of time against length from the
    previous length (None at the first). A last dict with ``"length": "fit"`` holds the
    least-squares exponent over all lengths (1 = linear growth, 2 = quadratic) and None
    ratios. Missing kinds give None.
    """
    table = {(r["length"], r["kind"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]

    def ratio(n: int, top: str, bottom: str, key: str) -> float | None:
        a, b = table.get((n, top)), table.get((n, bottom))
        if a is None or b is None or not b[key]:
            return None
        return a[key] / b[key]

    out = []
    for i, n in enumerate(lengths):
        row: dict = {"length": n,
                     "softmax_over_astro_time": ratio(n, "softmax", "astro", "seconds"),
                     "astro_over_linear_time": ratio(n, "astro", "linear", "seconds"),
                     "softmax_over_astro_memory": ratio(n, "softmax", "astro", "peak_bytes"),
                     "astro_over_linear_memory": ratio(n, "astro", "linear", "peak_bytes")}
        for kind in KINDS:
            prev = lengths[i - 1] if i else None
            local = None
            if kind in kinds and prev is not None and (prev, kind) in table and (n, kind) in table:
                local = _slope([prev, n], [table[(prev, kind)]["seconds"], table[(n, kind)]["seconds"]])
            row[f"{kind}_time_exponent"] = local
        out.append(row)
    fit: dict = {"length": "fit", "softmax_over_astro_time": None, "astro_over_linear_time": None,
                 "softmax_over_astro_memory": None, "astro_over_linear_memory": None}
    for kind in KINDS:
        ns = [n for n in lengths if (n, kind) in table]
        fit[f"{kind}_time_exponent"] = (
            _slope(ns, [table[(n, kind)]["seconds"] for n in ns]) if len(ns) >= 2 else None)
    out.append(fit)
    return out
