import json

from engine import experiment
from experiments import adaptive_edge_of_stability as aeos


def test_adam_preconditioned_sharpness_hovers_at_its_threshold_for_each_beta1(tmp_path):
    config = {**aeos.PRESETS["quick"], "lrs": [0.003], "b1s": [0.8, 0.9], "seeds": 2, "steps": 2000}
    experiment.run(aeos, config, tmp_path, progress=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["diverged_runs"] == 0 and len(saved["cells"]) == 2
    for cell in saved["cells"].values():
        assert cell["first_preconditioned_sharpness_over_threshold_median"] < 0.5   # it rises ...
        assert abs(cell["late_preconditioned_sharpness_over_threshold_median"] - 1) < 0.1  # ... to (2+2b1)/((1-b1)eta)
        assert cell["late_raw_sharpness_over_threshold_median"] < 0.1   # while H itself stays far below
    # the threshold moves with beta1 (18/eta... 38/eta) and so does where the run settles
    a, b = saved["cells"]["lr=0.003,b1=0.8"], saved["cells"]["lr=0.003,b1=0.9"]
    assert b["threshold"] / a["threshold"] > 2
    assert all(saved["claims"].values())
    assert {"adaptive_eos_b1_0.8.png", "adaptive_eos_b1_0.9.png"} <= {p.name for p in tmp_path.iterdir()}
