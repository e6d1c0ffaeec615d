"""The injection model (bandersnake.sim.transit) and the fit model (bandersnake.analysis.transit) agree.

They are independent implementations of the Mandel & Agol (2002) quadratic limb-darkened transit:

* ``sim.transit.occulted_fraction`` integrates I(r) times the covered arc 2 r kappa(r) over the
  stellar radius r (1-D radial integral), 48-node Gauss-Legendre with a cosine map per piece
  (pieces split at |z - p|);
* ``analysis.transit.occulted_flux`` integrates the planet/disc overlap area A(sin t) against the
  derivative of the limb-darkening law over the angle t (the Mandel & Agol annulus sum integrated
  by parts), 20-node Gauss-Legendre on three pieces, the lens piece with a cosine map.

Neither uses a small-planet or any other physical approximation: both are exact integrals, so
they can differ only by quadrature error. Their own docstrings claim 1e-7 (analysis) and 1e-9
relative (sim); measured over this grid they agree to 8e-12 in flux (worst at the second-contact
kink z = 1 - p). The tolerance, 1e-9 in flux (0.001 ppm), keeps >100x margin over that and is
still five orders of magnitude below any photometric precision (>= 100 ppm per frame), so a
failure means a real change of one model, not round-off.

The geometry is compared too: the fit parametrises the orbit by (T14, b, P), the simulator by
(a/R*, i, P); with P given the fit's circular orbit reproduces the simulator's z(t). Without P
the fit uses a straight chord at constant speed, an approximation whose error is measured here.
"""

import numpy as np
import pytest

from bandersnake.analysis import transit as fitmodel
from bandersnake.sim import transit as simmodel

ATOL = 1e-9  # flux; see the module docstring
RADIUS_RATIOS = (0.01, 0.05, 0.1, 0.2, 0.3)
LIMB_DARKENING = ((0.0, 0.0), (0.4, 0.25), (0.9, -0.2), (0.1, 0.6), (1.0, 0.0))


@pytest.mark.parametrize("p", RADIUS_RATIOS)
@pytest.mark.parametrize("u1, u2", LIMB_DARKENING)
def test_occultation_agrees_over_separations(p, u1, u2):
    # every regime: full transit (planet over the centre when z < p), the contact points, grazing
    contacts = [0.0, 1e-9, p, abs(1 - p), 1 - p + 1e-9, 1 + p - 1e-9, 1 + p]
    z = np.concatenate([np.linspace(0.0, 1 + p + 0.02, 1501), contacts])
    blocked_fit = 1 - fitmodel.occulted_flux(z, p, u1, u2)
    blocked_sim = simmodel.occulted_fraction(z, p, u1, u2)
    np.testing.assert_allclose(blocked_fit, blocked_sim, rtol=0, atol=ATOL)
    # not a vacuous comparison: both give the occulted fraction, p^2-like at the centre
    assert blocked_sim[0] > 0.5 * p**2


@pytest.mark.parametrize("a_rs", [4.0, 12.0])
@pytest.mark.parametrize("b, p", [(b, p) for b in (0.0, 0.3, 0.6, 0.85, 0.98, 1.05) for p in (0.02, 0.1, 0.2)
                                  if b < 1 + p])   # b = 1.05 is grazing for p = 0.1, 0.2
def test_light_curves_agree_over_impact_parameters(a_rs, b, p):
    period, t0 = 1.3, 2460000.5
    inc = np.degrees(np.arccos(b / a_rs))
    t14 = simmodel.total_duration(period, p, a_rs, inc)
    # the transit and its surroundings, plus phases where the planet is behind the star
    t = np.concatenate([t0 + np.linspace(-0.75, 0.75, 1201) * t14, t0 + np.array([-0.4, 0.3, 0.5]) * period])
    for u1, u2 in LIMB_DARKENING[:3]:
        sim = simmodel.transit_model(t, t0, period, p, a_rs, inc, u1, u2)
        fit = fitmodel.transit_model(t, t0, p, t14, b, u1, u2, period=period)
        np.testing.assert_allclose(fit, sim, rtol=0, atol=ATOL)
        assert sim.min() < 1 - 0.1 * p**2 and np.all(sim[-3:] == 1)   # a transit, nothing behind the star


def test_straight_chord_approximation_error():
    """Without a period the fit model moves the planet on a straight chord at constant speed; on a
    circular orbit the planet curves and slows near the limbs. The flux error, relative to the depth,
    scales as (R*/a)^2: measured 1.9 % at a/R* = 4, 0.20 % at a/R* = 12. Bounds are those x 1.2."""
    period, t0, u1, u2 = 1.3, 2460000.5, 0.4, 0.25
    for a_rs, bound in ((4.0, 0.023), (12.0, 0.0024)):
        worst = 0.0
        for b in (0.0, 0.3, 0.6, 0.85):
            for p in (0.02, 0.1, 0.2):
                inc = np.degrees(np.arccos(b / a_rs))
                t14 = simmodel.total_duration(period, p, a_rs, inc)
                t = t0 + np.linspace(-0.75, 0.75, 1201) * t14
                sim = simmodel.transit_model(t, t0, period, p, a_rs, inc, u1, u2)
                chord = fitmodel.transit_model(t, t0, p, t14, b, u1, u2)
                worst = max(worst, np.max(np.abs(chord - sim)) / p**2)
        assert worst < bound, (a_rs, worst)
