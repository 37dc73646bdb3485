import json

import pytest

from engine import experiment
from experiments import phase_diagram as pd


def test_regimes_follow_the_theoretical_boundary(tmp_path):
    """Three widths over a decade, a 3 x 3 patch of the plane around the corner (1, 0):
    S_w has the sign theory gives off the boundary and crosses zero on it."""
    config = {**pd.PRESETS["quick"], "gammas": [0.5, 1.0, 1.5], "gamma_primes": [-0.5, 0.0, 0.5],
              "widths": [100, 300, 1000], "seeds": 1}
    experiment.run(pd, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["points_on_boundary"] == 3 and s["points_away_from_boundary"] == 6
    assert s["sign_agrees_away_from_boundary"] == 6 and all(s["claims"].values()), s
    assert s["min_abs_S_w_away_from_boundary"] > 0.1 and s["max_abs_S_w_on_boundary"] < 0.15
    assert s["converged_fraction"] == 1.0 and s["diverged_runs"] == 0


@pytest.mark.parametrize("point, regime, distance", [
    ((0.5, -0.5), "linear", 0.5), ((1.5, 0.0), "condensed", 0.5 / 2 ** 0.5), ((1.0, -0.3), "critical", 0.0),
    ((2.0, 1.0), "critical", 0.0), ((1.0, 0.5), "linear", 0.5 / 2 ** 0.5), ((2.0, 1.5), "linear", 0.5 / 2 ** 0.5),
    ((0.7, 0.4), "linear", 0.7 / 2 ** 0.5)])
def test_theory_regimes(point, regime, distance):
    assert pd.theory_regime(*point) == regime
    assert pd.boundary_distance(*point) == pytest.approx(distance)
