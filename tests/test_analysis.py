"""Times read off saved records (`engine.analysis`): the first crossing, the
interpolated crossing and the settling time, against hand-computed values."""
import numpy as np
import xarray as xr

from engine import analysis


def _da(rows):
    return xr.DataArray(np.array(rows, float), dims=("run", "step"), coords={"step": [0, 10, 20, 30, 40]})


def test_first_settled_and_interpolated_times():
    da = _da([[0.0, 0.2, 0.6, 0.4, 0.9], [0.0, 0.1, 0.1, 0.1, 0.1], [0.7, 0.8, 0.9, 0.9, 0.9]])
    np.testing.assert_array_equal(analysis.first_time(da >= 0.5).values, [20, np.nan, 0])
    np.testing.assert_array_equal(analysis.settled_time(da >= 0.5).values, [40, np.nan, 0])
    # 0.2 -> 0.6 between steps 10 and 20 crosses 0.5 at 17.5; never; already above at step 0
    np.testing.assert_allclose(analysis.crossing_time(da, 0.5).values, [17.5, np.nan, np.nan])
    level = xr.DataArray([0.4, 0.05, 0.8], dims="run")
    np.testing.assert_allclose(analysis.crossing_time(da, level).values, [15.0, 5.0, 10.0])


def test_power_law_fit_recovers_exponents():
    rng = np.random.default_rng(0)
    d, w = rng.uniform(1, 10, 20), rng.uniform(10, 1000, 20)
    y = 3.0 * d ** -0.5 * w ** -1.0 * np.exp(0.01 * rng.standard_normal(20))
    fit = analysis.power_law_fit(y, d, w)
    np.testing.assert_allclose(fit["exponents"], [-0.5, -1.0], atol=0.02)
    assert fit["r2"] > 0.999 and abs(fit["prefactor"] - 3.0) < 0.1
    assert analysis.power_law_fit(y[:2], d[:2], w[:2])["exponents"] is None
