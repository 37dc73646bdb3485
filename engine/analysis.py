"""Numbers computed from saved results (xarray), shared by experiments and figures."""
from __future__ import annotations

import numpy as np
import xarray as xr


def log_log_slope(da: xr.DataArray, dim: str) -> xr.DataArray:
    """Least-squares slope S of log(da) against log(da[dim]) along `dim`
    (e.g. S_w of RD ~ m^S_w, Luo et al. 2021). Non-positive or NaN points are skipped;
    NaN where fewer than two points remain."""
    x = np.log(da[dim].values.astype(float))

    def slope(y):
        ok = np.isfinite(y) & (y > 0)
        if ok.sum() < 2:
            return np.nan
        return np.polyfit(x[ok], np.log(y[ok]), 1)[0]

    return xr.apply_ufunc(slope, da, input_core_dims=[[dim]], vectorize=True)
