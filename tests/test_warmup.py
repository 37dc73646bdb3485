import json

import numpy as np
import pytest

from engine import experiment, sweep
from engine.errors import ConfigError
from experiments import warmup as wu

SMALL = {**wu.PRESETS["quick"], "n_train": 64, "widths": [64, 32, 32, 10], "steps": 400, "warmups": [0, 300],
         "gd_lrs": [0.1 * 2 ** k for k in range(6)], "adam_lrs": [1e-3 * 4 ** k for k in range(6)], "seeds": 1}


def test_warmup_pushes_the_sharpness_down_and_raises_the_largest_stable_rate(tmp_path):
    """64-32-32-10 ReLU MLP on 64 digits, 400 steps, warmup 0 or 300, one seed. Measured:
    GD lambda_0 = 13.6; largest stable target rate 0.8 without warmup, 1.6 with (5.5x and
    10.9x 2/lambda_0; 3.2 diverges at eta_t ~ 2.2); during the warmup the sharpness sits
    at 1.04, 1.10, 1.28 x 2/eta_t for target rates 0.4, 0.8, 1.6 (above the [0.8, 1.2]
    band of the summary's claim at the fastest ramp). Adam: largest stable 0.064 without
    warmup, the grid's top 1.024 with it; preconditioned sharpness at 1.06 and 1.02 x
    its threshold for 0.064 and 0.256."""
    summary = experiment.run(wu, SMALL, tmp_path, progress=False)
    assert {"results.nc", "summary.json", "warmup_stability.png", "warmup_gd.png", "warmup_adam.png"} <= {
        p.name for p in tmp_path.iterdir()}
    saved = json.loads((tmp_path / "summary.json").read_text())
    gd, adam = saved["gd"], saved["adam"]
    # the largest stable rate, read back from the saved diverged flags x lr grid
    ds = sweep.load(tmp_path / "results.nc")
    assert ds.diverged.dims == ("optimizer", "seed", "warmup_steps", "rate")
    for name in wu.OPTIMIZERS:
        ok = ~ds.diverged.sel(optimizer=name).any("seed")
        for w in ds.warmup_steps.values:
            lrs, row = ds.lr.sel(optimizer=name).values, ok.sel(warmup_steps=w).values
            expected = lrs[:np.argmin(row)].max() if not row.all() else lrs.max()
            assert saved[name]["largest_stable_lr"][f"{w:g}"] == pytest.approx(expected)
    # GD: warmup doubles the largest stable target rate, a real boundary (not the grid's top)
    assert gd["largest_stable_lr"]["300"] >= 2 * gd["largest_stable_lr"]["0"] > 0
    assert not gd["at_grid_top"]["300"]
    assert gd["largest_stable_lr_over_two_over_lambda0"]["300"] > 8   # far above the initial edge
    # ... because the sharpness was pushed down to track 2/eta_t during the warmup
    counted = [c["median_ratio_at_edge"] for c in gd["tracking"].values() if c["counts"]]
    assert len(counted) >= 2 and all(0.9 <= r <= 1.4 for r in counted), gd["tracking"]
    sharp = ds.sharpness.sel(optimizer="gd", warmup_steps=300.0).dropna("step", how="all")
    assert float(sharp.sel(step=300).isel(rate=3).max()) < 0.25 * float(sharp.isel(step=0).min())  # lr 0.8
    # Adam: warmup raises its largest stable rate too; lambda_max(P^-1 H) meets (2 + 2 b1)/((1 - b1) eta_t)
    assert adam["largest_stable_lr"]["300"] >= 4 * adam["largest_stable_lr"]["0"] > 0
    for lr in ("0.064", "0.256"):
        assert 0.8 <= adam["tracking"][f"w=300,lr={lr}"]["median_ratio_at_edge"] <= 1.2, adam["tracking"]
    assert set(summary["claims"]) and all(isinstance(v, bool) for v in summary["claims"].values())


@pytest.mark.parametrize("change, field", [({"gd_lrs": [0.4, 0.2]}, "gd_lrs"),
                                           ({"adam_lrs": [1e-3, 1e-2]}, "adam_lrs"),
                                           ({"warmups": [0, 5000]}, "warmups"),
                                           ({"sharpness_every": 15}, "sharpness_every")])
def test_bad_grids_are_one_line_config_errors_before_compiling(tmp_path, change, field):
    with pytest.raises(ConfigError, match=field):
        experiment.run(wu, {**SMALL, **change}, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
