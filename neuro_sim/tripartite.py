"""Tripartite synapse: Tsodyks-Markram synapses, a G-ChI astrocyte and the LTP trace Gamma_S.

The model of De Pittà et al. (2009, 2011) as written for Brian2 by Stimberg, Goodman,
Brette & De Pittà (2019, eLife 8:e48773; ``examples/frompapers/Stimberg_et_al_2018``):

- ``n_synapses`` Tsodyks-Markram synapses (u_S, x_S, r_S) release glutamate into the
  extracellular space of one astrocyte's domain (Y_S);
- the astrocyte's receptors (Gamma_A) drive IP3 production (I), which drives Ca2+-induced
  Ca2+ release (C, h) - the G-ChI model;
- when C crosses C_Theta the astrocyte releases gliotransmitter (G_A, resources x_A);
- gliotransmitter activates presynaptic receptors, Gamma_S, the slow LTP trace::

      dGamma_S/dt = O_G * G_A * (1 - Gamma_S) - Omega_G * Gamma_S       (tau = 1/Omega_G = 120 s)
      U_0 = (1 - Gamma_S) * U_0_star + alpha * Gamma_S                  (alpha = 1: potentiating)

Choices (SPEC section 2) and why:

- **Exact gliotransmitter jump.**  G_A decays in 1/Omega_e = 17 ms, under-resolved by an
  astrocyte step of several ms (even a 1 ms step holding G_A fixed over the step
  over-estimates its integral by ~3 %).  G_A after a release is known in closed form,
  G_A(t) = dG exp(-Omega_e t) with dG = rho_e G_T U_A x_A, and its effect on Gamma_S over
  the pulse is exact: 1 - Gamma_S is multiplied by exp(-O_G dG / Omega_e), i.e.
  ``Gamma_S += (1 - Gamma_S) * a``, a = 1 - exp(-O_G rho_e G_T U_A x_A / Omega_e).  The
  neglected Omega_G decay during the pulse is Omega_G/Omega_e ~ 1e-4 relative.  So the
  release (Brian2 "reset") applies the jump and Gamma_S otherwise only decays; G_A is
  kept as a trace variable.  This makes the curve independent of how finely G_A is
  resolved and lets the whole network run at ``dt = 5 ms`` (see DEFAULT_DT_S).
- **One domain, shared Gamma_S.**  All synapses of the domain see the same G_A, so their
  Gamma_S are identical: it is stored once, in the astrocyte group, and the synapses
  read it at each spike.  The astrocyte's receptors see the extracellular glutamate
  averaged over its synapses (Y_S, the ``Y_S_pre/N_incoming`` coupling of Stimberg et
  al.'s Fig. 6), which the synapses add to directly: the postsynaptic neurons play no
  part in this loop and are omitted, as in their Fig. 3-4 examples.  (Summing instead of
  averaging makes glutamate binding, O_N*Y_S ~ 3000/s, too stiff for an explicit step.)
- **O_G = 0.1 /uM/s** (examples: 1.5).  With 1.5 one release drives Gamma_S to ~0.86:
  the trace saturates within one segment and carries no multi-segment memory.  0.1
  spreads integration over ~5 segments (per-release gain a ~ 0.12).
- **O_beta = 3.2 uM/s**, the value of Stimberg et al.'s Fig. 4 (their Fig. 6 uses 0.5).
  With 20 synapses bursting at 20 Hz for 2 s, every value tried in [1.0, 3.2] uM/s makes
  each burst trigger exactly one Ca2+ event, phase-locked ~4.8 s into the segment (from
  the second segment on); 0.8 gives two events in some segments, 4.8 a period-3 drift
  of the event phase that makes the curve non-monotone.
- Initial state as in Stimberg et al.'s Fig. 6 (C = I = 0.01 uM, h = 0.9, x_A = 1).  From
  it the astrocyte fires once on its own (~17 s); the protocol's no-input warm-up runs
  past it and Gamma_S is then reset to 0, so "no stimulation => no LTP" holds.

With the defaults the end-of-segment Gamma_S is 0.113, 0.206, 0.282, 0.344, ..., 0.587
(segment 16), ... 0.607 (segment 32); successive increments shrink by ~0.81 per segment
(SPEC section 2; tested in tests/test_tripartite.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import xarray as xr

from neuro_sim.errors import SimulationInputError
from neuro_sim.protocol import SegmentProtocol

MODEL_NAME = "tripartite"
#: Integration step.  5 ms resolves every retained time scale (fastest: glutamate
#: clearance, 25 ms; Ca2+ rise ~100 ms).  Measured over 32 segments, steps of 1, 2.5 and
#: 10 ms give the same curve to < 1e-4 relative: with the exact release jump only the
#: ms-scale timing of each release depends on the step.  (The examples use 1 ms for the
#: synapses and 10 ms for the astrocytes.)
DEFAULT_DT_S = 5e-3
#: Target spacing of the downsampled traces in the output Dataset.
TRACE_DT_S = 0.05

# SI helpers: parameters are stored as SI floats (concentrations in mol/m^3 = mM).
uM = 1e-3
mM = 1.0
second = 1.0


def _p(value: float, unit: str, kind: str = "nonneg") -> float:
    """A parameter field: SI value, Brian2 unit expression, allowed range kind."""
    return field(default=value, metadata={"unit": unit, "kind": kind})


@dataclass(frozen=True)
class TripartiteParams:
    """Every parameter of the tripartite model, as SI floats (units in the metadata).

    Sources: [DP11] De Pittà et al. 2011, Front. Comput. Neurosci. 5:5 (synapse and
    presynaptic receptors); [DP09] De Pittà et al. 2009, J. Biol. Phys. 35:383 (G-ChI
    astrocyte); [ST19] Stimberg et al. 2019 eLife, Brian2 examples Fig. 3/4/6 (values as
    used there); [here] chosen in this project (see the module docstring).
    ``kind``: ``nonneg`` >= 0, ``positive`` > 0, ``fraction`` in [0, 1].
    """

    # --- Tsodyks-Markram synapses [DP11 Table 1; ST19 Fig. 3]
    rho_c: float = _p(0.005, "1", "fraction")  # synaptic vesicle-to-extracellular volume ratio
    Y_T: float = _p(500 * mM, "mmolar")  # total vesicular glutamate
    Omega_c: float = _p(40 / second, "1/second")  # glutamate clearance rate
    U_0_star: float = _p(0.6, "1", "fraction")  # resting release probability
    Omega_f: float = _p(3.33 / second, "1/second")  # facilitation (u_S decay) rate
    Omega_d: float = _p(2.0 / second, "1/second")  # depression (x_S recovery) rate
    # --- Presynaptic receptors: the LTP trace Gamma_S [DP11; ST19]
    O_G: float = _p(0.1 / uM / second, "1/(umolar*second)")  # agonist binding rate [here; ST19: 1.5]
    Omega_G: float = _p(0.5 / (60 * second), "1/second")  # agonist unbinding rate (tau 120 s)
    alpha: float = _p(1.0, "1", "fraction")  # gliotransmission nature: 1 = potentiating [here; ST19: 0]
    # --- Astrocyte receptors Gamma_A [DP09; ST19 Fig. 4/6]
    O_N: float = _p(0.3 / uM / second, "1/(umolar*second)")  # glutamate binding rate
    Omega_N: float = _p(0.5 / second, "1/second")  # maximal receptor inactivation rate
    K_KC: float = _p(0.5 * uM, "umolar", "positive")  # Ca2+ affinity of PKC
    zeta: float = _p(10.0, "1")  # maximal reduction of receptor affinity by PKC
    # --- IP3 production and degradation [DP09; ST19 Fig. 4]
    O_beta: float = _p(3.2 * uM / second, "umolar/second")  # PLCbeta max rate [ST19 Fig. 4]
    O_delta: float = _p(0.6 * uM / second, "umolar/second")  # PLCdelta max rate
    kappa_delta: float = _p(1.5 * uM, "umolar", "positive")  # PLCdelta inhibition by IP3
    K_delta: float = _p(0.1 * uM, "umolar", "positive")  # Ca2+ affinity of PLCdelta
    Omega_5P: float = _p(0.05 / second, "1/second")  # IP-5P degradation rate
    K_D: float = _p(0.7 * uM, "umolar", "positive")  # Ca2+ affinity of IP3-3K
    K_3K: float = _p(1.0 * uM, "umolar", "positive")  # IP3 affinity of IP3-3K
    O_3K: float = _p(4.5 * uM / second, "umolar/second")  # IP3-3K max degradation rate
    # --- Ca2+-induced Ca2+ release (Li-Rinzel) [DP09; ST19]
    O_P: float = _p(0.9 * uM / second, "umolar/second")  # SERCA max uptake rate
    K_P: float = _p(0.05 * uM, "umolar", "positive")  # SERCA Ca2+ affinity
    C_T: float = _p(2.0 * uM, "umolar")  # total free Ca2+ content
    rho_A: float = _p(0.18, "1")  # ER-to-cytoplasm volume ratio
    Omega_C: float = _p(6.0 / second, "1/second")  # max Ca2+ release rate by IP3Rs
    Omega_L: float = _p(0.1 / second, "1/second")  # max Ca2+ leak rate from the ER
    d_1: float = _p(0.13 * uM, "umolar", "positive")  # IP3 binding affinity
    d_2: float = _p(1.05 * uM, "umolar", "positive")  # Ca2+ inactivation dissociation const.
    O_2: float = _p(0.2 / uM / second, "1/(umolar*second)", "positive")  # IP3R Ca2+-inhibition binding rate
    d_3: float = _p(0.9434 * uM, "umolar", "positive")  # IP3 dissociation constant
    d_5: float = _p(0.08 * uM, "umolar", "positive")  # Ca2+ activation dissociation const.
    # --- Gliotransmitter release [DP11; ST19]
    C_Theta: float = _p(0.5 * uM, "umolar", "positive")  # Ca2+ threshold for exocytosis
    Omega_A: float = _p(0.6 / second, "1/second")  # gliotransmitter recycling rate
    U_A: float = _p(0.6, "1", "fraction")  # gliotransmitter release probability
    G_T: float = _p(200 * mM, "mmolar")  # total vesicular gliotransmitter
    rho_e: float = _p(6.5e-4, "1", "fraction")  # astrocytic vesicle-to-extracellular volume ratio
    Omega_e: float = _p(60 / second, "1/second", "positive")  # gliotransmitter clearance rate
    # --- Initial astrocyte state [ST19 Fig. 6]
    C_0: float = _p(0.01 * uM, "umolar")  # Ca2+
    I_0: float = _p(0.01 * uM, "umolar")  # IP3
    h_0: float = _p(0.9, "1", "fraction")  # IP3R de-inactivation
    x_A_0: float = _p(1.0, "1", "fraction")  # available gliotransmitter resources

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.metadata["kind"]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise SimulationInputError(f"parameter {f.name} must be a finite number, got {value!r}")
            bad = (
                (kind == "nonneg" and value < 0)
                or (kind == "positive" and value <= 0)
                or (kind == "fraction" and not 0 <= value <= 1)
            )
            if bad:
                rule = {"nonneg": ">= 0", "positive": "> 0", "fraction": "in [0, 1]"}[kind]
                raise SimulationInputError(
                    f"parameter {f.name} = {value!r} is impossible: it must be {rule} (SI units)"
                )
        if self.C_0 >= self.ca_bound:
            raise SimulationInputError(
                f"C_0 = {self.C_0!r} exceeds the Ca2+ conservation bound C_T/(1+rho_A) = {self.ca_bound!r}"
            )

    @property
    def ca_bound(self) -> float:
        """Conservation bound on cytosolic Ca2+: C_T / (1 + rho_A) (all Ca2+ in the cytosol)."""
        return self.C_T / (1 + self.rho_A)

    @property
    def release_gain(self) -> float:
        """a = 1 - exp(-O_G rho_e G_T U_A / Omega_e): Gamma_S gain of a release with x_A = 1."""
        return 1 - math.exp(-self.O_G * self.rho_e * self.G_T * self.U_A / self.Omega_e)

    @classmethod
    def from_dict(cls, params: dict[str, float] | None) -> TripartiteParams:
        """Defaults overridden by ``params`` (SI floats); unknown names raise."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise SimulationInputError(
                f"unknown tripartite parameter(s) {', '.join(unknown)}; "
                f"valid names: {', '.join(sorted(known))}"
            )
        return cls(**params)

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def namespace(self) -> dict[str, object]:
        """The parameters as Brian2 quantities, for ``Network.run(namespace=...)``."""
        import brian2

        units = {n: getattr(brian2, n) for n in ("mmolar", "umolar", "second")}
        ns: dict[str, object] = {}
        for f in fields(self):
            unit = eval(f.metadata["unit"], {"__builtins__": {}}, units)  # noqa: S307 - fixed strings
            ns[f.name] = brian2.Quantity(getattr(self, f.name), dim=brian2.get_dimensions(unit))
        return ns


