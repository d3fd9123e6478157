"""Probes of what a trained model keeps in its memory (``pipeline probe``)."""

from rmaat.probe.memory_probe import LinearProbe, collect_states, fit_probe, run_memory_probe, run_segments

__all__ = ["LinearProbe", "collect_states", "fit_probe", "run_memory_probe", "run_segments"]
