import json

from engine import experiment
from experiments import phase_diagram_three_layer as p3


def test_each_layer_has_its_own_regime(tmp_path):
    """A 2 x 2 corner of the plane over widths 20-200: W1's sign follows gamma_0 alone,
    W2's follows gamma_1 alone, and both mixed networks occur."""
    config = {**p3.PRESETS["quick"], "gamma_in": [0.0, 1.5], "gamma_mid": [0.5, 1.5], "seeds": 1,
              "linear_at": {"0": [0.0], "1": [0.5]}, "condensed_at": {"0": [1.5], "1": [1.5]}}
    experiment.run(p3, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert all(s["claims"].values()), s
    assert s["mixed_regime_points"] == {"W1 condensed, W2 linear": [[1.5, 0.5]], "W1 linear, W2 condensed": [[0.0, 1.5]]}
    assert s["slope_S_W1"]["1.5"]["0.5"] > 0.5 and s["slope_S_W2"]["1.5"]["0.5"] < -0.3
    assert s["diverged_runs"] == 0