def default_params() -> dict[str, float]:
    """Default parameters as SI floats (the per-model contract)."""
    return TripartiteParams().to_dict()


def release_jump(gamma_s: float | np.ndarray, x_a: float | np.ndarray, p: TripartiteParams) -> np.ndarray:
    """Gamma_S right after a release with resources ``x_a`` (the exact pulse integral).

    Reference implementation of the jump the network applies; tests compare it with a
    direct integration of dGamma_S/dt = O_G G_A (1 - Gamma_S) - Omega_G Gamma_S.
    """
    a = 1 - np.exp(-p.O_G * p.rho_e * p.G_T * p.U_A * np.asarray(x_a) / p.Omega_e)
    return np.asarray(gamma_s) + (1 - np.asarray(gamma_s)) * a


# --- Equations (Brian2 strings; parameter names resolve from TripartiteParams.namespace()) ---

ASTROCYTE_EQS = """
# Extracellular glutamate in the domain: mean over its synapses
dY_S/dt = -Omega_c * Y_S : mmolar
# Fraction of activated astrocyte receptors (clip guards rk4 overshoot)
dGamma_A/dt = O_N * Y_S * (1 - clip(Gamma_A, 0, 1)) - Omega_N * (1 + zeta * C / (C + K_KC)) * clip(Gamma_A, 0, 1) : 1
# IP3: PLCbeta (receptor-driven) + PLCdelta (Ca2+-driven) production; 3K and 5P degradation
dI/dt = J_beta + J_delta - J_3K - J_5P : mmolar
J_beta = O_beta * Gamma_A : mmolar/second
J_delta = O_delta / (1 + I / kappa_delta) * C**2 / (C**2 + K_delta**2) : mmolar/second
J_3K = O_3K * C**4 / (C**4 + K_D**4) * I / (I + K_3K) : mmolar/second
J_5P = Omega_5P * I : mmolar/second
# Ca2+-induced Ca2+ release through IP3Rs, ER leak, SERCA uptake
dC/dt = (Omega_C * m_inf**3 * h**3 + Omega_L) * (C_T - (1 + rho_A) * C) - O_P * C**2 / (C**2 + K_P**2) : mmolar
dh/dt = (h_inf - h) / tau_h : 1
m_inf = I / (I + d_1) * C / (C + d_5) : 1
h_inf = Q_2 / (Q_2 + C) : 1
tau_h = 1 / (O_2 * (Q_2 + C)) : second
Q_2 = d_2 * (I + d_1) / (I + d_3) : mmolar
# Gliotransmitter resources and extracellular gliotransmitter (a trace: Gamma_S gets the exact jump)
dx_A/dt = Omega_A * (1 - x_A) : 1
dG_A/dt = -Omega_e * G_A : mmolar
# LTP trace: presynaptic receptor activation, shared by all synapses of the domain.
# Between releases only the unbinding term acts; the O_G*G_A*(1-Gamma_S) term is applied
# exactly at each release (GLIO_RELEASE).
dGamma_S/dt = -Omega_G * Gamma_S : 1
"""

