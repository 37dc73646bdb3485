"""complexity_control (Hang et al. 2025 at toy scale) in a small version: the complexity
(parameter norm) that the initialization rate and weight decay control. Widths 16 and 32,
100 AdamW steps on 100 sequences per pair: far too few to fit the anchor pairs, so this
test gives no verdict on the held-out pair (4, 3); that needs the quick preset, d_model
64 and 1500 steps, whose numbers are in the module docstring and cannot run in a test.
What it asserts: the parameter norm of the standard init (std 0.02, wd 0.1) grows with
width faster than that of small complexity (gamma 1, wd 1), and at d_model 32 small
complexity has the smallest norm, large complexity (gamma 0.5, wd 0.1) the largest."""
import json

import pytest

from engine import experiment, sweep
from engine.errors import ConfigError
from experiments import complexity_control as cc

SMALL_CONFIG = {**cc.PRESETS["quick"], "widths": [16, 32], "n_per_pair": 100, "n_test": 30, "batch_size": 100,
                "steps": 100, "every": 50}


def test_standard_init_complexity_grows_with_width_faster_than_small_complexity(tmp_path):
    """Measured, parameter norm at step 100, d_model 16 -> 32: standard 9.23 -> 13.26
    (x1.437), small complexity 10.03 -> 13.09 (x1.305), large complexity 23.76 -> 30.69.
    1.5 to 2 min on 2 busy cores (load 5-7), mostly compiling four programs."""
    s = experiment.run(cc, SMALL_CONFIG, tmp_path, progress=False)
    norm = s["median"]["param_norm"]
    small, std = norm[cc.fan_in_label(*cc.SMALL)], norm[cc.std_label(SMALL_CONFIG)]
    large = norm[cc.fan_in_label(*cc.LARGE)]
    assert std["32"] / std["16"] >= 1.05 * small["32"] / small["16"], norm
    assert small["32"] < std["32"] < large["32"], norm
    ds = sweep.load(tmp_path / "results.nc")
    assert ds.held_out_answers.dims[:3] == ("seed", "d_model", "scheme") and ds.sizes["scheme"] == 5
    assert json.loads((tmp_path / "summary.json").read_text())["claims"]
    assert (tmp_path / "complexity_answers_vs_width.png").exists()


def test_bad_config_fails_before_compiling(tmp_path):
    for bad, field in (({"gammas": [0.0, 1.0]}, "gammas"), ({"gammas": [0.6, 1.0]}, "gammas"),
                       ({"weight_decays": [0.1]}, "weight_decays"),
                       ({"std": 0.0}, "std"), ({"widths": [16, 0]}, "widths"), ({"heads": 3}, "heads")):
        with pytest.raises(ConfigError, match=field):
            experiment.run(cc, {**SMALL_CONFIG, **bad}, tmp_path / field)
        assert not (tmp_path / field).exists()
