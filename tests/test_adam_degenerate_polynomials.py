import json

import numpy as np

from engine import experiment, sweep
from experiments import adam_degenerate_polynomials as adp


def test_adam_phase_diagram_on_x4_matches_the_theoretical_boundaries(tmp_path):
    config = {**adp.PRESETS["quick"], "b1s": [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
              "b2s": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995]}
    experiment.run(adp, config, tmp_path, progress=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["points"] == 64 and saved["points_away_from_boundaries"] >= 40
    assert saved["agreement_away_from_boundaries"] >= 0.95
    assert saved["regime_counts"]["stable"] > 0 and saved["regime_counts"]["oscillation"] > 0
    # the three example runs at b2 = 0.99 land in the regime theory gives them, spikes included
    assert all(e["theory"] == e["measured"] for e in saved["examples"].values()), saved["examples"]
    assert saved["stable_rate_exponent_error_max"] <= 0.02
    for slope in saved["polynomial_decay_exponents"].values():   # GD, momentum: |x| ~ t^(-1/2)
        assert abs(slope + 0.5) < 0.05
    assert all(saved["claims"].values())
    # the linear rate read straight off a stable trajectory: x_{t+1}/x_t -> b2^(1/(2(k-2)))
    ds = sweep.load(tmp_path / "results.nc")
    x = ds.x.sel(b1=0.5, b2=0.9).values
    live = x[np.abs(x) > 1e-40]
    ratio = (live[-1] / live[-21]) ** (1 / (20 * config["every"]))
    np.testing.assert_allclose(ratio, 0.9 ** 0.25, rtol=1e-4)
    assert (tmp_path / "adam_phase_diagram.png").exists()