GLIO_RELEASE = """
Gamma_S += (1 - Gamma_S) * (1 - exp(-O_G * rho_e * G_T * U_A * x_A / Omega_e))
G_A += rho_e * G_T * U_A * x_A
x_A -= U_A * x_A
"""

SYNAPSE_EQS = """
# Tsodyks-Markram: clock-driven (not event-driven) so the traces are meaningful between spikes
du_S/dt = -Omega_f * u_S : 1 (clock-driven)
dx_S/dt = Omega_d * (1 - x_S) : 1 (clock-driven)
r_S : 1
"""

SYNAPSE_ON_PRE = """
U_0 = (1 - Gamma_S_post) * U_0_star + alpha * Gamma_S_post
u_S += U_0 * (1 - u_S)
r_S = u_S * x_S
x_S -= r_S
Y_S_post += rho_c * Y_T * r_S / N_incoming
"""

#: Output traces: Dataset name -> (group, Brian2 variable, unit, SI->unit factor, long name).
TRACES = {
    "calcium": ("astro", "C", "uM", 1e3, "cytosolic Ca2+ concentration C"),
    "ip3": ("astro", "I", "uM", 1e3, "IP3 concentration I"),
    "h": ("astro", "h", "1", 1.0, "IP3 receptor de-inactivation h"),
    "gamma_a": ("astro", "Gamma_A", "1", 1.0, "fraction of activated astrocyte receptors Gamma_A"),
    "glutamate": ("astro", "Y_S", "uM", 1e3, "extracellular glutamate Y_S (mean over the synapses)"),
    "x_a": ("astro", "x_A", "1", 1.0, "available gliotransmitter resources x_A"),
    "gliotransmitter": (
        "astro", "G_A", "uM", 1e3,
        "extracellular gliotransmitter G_A (17 ms pulses: undersampled in this trace)",
    ),
    "gamma_s": ("astro", "Gamma_S", "1", 1.0, "activated presynaptic receptors Gamma_S (LTP trace)"),
    "u_s": ("syn", "u_S", "1", 1.0, "synaptic utilisation u_S (synapse 0)"),
    "x_s": ("syn", "x_S", "1", 1.0, "available synaptic resources x_S (synapse 0)"),
}


