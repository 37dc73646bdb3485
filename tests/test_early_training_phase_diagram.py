import json

import numpy as np
import pytest

from engine import experiment, sweep
from engine.errors import ConfigError
from experiments import early_training_phase_diagram as etp


def test_catapult_at_two_divergence_near_four_when_wide_and_sharpness_reduction_when_deep(tmp_path):
    """Two nets at the ends of the quick preset's d/w range, one seed, a coarse c grid.
    Measured on the quick preset (2 seeds, c on a 2^(1/4) grid 0.5..64): at d=2, w=512
    c_sharp = c_loss = 2.38 and c_max = 4.76 (no sharpness-reduction phase); at d=8, w=32
    c_sharp <= 0.5 (the grid's floor), c_loss = 41.7, c_max = 64."""
    cs = [0.5, 1.0, 1.68, 2.38, 2.83, 4.0, 4.76, 8.0, 16.0, 32.0, 64.0]
    config = {**etp.PRESETS["quick"], "depths": [2, 8], "widths": [32, 512], "max_depth_times_width": 1024,
              "seeds": 1, "cs": cs}
    experiment.run(etp, config, tmp_path, progress=False)
    assert {"results.nc", "summary.json", "phase_diagram.png", "trajectories.png"} <= {p.name for p in tmp_path.iterdir()}
    s = json.loads((tmp_path / "summary.json").read_text())
    assert list(s["per_net"]) == ["d=2,w=512", "d=2,w=32", "d=8,w=32"]  # by d/w; d=8, w=512 is over the cap
    wide, deep = s["per_net"]["d=2,w=512"], s["per_net"]["d=8,w=32"]
    assert 1.5 <= wide["c_loss"] <= 3 and 3 <= wide["c_max"] <= 6, wide   # the catapult window (2, 4)
    assert wide["c_sharp"] >= 2, wide                                      # no sharpness reduction below c = 2
    assert deep["c_sharp"] < deep["c_loss"] / 4, deep                      # the reduction phase is open ...
    assert deep["c_loss"] > 8 and deep["c_max"] > 8, deep                  # ... and the catapult moved up
    ds = sweep.load(tmp_path / "results.nc")
    # each run trains at exactly eta = c / lambda_0 of its own initialization
    np.testing.assert_allclose(ds.lr.isel(step=0) * ds.sharpness.isel(step=0), ds.c.broadcast_like(ds.lr.isel(step=0)),
                               rtol=1e-5)
    # the same seed is the same theta_0 at every c: lambda_0 does not depend on c
    lam0 = ds.sharpness.isel(step=0)
    np.testing.assert_array_equal(lam0, lam0.isel(c=0).broadcast_like(lam0))
    assert s["eta_star_fit_product"]["exponents"][0] < 0


def test_bad_config_fails_before_compiling(tmp_path):
    with pytest.raises(ConfigError, match="early"):
        experiment.run(etp, {**etp.PRESETS["quick"], "early": 50}, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="max_depth_times_width"):
        experiment.run(etp, {**etp.PRESETS["quick"], "max_depth_times_width": 8}, tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="depths"):
        experiment.run(etp, {**etp.PRESETS["quick"], "depths": [1, 2]}, tmp_path / "c", progress=False)
    assert not any(tmp_path.iterdir())
