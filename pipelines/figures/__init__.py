"""Figures of every pipeline stage, drawn from the files the stages write.

One builder per figure returns a :class:`matplotlib.figure.Figure` (notebooks display it
inline); one ``plot_*`` wrapper builds it and writes PNG (and SVG on request) atomically.
One module per figure family; this package re-exports their public names, so
``from pipelines import figures; figures.fit_figure(...)`` is the way to use them.

- ``common`` -- shared by all: the rc style, a pyplot-free Figure, unit labels, and
  :func:`save_figure` (atomic, no dates in the metadata: the same inputs give the same bytes).
- ``simulation`` -- :func:`simulation_figure`: a simulation Dataset (architecture
  Contract 1): Ca2+, IP3, gliotransmitter release, the LTP trace with segment boundaries,
  the STP variables.
- ``retention_table`` -- a retention table (Contract 2): :func:`retention_figure`, RF(t, T)
  for several T and the T-free streaming variant (an extension, labelled as such); and
  :func:`fit_figure`, the simulated end-of-segment points, the fitted macro model and its
  residuals, with R^2 and k in the legend.
- ``decay`` -- :func:`decay_scale_figure`: the STP spatial response versus synapse distance
  next to the attention's positional weights exp(-scale * distance) and the matrices P.
- ``training`` -- :func:`plot_training_curves`: a training run directory (Contract 6): loss
  and accuracy, drawn by the trainer's own ``rmaat.train.metrics.plot_curves``.

Only matplotlib's object-oriented API is used, with an Agg canvas: no pyplot state, no
GUI backend, and nothing here imports torch or brian2, so the simulation side can draw
its figures on a machine without either.  Bad inputs raise the error class of the stage
that wrote them (SimulationInputError, RetentionTableError, DataError).
"""

from pipelines.figures.common import save_figure, unit_label
from pipelines.figures.decay import (PAPER_ROBUST_SCALE, PAPER_SCALES, decay_scale_figure, plot_decay_scale,
                                     positional_decay)
from pipelines.figures.retention_table import (DEFAULT_TOTALS, default_totals, fit_figure, fit_summary, plot_fit,
                                               plot_retention_table, retention_figure)
from pipelines.figures.simulation import SIMULATION_PANELS, plot_simulation, segment_end_times, simulation_figure
from pipelines.figures.training import plot_training_curves, read_metrics

__all__ = [
    "DEFAULT_TOTALS", "PAPER_ROBUST_SCALE", "PAPER_SCALES", "SIMULATION_PANELS",
    "decay_scale_figure", "default_totals", "fit_figure", "fit_summary", "plot_decay_scale", "plot_fit",
    "plot_retention_table", "plot_simulation", "plot_training_curves", "positional_decay", "read_metrics",
    "retention_figure", "save_figure", "segment_end_times", "simulation_figure", "unit_label",
]