def _steps(duration_s: float, dt_s: float, what: str) -> int:
    n = round(duration_s / dt_s)
    if abs(n * dt_s - duration_s) > 1e-6 * max(dt_s, duration_s):
        raise SimulationInputError(
            f"{what} ({duration_s} s) is not a whole number of time steps of dt_s = {dt_s} s; "
            "choose dt_s dividing it"
        )
    return n


def _trace_stride(warmup_steps: int, period_steps: int, dt_s: float) -> int:
    """Largest stride <= TRACE_DT_S/dt dividing warm-up and period, so segment ends are sampled."""
    target = max(1, int(TRACE_DT_S / dt_s + 1e-9))
    g = math.gcd(warmup_steps, period_steps)
    return max(d for d in range(1, target + 1) if g % d == 0)


def check_run_inputs(protocol: SegmentProtocol, dt_s: float | None) -> float:
    """Validate the step size against the protocol; return the step to use."""
    dt = DEFAULT_DT_S if dt_s is None else dt_s
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise SimulationInputError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
    if dt > 0.02:
        raise SimulationInputError(f"dt_s = {dt} s is too coarse for the Ca2+ dynamics; use <= 0.02 s")
    if protocol.stimulate and protocol.burst_rate_hz * dt >= 1:
        raise SimulationInputError(
            f"burst_rate_hz = {protocol.burst_rate_hz} puts two spikes in one step of {dt} s; "
            "lower the rate or dt_s"
        )
    return float(dt)


