"""``astro_rate`` integrated with SciPy's ``solve_ivp``: the independent check of the Brian2 run.

The right-hand side is written here a second time, in NumPy, from the same
:class:`~neuro_sim.astro_rate.AstroRateParams` block, coupling matrix and drive as the
Brian2 model (no number is copied), so an agreement between the two integrations checks
both the equations and Brian2's integration.  Unlike Brian2, which sees the other groups'
variables as constant during a step, the solver integrates the 33 coupled ODEs jointly
with an adaptive 8th-order method (DOP853) at tight tolerances.  The drive is piecewise
constant, so the integration runs window by window (burst, then rest, for every segment):
no step straddles a burst edge.

State vector layout, 33 entries: x_pre (3) | x_post (3) | s (9) | p_s (9) | p_l (9), synapse
arrays in the flat order n = 3 i + j (post i, pre j), i.e. row-major (N_POST, N_PRE) grids.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy
import xarray as xr
from scipy.integrate import solve_ivp

from neuro_sim.astro_rate import (
    DEFAULT_DT_S,
    N_POST,
    N_PRE,
    N_SYN,
    TRACE_DT_S,
    AstroRateParams,
    build_dataset,
    burst_drive,
    check_dt,
    coupling_matrix,
    params_from_dict,
    trace_every_steps,
)
from neuro_sim.errors import SimulationInputError
from neuro_sim.protocol import SegmentProtocol

#: Default solver tolerances: far below the Brian2 discretisation error they are compared with.
RTOL = 1e-9
ATOL = 1e-12

_SLICES = {
    "x_pre": slice(0, N_PRE),
    "x_post": slice(N_PRE, N_PRE + N_POST),
    "s": slice(6, 6 + N_SYN),
    "p_s": slice(6 + N_SYN, 6 + 2 * N_SYN),
    "p_l": slice(6 + 2 * N_SYN, 6 + 3 * N_SYN),
}
N_STATE = 6 + 3 * N_SYN


def make_rhs(
    p: AstroRateParams, extra_hebbian: np.ndarray | None = None
) -> Callable[[float, np.ndarray, np.ndarray], np.ndarray]:
    """Right-hand side ``f(t, y, b)`` of the network with presynaptic drive ``b`` (N_PRE,).

    ``extra_hebbian`` (N_SYN,) is added to the Hebbian term theta(x_i) theta(x_j) of each
    synapse: :mod:`neuro_sim.spatial` uses it to stimulate a single synapse.
    """
    T = coupling_matrix(p)  # (N_SYN, N_SYN), row = receiving synapse
    extra = np.zeros((N_POST, N_PRE)) if extra_hebbian is None else np.reshape(extra_hebbian, (N_POST, N_PRE))

    def rhs(t: float, y: np.ndarray, b: np.ndarray) -> np.ndarray:
        x_pre, x_post = y[_SLICES["x_pre"]], y[_SLICES["x_post"]]
        s = y[_SLICES["s"]].reshape(N_POST, N_PRE)  # (i, j)
        p_s = y[_SLICES["p_s"]]
        p_l = y[_SLICES["p_l"]].reshape(N_POST, N_PRE)
        r_pre, r_post = np.tanh(x_pre), np.tanh(x_post)  # theta
        g = p.g_base + p.g_gain * np.tanh(s)  # (i, j)
        kappa = p.kappa_gain * np.tanh(s)  # (i, j)
        psi = p.psi_gain * np.tanh(p_s)  # (n,)
        dy = np.empty_like(y)
        dy[_SLICES["x_pre"]] = (-p.lam * x_pre + b) / p.tau_n
        dy[_SLICES["x_post"]] = (-p.lam * x_post + g @ r_pre) / p.tau_n
        ds = (-p.beta * s + np.outer(r_post, r_pre) + extra + psi.reshape(N_POST, N_PRE)) / p.tau_s
        dy[_SLICES["s"]] = ds.ravel()
        dy[_SLICES["p_s"]] = (-p.gamma_s * p_s + T @ psi + kappa.ravel()) / p.tau_ps
        dy[_SLICES["p_l"]] = ((-p.gamma_l * p_l + kappa) / p.tau_pl).ravel()
        return dy

    return rhs


def drive_windows(protocol: SegmentProtocol, p: AstroRateParams) -> list[tuple[float, float, np.ndarray]]:
    """(start, end, drive b (N_PRE,)) of every constant-drive window, in time order."""
    on, off = burst_drive(p, protocol), np.zeros(N_PRE)
    windows = []
    for start in np.arange(protocol.n_segments) * protocol.segment_period_s:
        edge = start + protocol.burst_duration_s
        end = start + protocol.segment_period_s
        if protocol.burst_duration_s > 0:
            windows.append((float(start), float(edge), on))
        if edge < end:
            windows.append((float(edge), float(end), off))
    return windows


def _default_trace_dt(protocol: SegmentProtocol, p: AstroRateParams) -> float:
    """The Brian2 run's trace spacing at its default dt, or ~TRACE_DT_S if that dt does not fit."""
    try:
        dt = check_dt(DEFAULT_DT_S, protocol, p)
    except SimulationInputError:
        return protocol.segment_period_s / math.ceil(protocol.segment_period_s / TRACE_DT_S)
    return trace_every_steps(protocol, dt) * dt


