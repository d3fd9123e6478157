"""The segment protocol: how RMAAT's input segments map onto astrocyte STP cycles.

Segment s (1-based) occupies [(s-1)*segment_period, s*segment_period) after a no-input
warm-up.  A presynaptic burst opens every segment; the LTP variable is sampled at each
segment's end (SPEC section 2).  Times are plain floats in seconds so that a protocol
serialises to JSON (it is stored in the Dataset's attributes for provenance).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from neuro_sim.errors import SimulationInputError

#: Largest segment count a simulation accepts.  64 segments cover the paper's settings
#: (2-16) and the packaged table; 1024 segments is ~3 hours of biological time, beyond
#: which the request is almost certainly a typo and would run for a very long time.
MAX_SEGMENTS = 1024


@dataclass(frozen=True)
class SegmentProtocol:
    """Stimulation protocol for ``n_segments`` segments (one STP cycle each)."""

    n_segments: int = 16
    segment_period_s: float = 10.0  # long enough for one Ca2+ event and x_A recovery (SPEC 2)
    burst_duration_s: float = 2.0  # presynaptic burst that opens each segment
    burst_rate_hz: float = 20.0  # firing rate during the burst
    n_synapses: int = 20  # presynaptic inputs driven by the burst
    warmup_s: float = 60.0  # no-input warm-up, then the LTP trace is reset (SPEC 2)
    stimulate: bool = True  # False: the "no stimulation => no LTP" control

    def __post_init__(self) -> None:
        validate_segment_count(self.n_segments)
        if self.segment_period_s <= 0 or self.burst_duration_s < 0 or self.warmup_s < 0:
            raise SimulationInputError(
                "segment_period_s must be > 0 and burst_duration_s, warmup_s >= 0"
            )
        if self.burst_duration_s > self.segment_period_s:
            raise SimulationInputError(
                f"burst_duration_s ({self.burst_duration_s}) exceeds segment_period_s "
                f"({self.segment_period_s}); shorten the burst or lengthen the segment"
            )
        if self.burst_rate_hz < 0 or self.n_synapses < 1:
            raise SimulationInputError("burst_rate_hz must be >= 0 and n_synapses >= 1")

    @property
    def duration_s(self) -> float:
        """Simulated time after the warm-up."""
        return self.n_segments * self.segment_period_s

    def segment_end_times_s(self) -> list[float]:
        """End of each segment, measured from the end of the warm-up."""
        return [s * self.segment_period_s for s in range(1, self.n_segments + 1)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def spike_trains(self) -> tuple[np.ndarray, np.ndarray]:
        """Presynaptic spikes as ``(synapse_index, time_s)``, times measured from the warm-up's end.

        Each synapse fires a regular train at ``burst_rate_hz`` during the first
        ``burst_duration_s`` of every segment.  Synapse ``i`` is phase-shifted by
        ``i / (n_synapses * burst_rate_hz)`` so the inputs are spread evenly over the
        inter-spike interval instead of arriving in lock-step; regular (not Poisson)
        trains keep every run bit-for-bit reproducible without a random seed.
        """
        if not self.stimulate or self.burst_rate_hz == 0 or self.burst_duration_s == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        isi = 1.0 / self.burst_rate_hz
        # The small epsilon keeps a spike that would land exactly on the burst's end out.
        n_per_burst = int(np.ceil(self.burst_duration_s * self.burst_rate_hz - 1e-9))
        k = np.arange(n_per_burst)  # (K,) spike number within a burst
        phase = np.arange(self.n_synapses) / (self.n_synapses * self.burst_rate_hz)  # (S,)
        onset = np.arange(self.n_segments) * self.segment_period_s  # (T,)
        times = onset[:, None, None] + phase[None, :, None] + k[None, None, :] * isi  # (T, S, K)
        index = np.broadcast_to(np.arange(self.n_synapses)[None, :, None], times.shape)
        return index.reshape(-1).astype(np.int64), times.reshape(-1)


def validate_segment_count(value: object) -> int:
    """Return ``value`` as an int segment count or raise a one-line, actionable error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimulationInputError(f"segment count must be a whole number, got {value!r}")
    if value < 1:
        raise SimulationInputError(f"segment count must be >= 1, got {value}")
    if value > MAX_SEGMENTS:
        raise SimulationInputError(
            f"segment count {value} exceeds the limit of {MAX_SEGMENTS} "
            f"(~{MAX_SEGMENTS * 10 / 3600:.1f} h of simulated time); use fewer segments"
        )
    return value
