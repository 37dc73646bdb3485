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
