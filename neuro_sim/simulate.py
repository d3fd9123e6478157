"""``simulate()``: one neuron-astrocyte run serving every requested segment count.

The LTP dynamics are causal, so the saturation curve for T segments is the first T
points of the curve for T_max = max(total_segments): one network run of T_max segments
serves them all (docs/architecture.md, Contract 1).  Models live in their own modules
and are imported only when run, so importing this module never loads Brian2.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Iterable
from datetime import datetime, timezone

import numpy as np
import xarray as xr

from neuro_sim.codegen import brian2_version, validate_codegen
from neuro_sim.errors import SimulationInputError
from neuro_sim.protocol import SegmentProtocol, validate_segment_count

#: Model registry: name -> module ``neuro_sim.<name>`` exposing ``default_params()`` and ``run()``.
MODELS = ("tripartite", "astro_rate")
DEFAULT_MODEL = "tripartite"


def load_model(model: str):
    """Import and return the module implementing ``model`` (raises for unknown names)."""
    if model not in MODELS:
        raise SimulationInputError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    return importlib.import_module(f"neuro_sim.{model}")


def normalize_segments(total_segments: int | Iterable[int]) -> list[int]:
    """Sorted unique segment counts, each validated (>= 1, whole, not absurdly large)."""
    if isinstance(total_segments, (int, np.integer)) and not isinstance(total_segments, bool):
        total_segments = (int(total_segments),)
    if isinstance(total_segments, (str, bytes)) or not isinstance(total_segments, Iterable):
        raise SimulationInputError(
            f"total_segments must be a segment count or a list of them, got {total_segments!r}"
        )
    counts = [
        validate_segment_count(int(t) if isinstance(t, np.integer) else t) for t in total_segments
    ]
    if not counts:
        raise SimulationInputError("total_segments is empty; give at least one segment count, e.g. (16,)")
    return sorted(set(counts))


def package_version() -> str:
    """Installed version of this project's distribution (for provenance)."""
    try:
        from importlib.metadata import version

        return version("rmaat-pipeline")
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        return "0+unknown"


def simulate(
    total_segments: int | Iterable[int] = (16,),
    model: str = DEFAULT_MODEL,
    *,
    protocol: SegmentProtocol | None = None,
    params: dict[str, float] | None = None,
    codegen: str = "auto",
    dt_s: float | None = None,
    progress: bool = True,
    seed: int = 0,
) -> xr.Dataset:
    """Simulate the LTP saturation curve for every segment count in ``total_segments``.

    Args:
        total_segments: segment count(s) T; one run of ``max(total_segments)`` serves all.
        model: ``"tripartite"`` (biophysical, default for tables) or ``"astro_rate"``.
        protocol: stimulation protocol; its ``n_segments`` is replaced by T_max.
            Default: ``SegmentProtocol()`` (20 synapses, 20 Hz bursts of 2 s every 10 s).
        params: model parameter overrides, SI floats (see the model's ``default_params()``).
        codegen: Brian2 target: ``auto``, ``numpy``, ``cython`` or ``cpp_standalone``.
        dt_s: integration step in seconds (model default when None).
        progress: show a progress bar while the network runs.
        seed: random seed handed to the model (recorded in the attributes).

    Returns:
        Dataset with ``ltp_end(segment)``, ``ltp(total_segments, segment)`` (NaN where
        segment > total_segments), the model's traces on ``time``, and provenance attributes.
    """
    counts = normalize_segments(total_segments)
    mod = load_model(model)
    validate_codegen(codegen)
    if params is not None and not isinstance(params, dict):
        raise SimulationInputError(f"params must be a dict of name -> SI value, got {type(params).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SimulationInputError(f"seed must be a non-negative integer, got {seed!r}")
    if protocol is None:
        protocol = SegmentProtocol(n_segments=counts[-1])
    elif not isinstance(protocol, SegmentProtocol):
        raise SimulationInputError(f"protocol must be a SegmentProtocol, got {type(protocol).__name__}")
    else:
        protocol = dataclasses.replace(protocol, n_segments=counts[-1])

    ds = mod.run(protocol, params, codegen=codegen, dt_s=dt_s, progress=progress, seed=int(seed))

    segment = ds["segment"].values  # (T_max,)
    totals = np.asarray(counts, dtype=np.int64)  # (n_T,)
    ltp = np.where(segment[None, :] <= totals[:, None], ds["ltp_end"].values[None, :], np.nan)
    ds = ds.assign_coords(
        total_segments=("total_segments", totals, {"long_name": "total segment count T", "units": "1"})
    )
    ds["ltp"] = (("total_segments", "segment"), ltp, {
        "long_name": f"{ds['ltp_end'].attrs.get('long_name', 'LTP value at segment end')}, "
                     "for a sequence of total_segments segments (NaN beyond T)",
        "units": ds["ltp_end"].attrs.get("units", "1"),
    })
    ds.attrs.update({
        "model": model,
        "model_params": ds.attrs.get("model_params", json.dumps(mod.default_params(), sort_keys=True)),
        "protocol": protocol.to_json(),
        "codegen": ds.attrs.get("codegen", codegen),
        "dt_s": float(ds.attrs.get("dt_s", np.nan if dt_s is None else dt_s)),
        "brian2_version": brian2_version(),
        "package_version": package_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    return ds