def run(
    protocol: SegmentProtocol,
    params: dict[str, float] | None = None,
    *,
    trace_dt_s: float | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> xr.Dataset:
    """Integrate the protocol with ``solve_ivp`` and return the same Dataset layout as Brian2.

    Traces are sampled every ``trace_dt_s`` seconds (default: the Brian2 run's spacing at
    its default dt), which must divide the segment period; values between solver steps
    come from DOP853's dense output (7th order).
    """
    p = params_from_dict(params)
    if trace_dt_s is None:
        trace_dt_s = _default_trace_dt(protocol, p)
    if not trace_dt_s > 0:
        raise SimulationInputError(f"trace_dt_s must be > 0, got {trace_dt_s}")
    per_segment = round(protocol.segment_period_s / trace_dt_s)
    mismatch = abs(per_segment * trace_dt_s - protocol.segment_period_s)
    if per_segment < 1 or mismatch > 1e-9 * protocol.segment_period_s:
        raise SimulationInputError(f"trace_dt_s ({trace_dt_s}) must divide the segment period")
    time_s = np.arange(protocol.n_segments * per_segment + 1) * (protocol.segment_period_s / per_segment)

    rhs = make_rhs(p)
    y = np.zeros(N_STATE)  # the rest state (an exact fixed point)
    out = np.zeros((len(time_s), N_STATE))
    filled = np.zeros(len(time_s), dtype=bool)
    for start, end, b in drive_windows(protocol, p):
        inside = (time_s >= start - 1e-9) & (time_s <= end + 1e-9)
        sol = solve_ivp(rhs, (start, end), y, method="DOP853", rtol=rtol, atol=atol,
                        args=(b,), dense_output=True)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed on [{start}, {end}] s: {sol.message}")
        out[inside] = sol.sol(np.clip(time_s[inside], start, end)).T
        y = sol.y[:, -1]
        out[np.abs(time_s - end) <= 1e-9] = y  # window ends (segment ends included) exactly
        filled |= inside
    if not filled.all():
        raise AssertionError("trace grid not covered by the drive windows")  # internal invariant
    states = {name: out[:, sl] for name, sl in _SLICES.items()}
    attrs = {
        "integrator": f"scipy solve_ivp DOP853 rtol={rtol:g} atol={atol:g}, window by window",
        "codegen": "scipy", "trace_dt_s": float(time_s[1] - time_s[0]), "scipy_version": scipy.__version__,
    }
    return build_dataset(time_s, states, protocol, p, attrs)
