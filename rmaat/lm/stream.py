"""Streaming evaluation of a byte LM (the paper's open question 3): bits per byte by position over
a stream much longer than the training context, with memory carried across every segment.

A trained recurrent LM reads ``stream_bytes`` consecutive held-out bytes as ONE input of
T_s = stream_bytes / N_seg segments. Memory is carried from segment to segment with a factor
f(t) per segment, and the cross-entropy of every predicted byte is kept by the segment it falls
in, so the result is bpb against position: does the memory help, saturate or drift once the
stream is longer than the T segments the model was trained on?

The factor rules compared (``MODES``):

* ``train``     RF(min(t, T−1), T) of the TRAINING T: what a model trained with the paper's RF
                can use when the total length is unknown; past segment T the last factor is held.
* ``paper``     RF(t, T_s), the paper's rule with the stream's length given in advance (only
                where the retention table has T_s; it is how the paper's factor would be used).
* ``streaming`` r_t = dp_t / dp_1, the T-free EXTENSION (:func:`streaming_factors`).
* ``carry``     1 for every segment: the models without a factor (rmt, rlt).
* ``reset``     no memory carried: every segment starts from the learned initial memory, the
                reference that says what the memory is worth at each position.

The rmaat preset gets train, paper, streaming and reset; rmt / rlt get carry and reset (the
model with a factor rule it was not trained with is the same network; only f(t) changes).

r_t past the table: the packaged table has T <= 64, so r_t is known for t <= 64. Beyond it
:func:`streaming_factors` continues the last row geometrically with the ratio of its last two
factors (the fitted macro-model's tail is exponential), so a stream or a generation can run for
ever. That continuation is an assumption of this module, printed in its output.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rmaat.errors import ConfigError, DataError
from rmaat.lm.model import CausalLM

MODES = ("train", "paper", "streaming", "carry", "reset")
#: The formats :func:`plot_stream` writes, chosen by the file's suffix.
FIGURE_SUFFIXES = (".png", ".svg")


def streaming_factors(n: int, table: str | None = None) -> tuple[np.ndarray, int]:
    """(r_1 .. r_n as an (n,) array, the number of them read from the table).

    The table's largest-T streaming row gives r_t for t <= T_max (r_t does not depend on T);
    past it the row is continued with the ratio r_{T_max} / r_{T_max - 1}.
    """
    from retention import load_retention_factors
    from retention.table import packaged_table_path, read_table, user_table_path

    if n < 1:
        raise ConfigError(f"need at least one factor, got n={n}")
    path = table or (user_table_path() if user_table_path().exists() else packaged_table_path())
    t_max = int(max(read_table(path)["total_segments"].values))
    row = load_retention_factors(t_max, path=path, variant="streaming")     # (T_max,)
    if n <= t_max:
        return row[:n].copy(), n
    ratio = row[-1] / row[-2] if t_max >= 2 and row[-2] > 0 else 1.0
    tail = row[-1] * ratio ** np.arange(1, n - t_max + 1)
    return np.concatenate([row, tail]), t_max


def t_free_factor(table: str | None = None, horizon: int = 4096):
    """t (0-based segment) -> r_{t+1}, for generation: :func:`streaming_factors` extended on demand."""
    cache = {"r": streaming_factors(horizon, table)[0]}

    def factor(t: int) -> float:
        if t >= len(cache["r"]):
            cache["r"] = streaming_factors(2 * (t + 1), table)[0]
        return float(cache["r"][t])

    return factor


def modes_for(model: CausalLM) -> tuple[str, ...]:
    """The factor rules that apply to a model (module docstring)."""
    if not model.cfg.recurrent:
        raise ConfigError("streaming evaluation carries memory across segments; the transformer preset has no "
                          "memory (evaluate it at its trained context without --stream-bytes)")
    if model.cfg.retention_variant == "none":
        return ("carry", "reset")
    return ("train", "paper", "streaming", "reset")


def mode_factors(mode: str, n_segments: int, train_segments: int, loader) -> tuple[np.ndarray | None, str]:
    """(factors (T_s,) or None for reset, a note) of one rule for a stream of ``n_segments``.

    ``loader(T, variant)`` reads the retention table (the run's; see lm_trainer.retention_loader).
    """
    if mode == "reset":
        return None, "no memory carried"
    if mode == "carry":
        return np.ones(n_segments), "memory carried unscaled"
    if mode == "train":
        rf = np.asarray(loader(train_segments, "paper"), dtype=np.float64)
        idx = np.minimum(np.arange(n_segments), train_segments - 1)
        return rf[idx], f"RF(t, T={train_segments}) of training, RF(T-1, T) held past segment {train_segments}"
    if mode == "paper":
        return np.asarray(loader(n_segments, "paper"), dtype=np.float64), f"RF(t, T={n_segments}) of the stream"
    if mode == "streaming":
        r, known = streaming_factors(n_segments)
        note = "r_t = dp_t / dp_1" + (f" (table to t={known}, continued geometrically)" if known < n_segments else "")
        return r, note
    raise ConfigError(f"unknown streaming mode {mode!r}; choose from {', '.join(MODES)}")


@torch.no_grad()
def bpb_by_segment(model: CausalLM, streams: torch.Tensor, factors: np.ndarray | None) -> np.ndarray:
    """streams (S, L + 1) bytes -> (T_s,) bits per byte of each segment, over the S streams.

    Memory: mem_{t+1} by the model's memory rule with RF(t) = factors[t] (for the paper's rule,
    factors[t] · mem'_{t+1}); ``factors`` None restarts every segment from the initial memory
    (``reset``).
    """
    model.eval()
    idx, targets = streams[:, :-1], streams[:, 1:]                            # (S, L)
    bounds = model.segment_bounds(idx.shape[1])
    rf = None if factors is None else torch.as_tensor(factors, dtype=torch.float64)
    out = np.zeros(len(bounds))
    mem = model.initial_memory(idx.shape[0])
    for t, (s, e) in enumerate(bounds):
        if rf is None:
            mem = model.initial_memory(idx.shape[0])
        logits, _, mem_next = model.segment_step(t, idx[:, s:e], None, mem, rf, 0)
        lg = logits.to(torch.promote_types(logits.dtype, torch.float32))        # float32 or wider
        nats = F.cross_entropy(lg.flatten(0, 1), targets[:, s:e].flatten(), reduction="mean")
        out[t] = float(nats) / math.log(2.0)
        mem = mem_next if rf is not None else mem
    return out


def stream_windows(data: np.ndarray, stream_bytes: int, max_streams: int | None) -> np.ndarray:
    """(S, stream_bytes + 1) consecutive, non-overlapping streams from the start of ``data``."""
    n = (len(data) - 1) // stream_bytes
    if max_streams is not None:
        n = min(n, max_streams)
    if n < 1:
        raise DataError(f"the split has {len(data):,} bytes, fewer than one stream of {stream_bytes + 1:,}; "
                        "lower --stream-bytes")
    return np.stack([data[i * stream_bytes:(i + 1) * stream_bytes + 1] for i in range(n)]).astype(np.int64)


def evaluate_stream(model: CausalLM, data: np.ndarray, *, stream_bytes: int, train_segments: int, loader,
                    max_streams: int | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """bpb by segment for every rule of :func:`modes_for`; a rule the table cannot serve
    (``paper`` past its largest T) is reported as skipped with the reason."""
    n = model.cfg.segment_len
    if stream_bytes < n or stream_bytes % n:
        raise ConfigError(f"--stream-bytes must be a positive multiple of the segment length {n}, got {stream_bytes}")
    streams = torch.from_numpy(stream_windows(data, stream_bytes, max_streams)).to(device)
    n_segments = stream_bytes // n
    result: dict[str, Any] = {"stream_bytes": stream_bytes, "streams": int(streams.shape[0]),
                              "segment_len": n, "train_segments": train_segments, "modes": {}, "skipped": {}}
    for mode in modes_for(model):
        try:
            factors, note = mode_factors(mode, n_segments, train_segments, loader)
        except Exception as error:  # a table without this T: say so, keep the other rules
            from retention.errors import RetentionTableError

            if not isinstance(error, RetentionTableError):
                raise
            result["skipped"][mode] = str(error).split(";")[0]
            continue
        by_segment = bpb_by_segment(model, streams, factors)
        result["modes"][mode] = {"note": note, "bpb_by_segment": by_segment.tolist(),
                                 "bpb": float(by_segment.mean()),
                                 "bpb_within_training": float(by_segment[:train_segments].mean()),
                                 "bpb_past_training": (float(by_segment[train_segments:].mean())
                                                       if n_segments > train_segments else None)}
    return result


def format_stream(result: dict[str, Any]) -> str:
    """A table of the rules' bpb (all, within and past the training length) and the skipped rules."""
    n, t_train = result["segment_len"], result["train_segments"]
    lines = [f"streaming evaluation: {result['streams']} stream(s) of {result['stream_bytes']:,} bytes "
             f"({result['stream_bytes'] // n} segments of {n}; trained on {t_train})",
             f"  {'rule':<10} {'bpb':>7} {'segments <= ' + str(t_train):>16} {'past training':>14}  factor"]
    for mode, r in result["modes"].items():
        past = "–" if r["bpb_past_training"] is None else f"{r['bpb_past_training']:.4f}"
        lines.append(f"  {mode:<10} {r['bpb']:7.4f} {r['bpb_within_training']:16.4f} {past:>14}  {r['note']}")
    for mode, why in result["skipped"].items():
        lines.append(f"  {mode:<10} skipped: {why}")
    return "\n".join(lines)


def plot_stream(result: dict[str, Any], path, title: str) -> None:
    """bpb against position (bytes) for each rule, with the training context marked; PNG/SVG by suffix
    (ConfigError for another suffix: its bytes would not be the format its name says)."""
    from pathlib import Path

    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_SUFFIXES:
        raise ConfigError(f"figure {path} must end in {' or '.join(FIGURE_SUFFIXES)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retention.atomic import atomic_write

    n = result["segment_len"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for mode, r in result["modes"].items():
        values = r["bpb_by_segment"]
        ax.plot([(t + 1) * n for t in range(len(values))], values, lw=1.2, label=f"{mode}: {r['note']}")
    ax.axvline(result["train_segments"] * n, color="grey", ls="--", lw=1, label="training context")
    ax.set_xlabel("position in the stream (bytes, end of segment)")
    ax.set_ylabel("bits per byte of the segment")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fmt = suffix[1:]
    try:
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=120, metadata=metadata))
    finally:
        plt.close(fig)
