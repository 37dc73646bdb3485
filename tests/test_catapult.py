import json

from engine import experiment
from experiments import catapult


def test_lazy_below_two_catapult_above_divergence_at_four_for_uv(tmp_path):
    config = {**catapult.PRESETS["quick"], "targets": [1.0, 1.9, 2.5, 2.7, 3.5, 4.2, 6.0], "seeds": 1}
    experiment.run(catapult, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    for kind, out in s["models"].items():
        rows = out["per_target"]
        for t in ("1", "1.9"):                       # lazy: monotone, curvature unchanged
            assert rows[t]["peak_over_initial_loss"] <= 1.01
            assert abs(rows[t]["eta_final_sharpness"] / rows[t]["eta_lambda0"] - 1) < 0.05
        for t in ("2.5", "2.7"):                     # catapult: up by > 10x, then below 2/eta, converged
            assert rows[t]["peak_over_initial_loss"] > 10, (kind, t, rows[t])
            assert rows[t]["eta_final_sharpness"] < 2.02
            assert rows[t]["final_over_initial_loss"] < 0.5 and rows[t]["diverged_fraction"] == 0
        assert rows["6"]["diverged_fraction"] == 1
    uv = s["models"]["uv"]["per_target"]            # the uv model's maximal step is 4 / lambda_0
    assert uv["3.5"]["diverged_fraction"] == 0 and uv["3.5"]["peak_over_initial_loss"] > 10
    assert uv["4.2"]["diverged_fraction"] == 1
    assert all(s["claims"].values()), s["claims"]
