import json

from engine import experiment, sweep
from experiments import quickstart


def test_quickstart_small_writes_the_contract_files_and_finds_both_regimes(tmp_path):
    config = {**quickstart.PRESETS["quick"], "gammas": [0.25, 1.75], "widths": [50, 100, 200, 400],
              "seeds": 2, "steps": 8000}
    experiment.run(quickstart, config, tmp_path, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"results.nc", "config.json", "summary.json", "rd_vs_width.png"} <= names
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["converged_fraction"] == 1.0 and saved["diverged_runs"] == 0
    # Linear regime: RD shrinks with width (S_w ~ gamma - 1 = -0.75); condensed: it grows.
    assert -1.1 < saved["slope_S_w"]["0.25"] < -0.4
    assert saved["slope_S_w"]["1.75"] > 0.15
    assert all(saved["claims"].values())
    ds = sweep.load(tmp_path / "results.nc")
    assert ds.relative_change_layer.dims == ("seed", "width", "gamma", "step", "layer")
    assert json.loads((tmp_path / "config.json").read_text())["config"]["widths"] == [50, 100, 200, 400]
