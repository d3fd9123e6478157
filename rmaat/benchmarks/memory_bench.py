"""Peak memory and time of one training step, BPTT vs AMRB, at equal model and segment size.

Every (segments, mode) pair is measured in a fresh Python process (`python -m
rmaat.benchmarks.memory_bench --worker '<json>'`), so no allocator cache, high-water mark or lazy
initialisation of one measurement leaks into another. The input length grows with the segment
count (L = T * segment_len) while the model and the segment stay the same, which is the
paper's setting (Retrieval: 16 segments of 512).

How memory is measured (the `method` key of every row says which one was used):

* CUDA ("cuda_max_memory_allocated"): `torch.cuda.max_memory_allocated()` during the measured
  step minus `torch.cuda.memory_allocated()` just before it (peak stats reset after warm-up).
* CPU ("live_tensor_bytes"): exact accounting of the tensors the step allocates. A
  `TorchDispatchMode` sees every operator of the step -- forward, backward, the segments AMRB
  re-runs during the backward pass, the optimizer -- and adds the size of each output storage
  that is not one of the operator's inputs' storages (views and in-place results are not new
  memory); a weak reference with a callback on the storage subtracts it when PyTorch frees it.
  `peak_bytes` is the maximum of this running total: the peak memory the step needs above what
  was alive before it, independent of the C allocator's caching and of other processes.
  Activations rebuilt by a replay and their gradients are counted like any other tensor.
  As a cross-check (`rss_check`), `rss_peak_bytes` comes from a second fresh process started
  with glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), so that every tensor
  above that size gets its own mapping and leaves the resident set when freed: after a warm-up
  step the kernel's high-water mark VmHWM is reset (/proc/self/clear_refs) and one step's
  VmHWM - VmRSS_before is reported. Without the fixed threshold glibc keeps the warm-up step's
  heap and the measured step looks free. It agrees with the exact count to within ~10% at the
  defaults (pages, heap fragmentation, memory freed during the step); None where
  /proc/self/clear_refs cannot be written.

Time: `step_seconds` / `step_cpu_seconds` are the minimum wall / process-CPU time over `repeats`
steps run before the memory steps, with nothing observing them. On a shared CPU machine the CPU
time is the steadier measure (one intra-op thread by default, so it is the step's own work).

The defaults (segment_len 128, d_model 128, 2 layers, d_ff 256, batch 4, dropout 0.1, one CPU
thread) keep `segments=(16,)` around half a minute on a 2-core machine while activations
dominate the measurement: one segment's activations are about 11 MiB, the parameter gradients
about 1.3 MiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rmaat.errors import ConfigError

MODES = ("bptt", "amrb", "amrb_replay")  # amrb_replay: AMRB through the hand-written replay


# ---------------------------------------------------------------------- exact CPU accounting
def live_tensor_counter():
    """A context manager counting the bytes of tensor storages allocated inside it and still
    alive; `.peak` holds the maximum. Needs PyTorch's storage PyObject preservation (>= 2.1).

    Python's cyclic garbage collector is paused inside: the weak references it creates would
    otherwise trigger full collections that make a BPTT step five times slower. Tensors are
    freed by reference counting, so this changes no measurement (at worst a tensor kept alive
    only by a reference cycle would be counted longer: an over-, never an under-estimate).
    """
    import gc
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveTensorCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.current = 0
            self.peak = 0
            self._refs: dict[int, weakref.ref] = {}

        def __enter__(self):
            self._gc_was_enabled = gc.isenabled()
            gc.disable()
            return super().__enter__()

        def __exit__(self, *exc):
            try:
                return super().__exit__(*exc)
            finally:
                if self._gc_was_enabled:
                    gc.enable()

        def _freed(self, key: int, nbytes: int) -> None:
            self._refs.pop(key, None)
            self.current -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                      if isinstance(t, torch.Tensor) and t.layout == torch.strided}
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                    continue
                st = t.untyped_storage()
                key = id(st)
                if key in inputs or key in self._refs:
                    continue
                nbytes = st.nbytes()
                self._refs[key] = weakref.ref(st, lambda _, k=key, n=nbytes: self._freed(k, n))
                self.current += nbytes
            self.peak = max(self.peak, self.current)
            return out

    return LiveTensorCounter()


# ---------------------------------------------------------------------- resident memory (Linux)
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------- worker (fresh process)
def measure_step(segments: int, mode: str, *, segment_len: int, d_model: int, batch: int, n_layers: int = 2,
                 n_heads: int = 4, d_ff: int | None = None, preset: str = "rmaat", dropout: float = 0.1,
                 device: str = "auto", repeats: int = 2, threads: int = 1, seed: int = 0,
                 part: str = "main") -> dict[str, Any]:
    """Measure one training step in THIS process (call it in a fresh one; see `run_memory_bench`).

    part="main": one warm-up step, `repeats` timed steps (step_seconds / step_cpu_seconds: the
    minimum wall / process-CPU time), then one memory step (peak_bytes: CUDA allocator peak, or
    live-tensor accounting on CPU). part="rss": one warm-up step, then the resident-set
    high-water mark of one step (rss_peak_bytes; run it with MALLOC_MMAP_THRESHOLD_ set).
    """
    import gc

    import numpy as np
    import torch

    from rmaat.encoder.amrb import train_step
    from rmaat.encoder.model import build_model

    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    seq_len = segments * segment_len
    overrides = dict(seq_len=seq_len, n_segments=segments, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                     d_ff=d_ff or 2 * d_model, dropout=dropout, vocab_size=256)
    # RF values do not change the cost; uniform factors keep the benchmark independent of the table
    rf = np.full(segments, 1.0 / segments) if preset == "rmaat" else None
    model = build_model(preset, retention_factors=rf, **overrides).to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)  # stateless: the step's memory is the model's
    data = {"input_ids": torch.randint(0, 256, (batch, seq_len), device=dev),
            "attention_mask": torch.ones(batch, seq_len, dtype=torch.bool, device=dev),
            "label": torch.randint(0, 2, (batch,), device=dev)}
    backprop, impl = ("amrb", "replay") if mode == "amrb_replay" else (mode, "checkpoint")

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(model, data, optimizer, backprop, amrb_impl=impl)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0, time.process_time() - c0

    def forward_pass() -> tuple[float, float]:
        """What AMRB adds per replayed segment: a forward pass with dropout on and no autograd."""
        inputs = {k: v for k, v in data.items() if k != "label"}
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            model.train()
            model(**inputs, backprop="bptt")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0, time.process_time() - c0

    step()  # warm-up: lazy initialisation, gradient buffers' first allocation, kernels
    gc.collect()
    if part == "rss":
        if dev.type != "cpu" or not _reset_hwm():
            return {"rss_peak_bytes": None}
        base = _status_kib("VmRSS") * 1024
        step()
        return {"rss_peak_bytes": _status_kib("VmHWM") * 1024 - base}
    times = [step() for _ in range(max(repeats, 1))]
    forward = [forward_pass() for _ in range(max(repeats, 1))] if mode == "bptt" else []
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        peak, method = torch.cuda.max_memory_allocated(dev) - base, "cuda_max_memory_allocated"
    else:
        counter = live_tensor_counter()
        with counter:
            step()
        peak, method = counter.peak, "live_tensor_bytes"
    return {"segments": segments, "mode": mode, "peak_bytes": int(peak),
            "step_seconds": min(t for t, _ in times), "step_cpu_seconds": min(c for _, c in times),
            **({"forward_seconds": min(t for t, _ in forward), "forward_cpu_seconds": min(c for _, c in forward)}
               if forward else {}),
            "method": method, "device": str(dev), "preset": preset, "segment_len": segment_len,
            "seq_len": seq_len, "d_model": d_model, "n_layers": n_layers, "batch": batch, "dropout": dropout,
            "threads": torch.get_num_threads() if dev.type == "cpu" else None, "torch_version": torch.__version__}


# ---------------------------------------------------------------------- driver
def _run_worker(args: dict[str, Any], env: dict[str, str] | None, timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "rmaat.benchmarks.memory_bench", "--worker", json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout_s,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"memory benchmark worker {args} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_memory_bench(segments: Iterable[int] = (4, 8, 16, 32), modes: Sequence[str] = ("bptt", "amrb"),
                     segment_len: int = 128, d_model: int = 128, batch: int = 4, device: str | None = None, *,
                     n_layers: int = 2, n_heads: int = 4, d_ff: int | None = None, preset: str = "rmaat",
                     dropout: float = 0.1, repeats: int = 2, threads: int = 1, rss_check: bool = True,
                     timeout_s: float = 600.0) -> list[dict[str, Any]]:
    """Measure every (segments, mode) pair in fresh processes; returns one row per pair:
    {"segments", "mode", "peak_bytes", "step_seconds", "step_cpu_seconds", "method",
    "rss_peak_bytes", ...}.

    device: None/"auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    modes: "bptt", "amrb" (per-segment checkpointing, the default implementation) and
    "amrb_replay" (the hand-written replay).
    rss_check: on CPU, also measure the resident-set peak in a second fresh process
    (`rss_peak_bytes`; glibc's mmap threshold is fixed there, which slows allocation, so that
    process is not timed).
    """
    segments = [int(t) for t in segments]
    if not segments or any(t < 1 for t in segments):
        raise ConfigError(f"segments must be positive integers, got {segments}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    if preset not in ("rmt", "rlt", "rmaat"):
        raise ConfigError(f"preset {preset!r} is not recurrent; the memory benchmark needs rmt, rlt or rmaat")
    rows = []
    for t in segments:
        for mode in modes:
            args = dict(segments=t, mode=mode, segment_len=segment_len, d_model=d_model, batch=batch,
                        n_layers=n_layers, n_heads=n_heads, d_ff=d_ff, preset=preset, dropout=dropout,
                        device=device or "auto", repeats=repeats, threads=threads)
            row = _run_worker(args, None, timeout_s)
            row["rss_peak_bytes"] = None
            if rss_check and row["device"] == "cpu":
                # every tensor above 64 KiB gets its own mapping and leaves the resident set when
                # freed, so RSS follows the live tensors (set before start: glibc reads it once)
                row.update(_run_worker({**args, "part": "rss"}, {"MALLOC_MMAP_THRESHOLD_": "65536"}, timeout_s))
            rows.append(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Ratios per segment count and AMRB flatness.

    per_segments: {segments, bptt_peak_bytes, amrb_peak_bytes, memory_ratio (BPTT / AMRB),
    limit ((T + 1) / 2), time_ratio and cpu_time_ratio (AMRB / BPTT)} plus the same for
    amrb_replay where measured; amrb_flatness: max / min of AMRB's peak over the segment counts;
    goals: the issue's targets checked on these numbers (None where not measured), the time
    goal on CPU time for CPU rows (`time_goal_basis`).

    `limit` is the issue's estimate (T + 1) / 2, which assumes the replayed segment's gradients
    take as much memory as its activations. Measured ratios can exceed it: during a segment's
    backward pass only a few gradient buffers are alive at once, so AMRB's peak is close to one
    segment's activations and the ratio tends to T (BPTT keeps T segments).
    """
    by = {(r["segments"], r["mode"]): r for r in rows}
    per = []
    for t in sorted({r["segments"] for r in rows}):
        entry: dict[str, Any] = {"segments": t, "limit": (t + 1) / 2}
        base = by.get((t, "bptt"))
        for mode in MODES:
            if (t, mode) in by:
                entry[f"{mode}_peak_bytes"] = by[(t, mode)]["peak_bytes"]
                entry[f"{mode}_step_seconds"] = by[(t, mode)]["step_seconds"]
        if base is not None and "forward_seconds" in base:
            # AMRB re-runs T - 1 of T segment forwards without autograd: its step time cannot fall
            # below BPTT's by less than that share (SPEC section 9; issue: "the algorithm's floor")
            key = "forward_cpu_seconds" if "forward_cpu_seconds" in base and base.get("device") == "cpu" else "forward_seconds"
            step_key = "step_cpu_seconds" if key == "forward_cpu_seconds" else "step_seconds"
            entry["forward_share"] = base[key] / base[step_key]
            entry["floor"] = 1.0 + entry["forward_share"] * (t - 1) / t
        for mode, suffix in (("amrb", ""), ("amrb_replay", "_replay")):
            row = by.get((t, mode))
            if base is not None and row is not None:
                entry[f"memory_ratio{suffix}"] = base["peak_bytes"] / max(row["peak_bytes"], 1)
                entry[f"time_ratio{suffix}"] = row["step_seconds"] / base["step_seconds"]
                if "step_cpu_seconds" in row and "step_cpu_seconds" in base:
                    entry[f"cpu_time_ratio{suffix}"] = row["step_cpu_seconds"] / base["step_cpu_seconds"]
        per.append(entry)
    amrb = [by[(t, "amrb")]["peak_bytes"] for t in sorted({r["segments"] for r in rows}) if (t, "amrb") in by]
    flatness = max(amrb) / max(min(amrb), 1) if len(amrb) >= 2 else None
    at16 = next((e for e in per if e["segments"] == 16), None)
    # on a (shared) CPU the process CPU time is the step's own work; wall time there mostly
    # measures the other processes
    on_cpu = bool(rows) and all(r.get("device") == "cpu" and "step_cpu_seconds" in r for r in rows)
    time_key = "cpu_time_ratio" if on_cpu else "time_ratio"
    goals = {
        "memory_ratio_at_16_ge_8": None if not at16 or "memory_ratio" not in at16 else at16["memory_ratio"] >= 8,
        "amrb_flat_within_10pct": None if flatness is None else flatness <= 1.10,
        "time_ratio_le_1.35": (None if not any(time_key in e for e in per)
                               else all(e[time_key] <= 1.35 for e in per if time_key in e)),
    }
    methods = sorted({r["method"] for r in rows})
    return {"per_segments": per, "amrb_flatness": flatness, "goals": goals, "time_goal_basis": time_key,
            "methods": methods}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the rows and their summary (for the CLI)."""
    summary = summarise(rows)
    lines = [f"{'T':>4} {'mode':<12} {'peak MiB':>10} {'RSS MiB':>9} {'step s':>8} {'cpu s':>8}"]
    for r in sorted(rows, key=lambda r: (r["segments"], MODES.index(r["mode"]))):
        rss = r.get("rss_peak_bytes")
        rss_txt = f"{rss / 2**20:>9.1f}" if rss is not None else f"{'-':>9}"
        lines.append(f"{r['segments']:>4} {r['mode']:<12} {r['peak_bytes'] / 2**20:>10.1f} {rss_txt} "
                     f"{r['step_seconds']:>8.2f} {r.get('step_cpu_seconds', float('nan')):>8.2f}")
    lines.append("")
    lines.append(f"{'T':>4} {'mem BPTT/AMRB':>14} {'(T+1)/2':>8} {'time AMRB/BPTT':>15} {'cpu-time':>9} "
                 f"{'floor':>6} {'fwd share':>9}")
    for e in summary["per_segments"]:
        if "memory_ratio" in e:
            lines.append(f"{e['segments']:>4} {e['memory_ratio']:>14.2f} {e['limit']:>8.1f} "
                         f"{e['time_ratio']:>15.2f} {e.get('cpu_time_ratio', float('nan')):>9.2f} "
                         f"{e.get('floor', float('nan')):>6.2f} {e.get('forward_share', float('nan')):>9.2f}")
    lines.append("floor = 1 + (no-grad forward / BPTT step) * (T - 1) / T: AMRB's re-run forwards at no other "
                 "cost (CPU time on CPU)")
    if summary["amrb_flatness"] is not None:
        lines.append(f"AMRB peak max/min over T: {summary['amrb_flatness']:.3f}")
    lines.append(f"method: {', '.join(summary['methods'])} (see rmaat.benchmarks.memory_bench)")
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> None:
    if len(argv) == 2 and argv[0] == "--worker":
        print(json.dumps(measure_step(**json.loads(argv[1]))))
        return
    rows = run_memory_bench()
    print(format_table(rows))


if __name__ == "__main__":
    _main(sys.argv[1:])
