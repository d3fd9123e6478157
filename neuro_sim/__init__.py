"""neuro_sim: Brian2 neuron-astrocyte simulations producing LTP saturation curves.

``simulate()`` (Contract 1 in docs/architecture.md) runs a model and returns an
``xarray.Dataset``.  Brian2 is imported only when a network runs.
"""

from neuro_sim.errors import SimulationInputError
from neuro_sim.protocol import SegmentProtocol

# Bound after the submodule import on purpose: `neuro_sim.simulate` must be the function,
# not the module of the same name.
from neuro_sim.simulate import MODELS, simulate  # noqa: E402

__all__ = ["MODELS", "SegmentProtocol", "SimulationInputError", "simulate"]
