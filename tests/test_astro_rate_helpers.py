"""The ``astro_rate`` helpers that Brian2 and SciPy share, pinned to numbers worked out by hand.

Both integrations take their presynaptic drive from ``burst_drive`` and their astrocytic coupling
from ``coupling_matrix`` (on ``synapse_grid`` / ``distance_matrix``), so their agreement cannot see
a mistake in these. The expected values below come from the formulas in ``neuro_sim.astro_rate``'s
docstrings (b_j = drive_weight_j * drive_per_hz * burst_rate_hz; synapse n = 3 i + j on a 3 x 3
grid; K = exp(-scale d) off the diagonal; T = coupling * K / max row sum of K), not from the helpers.
"""

import math

import numpy as np
import pytest

from neuro_sim import astro_rate
from neuro_sim.protocol import SegmentProtocol

E = math.exp


def test_burst_drive_by_hand():
    """Defaults: 0.05 s x 20 Hz = 1 per unit weight, weights (1, 0.75, 0.5); none without stimulation."""
    defaults = astro_rate.AstroRateParams()
    np.testing.assert_allclose(astro_rate.burst_drive(defaults, SegmentProtocol()), [1.0, 0.75, 0.5], rtol=1e-15)
    p = astro_rate.params_from_dict({"drive_per_hz": 0.02, "drive_weight_0": 0.5, "drive_weight_1": 1.0,
                                     "drive_weight_2": 0.25})
    # 0.02 s x 40 Hz = 0.8 per unit weight
    np.testing.assert_allclose(astro_rate.burst_drive(p, SegmentProtocol(burst_rate_hz=40.0)), [0.4, 0.8, 0.2],
                               rtol=1e-15)
    assert astro_rate.burst_drive(p, SegmentProtocol(stimulate=False)).tolist() == [0.0, 0.0, 0.0]


def test_synapse_grid_and_distances_by_hand():
    """Synapse n = 3 i + j sits at (post i, pre j); distances are Euclidean on that grid."""
    post, pre = astro_rate.synapse_grid()
    assert post.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and pre.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    d = astro_rate.distance_matrix()
    by_hand = {(0, 1): 1.0, (0, 3): 1.0, (0, 4): math.sqrt(2), (0, 2): 2.0, (0, 5): math.sqrt(5),
               (0, 8): math.sqrt(8), (1, 7): 2.0, (3, 5): 2.0, (2, 6): math.sqrt(8), (4, 8): math.sqrt(2)}
    for (n, m), value in by_hand.items():
        assert d[n, m] == pytest.approx(value, rel=1e-15) and d[m, n] == pytest.approx(value, rel=1e-15)
    assert not np.diag(d).any()


def test_coupling_matrix_by_hand_at_the_defaults():
    """scale 2, coupling 0.25. The largest row sum of K is the centre synapse's (n = 4): four
    neighbours at distance 1 and four at sqrt 2, Z = 4 e^-2 + 4 e^-2sqrt2; so T_nm = 0.25 e^(-2 d_nm) / Z."""
    T = astro_rate.coupling_matrix(astro_rate.AstroRateParams())
    Z = 4 * E(-2) + 4 * E(-2 * math.sqrt(2))  # = 0.77776...
    assert Z == pytest.approx(0.7777641191942757, rel=1e-12)
    assert T[0, 1] == pytest.approx(0.25 * E(-2) / Z, rel=1e-12)  # = 0.043500...
    assert T[0, 4] == pytest.approx(0.25 * E(-2 * math.sqrt(2)) / Z, rel=1e-12)
    assert T[0, 5] == pytest.approx(0.25 * E(-2 * math.sqrt(5)) / Z, rel=1e-12)
    assert T[2, 6] == pytest.approx(0.25 * E(-2 * math.sqrt(8)) / Z, rel=1e-12)
    assert T[0, 0] == 0.0
    assert T[4].sum() == pytest.approx(0.25, rel=1e-12)  # the centre's row: exactly `coupling`
    # a corner (n = 0): 2 synapses at 1, 1 at sqrt 2, 2 at 2, 2 at sqrt 5, 1 at sqrt 8
    corner = 2 * E(-2) + E(-2 * math.sqrt(2)) + 2 * E(-4) + 2 * E(-2 * math.sqrt(5)) + E(-2 * math.sqrt(8))
    assert T[0].sum() == pytest.approx(0.25 * corner / Z, rel=1e-12)
    # an edge (n = 1): 3 at 1, 2 at sqrt 2, 1 at 2, 2 at sqrt 5
    edge = 3 * E(-2) + 2 * E(-2 * math.sqrt(2)) + E(-4) + 2 * E(-2 * math.sqrt(5))
    assert T[1].sum() == pytest.approx(0.25 * edge / Z, rel=1e-12)


def test_coupling_matrix_by_hand_without_distance_decay():
    """scale 0: every K_nm = 1 off the diagonal, every row sums to 8, so T_nm = coupling / 8."""
    T = astro_rate.coupling_matrix(astro_rate.params_from_dict({"scale": 0.0, "coupling": 0.4}))
    np.testing.assert_allclose(T, 0.05 * (1 - np.eye(9)), rtol=1e-15, atol=0)
