"""``astro_rate``: the RMAAT / Kozachkov neuron–astrocyte rate network, written in Brian2.

The network of the RMAAT paper: 3 presynaptic neurons j, 3 postsynaptic neurons i and the
9 synapses (i, j) between them, each wrapped by an astrocytic process with a fast
short-term (STP) and a slow long-term (LTP) plasticity variable (SPEC section 2b; form of
Kozachkov, Kastanenka & Krotov, PNAS 2023)::

    tau_n  dx_j/dt    = -lam x_j + b_j(t)                                 presynaptic neurons
    tau_n  dx_i/dt    = -lam x_i + sum_j g(s_ij) theta(x_j)               postsynaptic neurons
    tau_s  ds_ij/dt   = -beta s_ij + theta(x_i) theta(x_j) + psi(p_s_ij)  synapses (Hebbian)
    tau_ps dp_s_ij/dt = -gamma_s p_s_ij + sum_kl T_ij,kl psi(p_s_kl) + kappa(s_ij)   STP
    tau_pl dp_l_ij/dt = -gamma_l p_l_ij + kappa(s_ij)                                LTP

    theta(x) = tanh(x)                      neuronal rate nonlinearity
    g(s)     = g_base + g_gain tanh(s)      synaptic efficacy: resting weight + Hebbian part
    psi(p)   = psi_gain tanh(p)             astrocyte -> synapse / astrocyte -> astrocyte
    kappa(s) = kappa_gain tanh(s)           synapse -> astrocyte (Ca2+ response to activity)

**Geometry.** Synapse (i, j) (post i, pre j) sits at grid point (i, j) of a 3 x 3 grid and has
the flat index ``n = 3 i + j``; the distance between synapses is Euclidean in (i, j), so
the distances present are 0, 1, sqrt 2, 2, sqrt 5 and sqrt 8.  The astrocytic coupling is
``K_nm = exp(-scale d_nm)`` for n != m (self-feedback is the -gamma_s p_s term, so K has a
zero diagonal) and ``T = coupling * K / max_n sum_m K_nm``.  **Normalisation:** T is
non-negative and symmetric, so its spectral radius is at most its largest row sum, which
this makes equal to ``coupling`` whatever ``scale`` is; one global factor keeps each link's
weight proportional to exp(-scale d), the shape compared with the attention's positional
decay in :mod:`neuro_sim.spatial`.

**Stability** (checked when :class:`AstroRateParams` is built): at rest every tanh has slope
1, and the linearised s <-> p_s loop on T's leading eigenvector (eigenvalue <= coupling) is
stable iff ``coupling < gamma_s`` and ``psi_gain kappa_gain < beta (gamma_s - coupling)``.
Away from rest the tanh slopes are below 1, which only lowers the loop gain (an argument,
not a proof; the tests check that the STP returns to rest within every segment).  All nonlinearities vanish at 0 and all
weights and drives are >= 0, so the origin is an exact fixed point (the network starts
at rest: no warm-up is needed and none is simulated) and the state stays >= 0 and below
:func:`state_bounds`.

**Protocol.** Segment s occupies [(s-1) P, s P) of :class:`~neuro_sim.protocol.SegmentProtocol`;
during each segment's burst window every presynaptic neuron j receives
``b_j = drive_weight_j * drive_per_hz * burst_rate_hz`` and nothing otherwise
(``stimulate=False``: never).  The protocol's ``n_synapses`` belongs to the tripartite model;
this network's size is fixed at 3 x 3 by the paper.  ``ltp_end(segment)`` is the mean p_l over
the 9 synapses at each segment's end.

**Brian2 layout.** Two NeuronGroups (pre, post); the 9 synapses are a Brian2 ``Synapses``
object whose clock-driven equations hold s, p_s and p_l and whose summed variable is the
postsynaptic input; T is a 9 x 9 ``Synapses`` from that object onto itself with a summed
variable.  The drive is a function of the integer time step, so it is constant over each
step and switches exactly on the burst edges (which must be whole steps).  Brian2 integrates
each group with RK4 but sees the other groups' variables as constant during a step, so the
coupling is first order in dt; see ``DEFAULT_DT_S`` and the agreement test with
:mod:`neuro_sim.astro_rate_scipy`.  The code-generation target (numpy, cython,
cpp_standalone) and its cache come from :mod:`neuro_sim.codegen`; everything is recorded by
monitors and read after the run, so the standalone mode works unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import xarray as xr

from neuro_sim import codegen as brian_codegen
from neuro_sim.errors import SimulationInputError
from neuro_sim.protocol import SegmentProtocol

N_PRE = 3  # presynaptic neurons (paper)
N_POST = 3  # postsynaptic neurons (paper)
N_SYN = N_PRE * N_POST  # synapses (post i, pre j), flat index n = 3 i + j

#: Default integration step.  RK4 within a group is accurate far below this (dt/tau_n = 0.1);
#: what remains is Brian2's first-order inter-group coupling, measured at 3e-4 of the LTP
#: level against SciPy (see tests/test_astro_rate.py).
DEFAULT_DT_S = 2e-3
#: Target spacing of the downsampled traces (the actual spacing divides the segment period).
TRACE_DT_S = 0.05


def _p(default: float, unit: str, doc: str) -> float:
    """A parameter field: ``unit`` is the SI unit ("1" = dimensionless), ``doc`` its source."""
    return field(default=default, metadata={"unit": unit, "doc": doc})


@dataclass(frozen=True)
class AstroRateParams:
    """Every number of the ``astro_rate`` model, in SI units, with its source.

    The paper (RMAAT; Kozachkov et al. PNAS 2023 for the form) leaves time constants,
    nonlinearities and drive open (SPEC 2b, **[open]**): the values are this project's
    choices, picked so that one segment (10 s, 2 s burst) holds one complete STP cycle and
    the LTP integrates over ~5 segments and saturates by ~16 (96 % of its ceiling).  At rest
    the slowest STP mode relaxes with a time constant of 1.1 s (linearisation), so less
    than 1e-3 of the STP peak is left at a segment's end.
    """

    # time constants
    tau_n: float = _p(0.02, "s", "neuron rate time constant, the 10-20 ms membrane scale "
                                 "(Dayan & Abbott 2001); choice")
    tau_s: float = _p(0.2, "s", "Hebbian synaptic trace, a fast weight 10x slower than the neurons; choice")
    tau_ps: float = _p(0.5, "s", "astrocyte STP: process Ca2+ transients last ~0.5-2 s; fast enough to "
                                 "relax within one segment; choice")
    tau_pl: float = _p(50.0, "s", "astrocyte LTP: tau_pl/gamma_l = 50 s = 5 segments of 10 s, per-segment "
                                  "retention exp(-0.2) as in the tripartite model (SPEC 2a); choice")
    # leaks (Kozachkov et al. 2023 write lambda, beta, gamma; unit values fix the scale of each variable)
    lam: float = _p(1.0, "1", "neuron leak lambda (Kozachkov et al. 2023)")
    beta: float = _p(1.0, "1", "synaptic decay beta (Kozachkov et al. 2023)")
    gamma_s: float = _p(1.0, "1", "STP decay gamma (Kozachkov et al. 2023)")
    gamma_l: float = _p(1.0, "1", "LTP decay; p_l < kappa_gain/gamma_l; choice")
    # nonlinearities theta(x) = tanh(x), g(s) = g_base + g_gain tanh(s), psi, kappa
    g_base: float = _p(0.5, "1", "resting synaptic efficacy g(0); lets the first burst reach the post "
                                 "neurons (with g(0) = 0 the Hebbian term could never start); choice")
    g_gain: float = _p(0.5, "1", "Hebbian part of g(s) = g_base + g_gain tanh(s); choice")
    psi_gain: float = _p(0.25, "1", "astrocyte output psi(p) = psi_gain tanh(p); loop gain "
                                    "psi_gain*kappa_gain = 1/3 of the stability bound; choice")
    kappa_gain: float = _p(1.0, "1", "astrocyte input kappa(s) = kappa_gain tanh(s); choice")
    # astrocytic coupling T
    coupling: float = _p(0.25, "1", "largest row sum of T, which bounds its spectral radius; choice")
    scale: float = _p(2.0, "1", "decay of T with synapse distance (per grid unit); 2.0 is the value the "
                                "paper found robust for the attention's decay scale")
    # drive
    drive_per_hz: float = _p(0.05, "s", "burst drive per presynaptic rate: b = 1 at 20 Hz, where "
                                        "theta(1) = 0.76 is not saturated; choice")
    drive_weight_0: float = _p(1.0, "1", "relative drive of presynaptic neuron 0; unequal weights make the "
                                         "synapses differ, so T's spatial structure matters; choice")
    drive_weight_1: float = _p(0.75, "1", "relative drive of presynaptic neuron 1; choice")
    drive_weight_2: float = _p(0.5, "1", "relative drive of presynaptic neuron 2; choice")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SimulationInputError(f"astro_rate parameter {f.name} must be a finite number, got {value!r}")
        for name in ("tau_n", "tau_s", "tau_ps", "tau_pl", "lam", "beta", "gamma_s", "gamma_l"):
            if getattr(self, name) <= 0:
                raise SimulationInputError(f"astro_rate parameter {name} must be > 0, got {getattr(self, name)}")
        for name in ("g_base", "g_gain", "psi_gain", "kappa_gain", "coupling", "scale", "drive_per_hz",
                     "drive_weight_0", "drive_weight_1", "drive_weight_2"):
            if getattr(self, name) < 0:
                raise SimulationInputError(
                    f"astro_rate parameter {name} must be >= 0 (weights and drives are excitatory), "
                    f"got {getattr(self, name)}"
                )
        if self.coupling >= self.gamma_s:
            raise SimulationInputError(
                f"coupling ({self.coupling}) must be < gamma_s ({self.gamma_s}) or the astrocytic "
                "coupling never returns to rest; lower coupling"
            )
        margin = self.beta * (self.gamma_s - self.coupling)
        if self.psi_gain * self.kappa_gain >= margin:
            raise SimulationInputError(
                f"psi_gain*kappa_gain ({self.psi_gain * self.kappa_gain:g}) must be < "
                f"beta*(gamma_s - coupling) ({margin:g}) for the synapse-astrocyte loop to be "
                "stable; lower psi_gain or kappa_gain"
            )

    @property
    def drive_weights(self) -> np.ndarray:
        """(N_PRE,) relative drive of each presynaptic neuron."""
        return np.array([self.drive_weight_0, self.drive_weight_1, self.drive_weight_2])

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def parameter_units() -> dict[str, str]:
    """SI unit of every parameter ("1" = dimensionless)."""
    return {f.name: f.metadata["unit"] for f in fields(AstroRateParams)}


def default_params() -> dict[str, float]:
    """The default parameter block as SI floats."""
    return AstroRateParams().to_dict()


def params_from_dict(params: dict[str, float] | None) -> AstroRateParams:
    """Defaults overridden by ``params``; unknown names or impossible values raise."""
    if params is None:
        return AstroRateParams()
    known = set(parameter_units())
    unknown = sorted(set(params) - known)
    if unknown:
        raise SimulationInputError(
            f"unknown astro_rate parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values = {}
    for name, value in params.items():
        if isinstance(value, bool):
            raise SimulationInputError(f"astro_rate parameter {name} must be a number, got {value!r}")
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            raise SimulationInputError(f"astro_rate parameter {name} must be a number, got {value!r}") from None
    return AstroRateParams(**values)


# ---------------------------------------------------------------- geometry and drive


def synapse_grid() -> tuple[np.ndarray, np.ndarray]:
    """(post index i, pre index j) of each synapse, both (N_SYN,), flat index n = 3 i + j."""
    n = np.arange(N_SYN)
    return n // N_PRE, n % N_PRE


def distance_matrix() -> np.ndarray:
    """(N_SYN, N_SYN) Euclidean distance between synapses on the (post i, pre j) grid."""
    post, pre = synapse_grid()
    return np.hypot(post[:, None] - post[None, :], pre[:, None] - pre[None, :])


def coupling_matrix(p: AstroRateParams) -> np.ndarray:
    """(N_SYN, N_SYN) T: exp(-scale d) off the diagonal, largest row sum = ``coupling``."""
    k = np.exp(-p.scale * distance_matrix())
    np.fill_diagonal(k, 0.0)
    return p.coupling * k / k.sum(axis=1).max()


def burst_drive(p: AstroRateParams, protocol: SegmentProtocol) -> np.ndarray:
    """(N_PRE,) drive b_j of the presynaptic neurons inside a burst window (0 if unstimulated)."""
    amplitude = p.drive_per_hz * protocol.burst_rate_hz if protocol.stimulate else 0.0
    return amplitude * p.drive_weights


def state_bounds(p: AstroRateParams, protocol: SegmentProtocol) -> dict[str, float]:
    """Upper bounds of each state variable (all are >= 0), from the bounded nonlinearities.

    x_pre < max b / lam; x_post < N_PRE (g_base + g_gain) / lam; s < (1 + psi_gain) / beta;
    p_s < (coupling psi_gain + kappa_gain) / gamma_s; p_l < kappa_gain / gamma_l.
    """
    b_max = float(burst_drive(p, protocol).max()) if protocol.stimulate else 0.0
    return {
        "x_pre": b_max / p.lam,
        "x_post": N_PRE * (p.g_base + p.g_gain) / p.lam,
        "s": (1.0 + p.psi_gain) / p.beta,
        "p_s": (p.coupling * p.psi_gain + p.kappa_gain) / p.gamma_s,
        "p_l": p.kappa_gain / p.gamma_l,
    }


# ---------------------------------------------------------------- time grid


def steps_of(duration_s: float, dt_s: float, what: str) -> int:
    """``duration_s`` as a whole number of steps of ``dt_s``, or a SimulationInputError."""
    steps = round(duration_s / dt_s)
    if abs(steps * dt_s - duration_s) > 1e-9 * max(1.0, duration_s):
        raise SimulationInputError(
            f"{what} ({duration_s} s) is not a whole number of time steps of {dt_s} s; "
            "choose dt_s that divides the segment period and the burst duration"
        )
    return steps


def trace_every_steps(protocol: SegmentProtocol, dt_s: float) -> int:
    """Trace sampling interval in steps: the largest divisor of the steps per segment with
    interval <= TRACE_DT_S, so that every segment end is a trace sample."""
    per_segment = steps_of(protocol.segment_period_s, dt_s, "segment_period_s")
    best = 1
    for k in range(1, per_segment + 1):
        if k * dt_s > TRACE_DT_S * (1 + 1e-9):
            break
        if per_segment % k == 0:
            best = k
    return best


def check_dt(dt_s: float | None, protocol: SegmentProtocol, p: AstroRateParams) -> float:
    """Validated integration step (default ``DEFAULT_DT_S``): burst edges must fall on steps."""
    dt = DEFAULT_DT_S if dt_s is None else dt_s
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise SimulationInputError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
    if dt > 0.25 * min(p.tau_n, p.tau_s, p.tau_ps):
        # RK4 would still be stable, but the inter-group coupling error grows with dt/tau_n.
        raise SimulationInputError(
            f"dt_s = {dt} s is too coarse: it must be <= 1/4 of the fastest time constant "
            f"({min(p.tau_n, p.tau_s, p.tau_ps)} s)"
        )
    steps_of(protocol.segment_period_s, dt, "segment_period_s")
    steps_of(protocol.burst_duration_s, dt, "burst_duration_s")
    return float(dt)


# ---------------------------------------------------------------- output


def _attrs(units: str, long_name: str) -> dict[str, str]:
    return {"units": units, "long_name": long_name}


def build_dataset(
    time_s: np.ndarray,
    states: dict[str, np.ndarray],
    protocol: SegmentProtocol,
    p: AstroRateParams,
    attrs: dict[str, object],
) -> xr.Dataset:
    """The saturation-curve Dataset shared by the Brian2 and SciPy integrations.

    ``time_s`` is (n_t,) and must contain every segment end; ``states`` holds ``x_pre``
    (n_t, N_PRE), ``x_post`` (n_t, N_POST) and ``s``, ``p_s``, ``p_l`` (n_t, N_SYN).
    """
    post, pre = synapse_grid()
    ends = np.asarray(protocol.segment_end_times_s())
    idx = np.searchsorted(time_s, ends - 1e-9 * protocol.segment_period_s)
    if np.any(idx >= len(time_s)) or not np.allclose(time_s[idx], ends, atol=1e-9):
        raise AssertionError("trace grid misses a segment end")  # internal invariant, not a user error
    p_l_end = states["p_l"][idx]  # (n_seg, N_SYN)
    one = "1"  # every state variable is dimensionless
    t, ts = ("time",), ("time", "synapse")
    x_all = np.concatenate([states["x_pre"], states["x_post"]], axis=1)  # (n_t, 6)
    data = {
        "ltp_end": (("segment",), p_l_end.mean(axis=1),
                    _attrs(one, "end-of-segment LTP p_l, mean over the 9 synapses")),
        "p_l_end": (("segment", "synapse"), p_l_end, _attrs(one, "end-of-segment LTP p_l per synapse")),
        "x_pre": (("time", "pre_neuron"), states["x_pre"], _attrs(one, "presynaptic neuron state x_j")),
        "x_post": (("time", "post_neuron"), states["x_post"], _attrs(one, "postsynaptic neuron state x_i")),
        "s": (ts, states["s"], _attrs(one, "Hebbian synaptic variable s_ij")),
        "p_s": (ts, states["p_s"], _attrs(one, "astrocyte STP variable p_s_ij")),
        "p_l": (ts, states["p_l"], _attrs(one, "astrocyte LTP variable p_l_ij")),
        "x_mean": (t, x_all.mean(axis=1), _attrs(one, "neuron state x, mean over the 6 neurons")),
        "s_mean": (t, states["s"].mean(axis=1), _attrs(one, "Hebbian synaptic variable s, mean over synapses")),
        "p_s_mean": (t, states["p_s"].mean(axis=1), _attrs(one, "astrocyte STP p_s, mean over synapses")),
        "p_l_mean": (t, states["p_l"].mean(axis=1), _attrs(one, "astrocyte LTP p_l, mean over synapses")),
    }
    coords = {
        "time": ("time", time_s, _attrs("s", "time since the start of segment 1")),
        "segment": ("segment", np.arange(1, protocol.n_segments + 1), _attrs(one, "segment index")),
        "segment_end_s": ("segment", ends, _attrs("s", "end time of the segment")),
        "synapse": ("synapse", np.arange(N_SYN), _attrs(one, "synapse index n = 3*post + pre")),
        "syn_post": ("synapse", post, _attrs(one, "postsynaptic neuron i of the synapse")),
        "syn_pre": ("synapse", pre, _attrs(one, "presynaptic neuron j of the synapse")),
        "pre_neuron": ("pre_neuron", np.arange(N_PRE), _attrs(one, "presynaptic neuron index j")),
        "post_neuron": ("post_neuron", np.arange(N_POST), _attrs(one, "postsynaptic neuron index i")),
    }
    base = {
        "model": "astro_rate",
        "model_params": p.to_json(),
        "model_param_units": json.dumps(parameter_units(), sort_keys=True),
        "protocol": protocol.to_json(),
        "warmup_simulated_s": 0.0,  # the network starts at its rest state (an exact fixed point)
    }
    return xr.Dataset(data, coords=coords, attrs={**base, **attrs})


# ---------------------------------------------------------------- Brian2


def _brian2_objects(p: AstroRateParams, protocol: SegmentProtocol, dt_s: float):
    """The Brian2 network (pre, post, synapses, astrocytic coupling) and its namespace."""
    import brian2 as b2

    # One named clock: automatically numbered clocks would change the generated code from
    # run to run in one process and force cpp_standalone to recompile.
    clock = b2.Clock(dt=dt_s * b2.second, name="astro_rate_clock")
    pre = b2.NeuronGroup(
        N_PRE,
        """
        dx/dt = (-lam*x + b)/tau_n : 1
        b = b_burst * int((t_in_timesteps % steps_period) < steps_burst) : 1
        b_burst : 1 (constant)
        """,
        method="rk4", clock=clock, name="pre",
    )
    post = b2.NeuronGroup(
        N_POST, "dx/dt = (-lam*x + I_syn)/tau_n : 1\nI_syn : 1", method="rk4", clock=clock, name="post"
    )
    syn = b2.Synapses(
        pre, post,
        """
        ds/dt = (-beta*s + tanh(x_post)*tanh(x_pre) + psi_gain*tanh(p_s))/tau_s : 1 (clock-driven)
        dp_s/dt = (-gamma_s*p_s + astro_in + kappa_gain*tanh(s))/tau_ps : 1 (clock-driven)
        dp_l/dt = (-gamma_l*p_l + kappa_gain*tanh(s))/tau_pl : 1 (clock-driven)
        astro_in : 1
        I_syn_post = (g_base + g_gain*tanh(s))*tanh(x_pre) : 1 (summed)
        """,
        method="rk4", clock=clock, name="synapses",
    )
    post_idx, pre_idx = synapse_grid()
    syn.connect(i=pre_idx, j=post_idx)  # Brian2 i = source (pre j), j = target (post i); order = n
    T = coupling_matrix(p)  # (target n, source m)
    target, source = np.nonzero(~np.eye(N_SYN, dtype=bool))
    astro = b2.Synapses(
        syn, syn,
        "w_T : 1 (constant)\nastro_in_post = w_T*psi_gain*tanh(p_s_pre) : 1 (summed)",
        clock=clock, name="astro_coupling",
    )
    astro.connect(i=source, j=target)
    astro.w_T = T[target, source]
    pre.b_burst = burst_drive(p, protocol)
    namespace = {
        "tau_n": p.tau_n * b2.second, "tau_s": p.tau_s * b2.second,
        "tau_ps": p.tau_ps * b2.second, "tau_pl": p.tau_pl * b2.second,
        "lam": p.lam, "beta": p.beta, "gamma_s": p.gamma_s, "gamma_l": p.gamma_l,
        "g_base": p.g_base, "g_gain": p.g_gain, "psi_gain": p.psi_gain, "kappa_gain": p.kappa_gain,
        "steps_period": steps_of(protocol.segment_period_s, dt_s, "segment_period_s"),
        "steps_burst": steps_of(protocol.burst_duration_s, dt_s, "burst_duration_s"),
    }
    return pre, post, syn, astro, namespace


def run(
    protocol: SegmentProtocol,
    params: dict[str, float] | None = None,
    *,
    codegen: str = "auto",
    dt_s: float | None = None,
    progress: bool = False,
    seed: int = 0,
) -> xr.Dataset:
    """Simulate the protocol with Brian2 and return the saturation-curve Dataset.

    ``seed`` is recorded only: the model is deterministic.  ``progress`` prints Brian2's
    progress report to stderr.  Raises SimulationInputError on bad parameters or a
    ``dt_s`` that does not divide the segment period and burst duration.
    """
    p = params_from_dict(params)
    dt = check_dt(dt_s, protocol, p)
    every = trace_every_steps(protocol, dt)
    brian_codegen.validate_codegen(codegen)
    import brian2 as b2

    with brian_codegen.session(codegen, "astro_rate") as session:
        pre, post, syn, astro, namespace = _brian2_objects(p, protocol, dt)
        trace_clock = b2.Clock(dt=every * dt * b2.second, name="astro_rate_trace_clock")
        mon_pre = b2.StateMonitor(pre, "x", record=True, clock=trace_clock, name="mon_pre")
        mon_post = b2.StateMonitor(post, "x", record=True, clock=trace_clock, name="mon_post")
        mon_syn = b2.StateMonitor(syn, ["s", "p_s", "p_l"], record=True, clock=trace_clock, name="mon_syn")
        net = b2.Network(pre, post, syn, astro, mon_pre, mon_post, mon_syn)
        # One extra step: the start-of-step monitors then also record the last segment's end.
        net.run((protocol.duration_s + dt) * b2.second, namespace=namespace,
                report="stderr" if progress else None)
        session.finish()  # builds and runs the program in cpp_standalone mode; no-op otherwise
        time_s = np.asarray(mon_syn.t / b2.second)
        keep = time_s <= protocol.duration_s + 0.5 * dt
        states = {  # Brian2 monitors are (variable index, time): transpose to (time, index)
            "x_pre": np.asarray(mon_pre.x).T[keep],
            "x_post": np.asarray(mon_post.x).T[keep],
            "s": np.asarray(mon_syn.s).T[keep],
            "p_s": np.asarray(mon_syn.p_s).T[keep],
            "p_l": np.asarray(mon_syn.p_l).T[keep],
        }
        target = session.target
    attrs = {
        "integrator": "brian2 rk4 per group (inter-group coupling first order in dt)",
        "codegen": target, "dt_s": dt, "trace_dt_s": every * dt, "seed": int(seed),
        "brian2_version": brian_codegen.brian2_version(),
    }
    return build_dataset(time_s[keep], states, protocol, p, attrs)