def run(
    protocol: SegmentProtocol,
    params: dict[str, float] | None = None,
    *,
    codegen: str = "auto",
    dt_s: float | None = None,
    progress: bool = True,
    seed: int = 0,
) -> xr.Dataset:
    """Simulate ``protocol`` and return ``ltp_end(segment)`` plus downsampled traces.

    The network: warm-up (no input), reset Gamma_S to 0, then ``n_segments`` segments,
    each opened by a presynaptic burst.  ``ltp_end`` is Gamma_S at each segment's end.
    The model is deterministic; ``seed`` only seeds Brian2 for reproducibility of any
    future stochastic extension and is recorded.
    """
    from neuro_sim import codegen as cg

    p = TripartiteParams.from_dict(params)
    dt = check_run_inputs(protocol, dt_s)
    cg.validate_codegen(codegen)
    warm_steps = _steps(protocol.warmup_s, dt, "warmup_s")
    period_steps = _steps(protocol.segment_period_s, dt, "segment_period_s")
    stride = _trace_stride(warm_steps, period_steps, dt)
    index, times = protocol.spike_trains()

    # Standalone project per configuration: everything compiled into the program.
    config = json.dumps([p.to_dict(), protocol.to_json(), dt, int(seed)], sort_keys=True)
    project = f"{MODEL_NAME}-{hashlib.sha1(config.encode()).hexdigest()[:10]}"
    with cg.session(codegen, project) as sess:
        mon, spikes, t_abs, every = _build_and_run(
            p, protocol, dt, stride, index, times, sess, progress, seed
        )
        # Read everything out while the session (and, for standalone, its results) is alive.
        t_rec = np.array(mon["astro"].t_[::every])  # (K,) absolute time of each sample, s
        data = {  # SI values (trailing underscore) scaled to the output unit
            name: np.array(getattr(mon[grp], var + "_")[0, ::every]) * factor
            for name, (grp, var, _, factor, _) in TRACES.items()
        }
        release_abs = np.array(spikes.t_)
    return _to_dataset(p, protocol, dt, sess.target, seed, t_rec, data, release_abs, t_abs)


