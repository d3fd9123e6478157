"""STP spatial response versus synapse distance: the link to the attention's decay ``scale``.

In the ``astro_rate`` network the astrocytic coupling T between synapses falls off as
exp(-scale d) with their distance d on the 3 x 3 (post i, pre j) grid; in RMAAT's
attention the astrocytic positional term falls off as exp(-scale |i - j|) with token
distance.  This module measures how far one synapse's STP activity spreads:

1. Stimulate a single *source* synapse: add a Hebbian drive (the coincident pre/post
   activity theta(x_i) theta(x_j) of a burst, default tanh(1)^2 at the default burst level
   x = 1) to its s equation only; all neurons stay silent, so no other synapse receives
   Hebbian input.
2. Integrate the full ``astro_rate`` equations (SciPy, :mod:`neuro_sim.astro_rate_scipy`,
   same parameter block) for one burst and read p_s at every synapse at the burst's end
   (``at="burst_end"``, one STP cycle) or at the stimulated fixed point
   (``at="steady_state"``).
3. Average p_s over the synapses at each distance from the source.

The default source is the corner synapse (0, 0), the only position that sees every
distance of the grid (1, sqrt 2, 2, sqrt 5, sqrt 8).  ``effective_scale`` is the
least-squares slope of -ln p_s against distance (d >= 1): the STP's own spatial decay rate,
to set beside the coupling's ``scale``.  Because activity also spreads over several
nearest-neighbour hops, the effective scale grows more slowly than ``scale`` once direct
long-range links are negligible.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import xarray as xr
from scipy.integrate import solve_ivp
from scipy.optimize import root

from neuro_sim.astro_rate import N_POST, N_PRE, N_SYN, distance_matrix, params_from_dict
from neuro_sim.astro_rate_scipy import N_STATE, _SLICES, make_rhs
from neuro_sim.errors import SimulationInputError
from neuro_sim.protocol import SegmentProtocol

#: The paper's sensitivity sweep of the attention's decay scale (SPEC 3).
PAPER_SCALES = (1.0, 2.0, 5.0, 10.0)
#: Hebbian drive of the source synapse: theta(1)^2, both neurons at the default burst level.
DEFAULT_HEBBIAN_DRIVE = float(np.tanh(1.0) ** 2)


def _attrs(long_name: str) -> dict[str, str]:
    return {"units": "1", "long_name": long_name}


def synapse_distances() -> np.ndarray:
    """The distinct distances between synapses on the 3 x 3 grid, ascending (0 included)."""
    return np.unique(np.round(distance_matrix(), 12))


def positional_decay(
    scales: Sequence[float] = PAPER_SCALES, distances: Sequence[float] | None = None
) -> xr.DataArray:
    """The attention's positional decay exp(-scale * d) on a (scale, distance) grid.

    RMAAT's astrocytic term uses r_ij = exp(-|pos_i - pos_j| * scale) (SPEC 3); ``distances``
    defaults to the synapse distances so the two can be compared point by point.
    """
    d = synapse_distances() if distances is None else np.asarray(distances, dtype=float)
    s = np.asarray(scales, dtype=float)
    return xr.DataArray(
        np.exp(-s[:, None] * d[None, :]),
        coords={"scale": s, "distance": d},
        dims=("scale", "distance"),
        name="attention_decay",
        attrs={"units": "1", "long_name": "attention positional decay exp(-scale * distance)"},
    )


def _stimulated_p_s(
    params: dict[str, float], source: int, drive: float, at: str, duration_s: float
) -> np.ndarray:
    """(N_SYN,) p_s after stimulating synapse ``source`` (see the module docstring)."""
    p = params_from_dict(params)
    extra = np.zeros(N_SYN)
    extra[source] = drive
    rhs = make_rhs(p, extra_hebbian=extra)
    silent = np.zeros(N_PRE)
    sol = solve_ivp(rhs, (0.0, duration_s), np.zeros(N_STATE), method="DOP853", rtol=1e-10, atol=1e-13,
                    args=(silent,))
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    y = sol.y[:, -1]
    if at == "steady_state":
        # p_l (slow, driven by s but not feeding back) is irrelevant to p_s: solve for the fast
        # states with p_l frozen.  The stable network has a unique stimulated fixed point.
        fast = slice(0, _SLICES["p_l"].start)

        def residual(z: np.ndarray) -> np.ndarray:
            return rhs(0.0, np.concatenate([z, y[_SLICES["p_l"]]]), silent)[fast]

        fixed = root(residual, y[fast], method="hybr", tol=1e-13)
        if not fixed.success:
            raise RuntimeError(f"fixed point not found: {fixed.message}")
        y = np.concatenate([fixed.x, y[_SLICES["p_l"]]])
    return y[_SLICES["p_s"]]


def spatial_response(
    scales: Sequence[float] = PAPER_SCALES,
    params: dict[str, float] | None = None,
    *,
    source: tuple[int, int] = (0, 0),
    hebbian_drive: float = DEFAULT_HEBBIAN_DRIVE,
    at: str = "burst_end",
    duration_s: float | None = None,
) -> xr.Dataset:
    """STP response p_s versus distance from one stimulated synapse, for each ``scale``.

    ``source`` is (post i, pre j); ``duration_s`` (default: the default protocol's burst,
    2 s) is the stimulation time for ``at="burst_end"`` and the run-in before the
    fixed-point solve for ``at="steady_state"``.  Returns dims (scale, distance) with
    ``p_s`` (mean over the synapses at that distance; NaN where the source sees none),
    ``p_s_relative`` (p_s / p_s at distance 1), the attention's ``attention_decay`` and
    ``attention_decay_relative`` = exp(-scale (d - 1)), ``p_s_grid`` (scale, post, pre)
    and ``effective_scale`` (scale).
    """
    base = {} if params is None else dict(params)
    if "scale" in base:
        raise SimulationInputError("pass the decay scale through `scales`, not params['scale']")
    if at not in ("burst_end", "steady_state"):
        raise SimulationInputError(f"at must be 'burst_end' or 'steady_state', got {at!r}")
    try:
        i, j = (int(k) for k in source)
    except (TypeError, ValueError):
        i = j = -1
    if not (0 <= i < N_POST and 0 <= j < N_PRE):
        raise SimulationInputError(f"source must be a (post, pre) pair of ints in 0..2, got {source!r}")
    if not isinstance(hebbian_drive, (int, float)) or not 0 < hebbian_drive <= 1:
        raise SimulationInputError(
            f"hebbian_drive must be in (0, 1] (a product of two tanh rates), got {hebbian_drive!r}"
        )
    duration = SegmentProtocol().burst_duration_s if duration_s is None else float(duration_s)
    if not duration > 0:
        raise SimulationInputError(f"duration_s must be > 0, got {duration_s}")
    scale_values = np.asarray(scales, dtype=float)
    if scale_values.ndim != 1 or len(scale_values) == 0:
        raise SimulationInputError("scales must be a non-empty sequence of numbers")

    src = N_PRE * i + j
    d_all = synapse_distances()
    d_src = np.round(distance_matrix()[src], 12)  # (N_SYN,)
    grid = np.stack([
        _stimulated_p_s({**base, "scale": float(s)}, src, hebbian_drive, at, duration) for s in scale_values
    ])  # (n_scale, N_SYN)
    by_distance = np.full((len(scale_values), len(d_all)), np.nan)
    counts = np.zeros(len(d_all), dtype=int)
    for k, d in enumerate(d_all):
        members = d_src == d
        counts[k] = members.sum()
        if counts[k]:
            by_distance[:, k] = grid[:, members].mean(axis=1)
    nearest = by_distance[:, list(d_all).index(1.0)][:, None]
    relative = by_distance / nearest
    far = (d_all >= 1.0) & (counts > 0)
    positive = np.all(by_distance[:, far] > 0, axis=1)  # coupling = 0 leaves the others at exactly 0
    with np.errstate(divide="ignore"):
        log_p = np.log(np.where(positive[:, None], by_distance[:, far], 1.0))
    slope = np.where(positive, np.polyfit(d_all[far], log_p.T, 1)[0], np.nan)  # (n_scale,)
    decay = positional_decay(scale_values, d_all)
    sd = ("scale", "distance")
    where = at.replace("_", " ")
    model_params = {k: v for k, v in params_from_dict(base).to_dict().items() if k != "scale"}
    ds = xr.Dataset(
        {
            "p_s": (sd, by_distance, _attrs(f"STP p_s at {where}, mean over the synapses at this distance")),
            "p_s_relative": (sd, relative, _attrs("p_s relative to its value at distance 1")),
            "attention_decay": decay.variable,
            "attention_decay_relative": (sd, np.exp(-scale_values[:, None] * (d_all[None, :] - 1.0)),
                                         _attrs("attention decay relative to distance 1, exp(-scale (d - 1))")),
            "effective_scale": (("scale",), -slope,
                                _attrs("least-squares decay rate of ln p_s with distance, d >= 1")),
            "n_synapses": (("distance",), counts, _attrs("synapses at this distance from the source")),
            "p_s_grid": (("scale", "post", "pre"), grid.reshape(len(scale_values), N_POST, N_PRE),
                         _attrs(f"STP p_s at {where} of every synapse on the (post, pre) grid")),
        },
        coords={
            "scale": ("scale", scale_values, _attrs("coupling decay scale (per grid unit)")),
            "distance": ("distance", d_all, _attrs("Euclidean synapse distance on the (post, pre) grid")),
            "post": ("post", np.arange(N_POST), _attrs("postsynaptic neuron i")),
            "pre": ("pre", np.arange(N_PRE), _attrs("presynaptic neuron j")),
        },
        attrs={
            "model": "astro_rate",
            "model_params": json.dumps(model_params, sort_keys=True),
            "source_synapse": json.dumps([i, j]),
            "hebbian_drive": float(hebbian_drive),
            "at": at,
            "duration_s": duration,
            "integrator": "scipy solve_ivp DOP853 rtol=1e-10 atol=1e-13",
        },
    )
    return ds
