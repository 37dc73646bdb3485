import json

import pytest

from engine import experiment, sweep
from engine.errors import ConfigError
from experiments import dropout_condensation as dc


def test_dropout_condenses_the_input_weights_at_equal_training_loss(tmp_path):
    """ReLU width 100, N(0, 1/m) init, GD lr 0.1 on sin x, 6000 steps, 3 seeds, rates 0
    and 0.5. Measured: at the lowest loss both rates reach (~0.007, ~3% of the initial
    loss) 7, 6, 7 orientation clusters without dropout and 5, 5, 4 with it; 7 vs 5 at the
    last step. Asserted: every claim, and the medians at least 2 clusters apart."""
    config = {**dc.PRESETS["quick"], "rates": [0.0, 0.5], "seeds": 3, "steps": 6000}
    experiment.run(dc, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert len(s["claims"]) == 3 and all(s["claims"].values()), s["claims"]
    common = s["clusters_at_common_level_median"]
    assert common["0.5"] <= common["0"] - 2, common
    assert s["clusters_at_end_median"]["0.5"] <= s["clusters_at_end_median"]["0"] - 2, s["clusters_at_end_median"]
    ds = sweep.load(tmp_path / "results.nc")
    initial = float(ds.loss.isel(step=0).median())
    assert max(s["common_level_per_seed"]) < 0.1 * initial  # equal loss is a real fit, not the start
    e = dc.equal_loss(ds, config)  # the equal-loss records really are at (or below) the common level
    for p in (0.0, 0.5):
        at = ds.loss.sel(dropout=p).sel(step=e.step.sel(dropout=p).astype(int))
        assert at.dims == ("seed",) and bool((at <= e.level).all()), (p, at.values, e.level.values)


def test_rates_without_zero_are_a_config_error_before_compiling(tmp_path):
    with pytest.raises(ConfigError, match="rates"):
        experiment.run(dc, {**dc.PRESETS["quick"], "rates": [0.1, 0.5]}, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="rates"):
        experiment.run(dc, {**dc.PRESETS["quick"], "rates": [0.0, 1.0]}, tmp_path, progress=False)