def _build_and_run(p, protocol, dt, stride, index, times, sess, progress, seed):
    """Create the Brian2 network, run warm-up and segments; return monitors."""
    import brian2 as b2

    b2.seed(seed)
    ns = p.namespace()
    b2.defaultclock.dt = dt * b2.second
    warm = protocol.warmup_s
    n = protocol.n_synapses
    # Presynaptic inputs: regular, phase-staggered trains (times relative to the warm-up's end).
    pre = b2.SpikeGeneratorGroup(n, index, (times + warm) * b2.second, name="presynaptic")
    # Refractory "while C > C_Theta": one release per upward threshold crossing.
    astro = b2.NeuronGroup(
        1, ASTROCYTE_EQS, threshold="C > C_Theta", refractory="C > C_Theta",
        reset=GLIO_RELEASE, method="rk4", name="astrocyte",
    )
    astro.C = p.C_0 * b2.mmolar
    astro.I = p.I_0 * b2.mmolar
    astro.h = p.h_0
    astro.x_A = p.x_A_0
    # exponential_euler is exact for these linear equations and, unlike "exact", needs no
    # symbolic matrix exponential (~1 s of sympy per process).
    syn = b2.Synapses(
        pre, astro, model=SYNAPSE_EQS, on_pre=SYNAPSE_ON_PRE, method="exponential_euler", name="synapses"
    )
    syn.connect(i=np.arange(n), j=0)
    syn.x_S = 1.0
    # Standalone: record every step on the one default clock and downsample afterwards.
    # A second (monitor) clock would make Brian2 emit the clocks' initialisation in set
    # order, which changes between processes and forces a recompile of main.cpp on
    # every warm run.
    keep_every = stride if sess.standalone else 1
    clock = {} if sess.standalone else {"dt": stride * dt * b2.second}
    mon = {
        "astro": b2.StateMonitor(astro, sorted({v for g, v, *_ in TRACES.values() if g == "astro"}),
                                 record=0, name="astro_monitor", **clock),
        "syn": b2.StateMonitor(syn, ["u_S", "x_S"], record=0, name="synapse_monitor", **clock),
    }
    releases = b2.SpikeMonitor(astro, name="release_monitor")
    net = b2.Network(pre, astro, syn, releases, *mon.values())

    total = protocol.duration_s
    # One extra sampling interval so the last segment's end is recorded (monitors sample
    # at the start of a step).  No spikes fall in it.
    tail = stride * dt
    # Runtime targets simulate inside net.run: a bar in simulated seconds.  Standalone
    # net.run only generates code; sess.finish() shows its compile/run stages.
    report, close = _progress(progress and not sess.standalone, warm + total + tail)
    try:
        if warm > 0:
            net.run(warm * b2.second, namespace=ns, report=report, report_period=0.5 * b2.second)
        # The warm-up removes the spontaneous event of the initial state; only LTP from
        # the protocol counts.
        astro.Gamma_S = 0
        net.run((total + tail) * b2.second, namespace=ns, report=report, report_period=0.5 * b2.second)
        sess.finish(progress=progress)
    finally:
        close()
    return mon, releases, warm, keep_every


