import json

import numpy as np

from engine import experiment, sweep
from experiments import frequency_principle as fp


def test_low_frequencies_are_fitted_first(tmp_path):
    config = {**fp.PRESETS["quick"], "seeds": 2, "steps": 2500}
    experiment.run(fp, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    steps = [s["convergence_step_median"][k] for k in ("1", "3", "5")]
    assert steps[0] < steps[1] < steps[2], steps           # k = 1, then 3, then 5
    assert steps[2] > 2 * steps[0]                           # and not by a hair
    assert s["fraction_of_seeds_in_frequency_order"] == 1.0 and all(s["claims"].values())
    # the DFT error is exact on the grid: the target's own spectrum gives zero error
    ds = sweep.load(tmp_path / "results.nc")
    perfect = ds.assign(prediction=ds.prediction * 0 + ds.target)
    np.testing.assert_allclose(fp.frequency_error(perfect, [1, 3, 5]), 0, atol=1e-5)