def _progress(enabled: bool, total_s: float) -> tuple[Callable | None, Callable[[], None]]:
    """A Brian2 ``report`` callback driving a tqdm bar in simulated seconds."""
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    total = max(1, round(total_s))
    bar = tqdm(total=total, unit="s", desc=f"{MODEL_NAME} network (simulated s)", leave=False)

    def report(elapsed, completed, start, duration):  # Brian2's report signature
        done = min(total, int(float(start) + float(completed) * float(duration)))
        bar.update(done - bar.n)

    def close() -> None:
        bar.update(total - bar.n)
        bar.close()

    return report, close


def _to_dataset(p, protocol, dt, target, seed, t_rec, data, release_abs, warm) -> xr.Dataset:
    t_rel = t_rec - warm  # (K,) time after the warm-up
    keep = t_rel > -0.5 * dt  # traces start at the end of the warm-up
    t_rel = np.round(t_rel[keep], 9)
    ends = np.asarray(protocol.segment_end_times_s())  # (T,)
    idx = np.searchsorted(t_rel, ends - 0.5 * dt)
    if np.any(idx >= len(t_rel)) or np.any(np.abs(t_rel[np.minimum(idx, len(t_rel) - 1)] - ends) > 0.5 * dt):
        raise RuntimeError("segment ends were not sampled; the trace stride does not divide the period")
    gamma_s = data["gamma_s"][keep]
    ltp_end = gamma_s[idx]  # (T,)
    rel = release_abs - warm
    rel = rel[rel >= 0]
    seg_of = np.floor(rel / protocol.segment_period_s + 1e-12).astype(int)
    seg_of = seg_of[seg_of < protocol.n_segments]
    counts = np.bincount(seg_of, minlength=protocol.n_segments)
    segment = np.arange(1, protocol.n_segments + 1)

    ds = xr.Dataset(
        coords={
            "segment": ("segment", segment, {"long_name": "segment index t (1-based)", "units": "1"}),
            "time": ("time", t_rel, {"long_name": "time after the warm-up", "units": "s"}),
        }
    )
    ds["ltp_end"] = ("segment", ltp_end, {
        "long_name": "LTP trace Gamma_S at the end of each segment", "units": "1",
    })
    ds["release_count"] = ("segment", counts.astype(np.int64), {
        "long_name": "gliotransmitter releases (astrocytic Ca2+ events) during the segment", "units": "1",
    })
    ds["release_time"] = ("release", rel, {
        "long_name": "time of each gliotransmitter release after the warm-up", "units": "s",
    })
    for name, (_, _, unit, _, long_name) in TRACES.items():
        ds[name] = ("time", data[name][keep], {"long_name": long_name, "units": unit})
    ds.attrs.update({
        "model": MODEL_NAME,
        "model_params": json.dumps(p.to_dict(), sort_keys=True),
        "protocol": protocol.to_json(),
        "codegen": target,
        "dt_s": dt,
        "seed": int(seed),
        "gliotransmission": "exact per-release jump Gamma_S += (1 - Gamma_S) * a",
        "ca_bound_uM": p.ca_bound * 1e3,
    })
    return ds
