"""Grokking in frequency (Zhou, Zhang & Xu 2024), small: an MLP on (a + b) mod 31 fits
every frequency of its training pairs within ~250 steps, the target's frequencies on the
test pairs only ~7x later, and in between carries power at frequencies the target lacks."""
import json
import types

import numpy as np
import pytest

from engine import experiment, probes
from engine.errors import ConfigError
from experiments import grokking_frequency as gf


def test_training_points_are_fitted_in_frequency_long_before_the_test_points(tmp_path):
    """p = 31, half the pairs for training, weight decay 3, 3000 steps recorded every 25,
    two seeds (measured, medians: train fit step 237.5 for the target frequencies and 250
    for the off-target ones; the test error at the target frequencies 1.04 at that step,
    0.21 at the end, past its geometric midpoint at step 1725 = 7.3x; off-target power
    1.3e-4 at init, peak 0.37 at step 750 (a perfect memorizer: 0.25), 0.028 at the end.
    The test error never gets below tol = 0.1 here: test accuracy ends at 0.94)."""
    config = {**gf.PRESETS["quick"], "steps": 3000, "every": 25}
    experiment.run(gf, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    m = s["median"]
    assert m["train_fit_step_last"] <= 400, m                                # the training spectrum, early
    assert m["train_fit_step_off_target"] <= 1.5 * m["train_fit_step"], m   # target frequencies not first
    assert m["test_midpoint_step"] >= 5 * m["train_fit_step"], m            # the test points, much later
    assert m["test_error_final"] <= m["test_error_at_train_fit"] / 3, m
    assert m["off_target_power_peak"] >= 0.5 * s["memorizer_off_target_power"], (m, s["memorizer_off_target_power"])
    assert m["off_target_power_peak_step"] < m["test_midpoint_step"], m
    assert m["off_target_power_final"] < m["off_target_power_peak"] / 5, m
    assert (tmp_path / "grokking_frequency.png").exists()


def test_the_target_lives_on_the_diagonal_and_a_perfect_network_has_no_residual():
    config = {**gf.PRESETS["quick"], "p": 7}
    t = gf.table(config)
    y, mask = gf.grid_arrays(t)
    grid = probes.grid_spectrum_norm(y, 1.0, np)
    k_a, k_b = np.nonzero(grid > 1e-4 * grid.max())
    assert np.array_equal(k_a, k_b) and len(k_a) == 7                      # (a + b) mod p: k_a = k_b only
    minus = probes.grid_spectrum_norm(gf.grid_arrays(gf.table({**config, "op": "-"}))[0], 1.0, np)
    k_a, k_b = np.nonzero(minus > 1e-4 * minus.max())
    assert np.array_equal((k_a + k_b) % 7, np.zeros(7))                   # (a - b) mod p: k_a = -k_b
    perfect = types.SimpleNamespace(params=None, predict=lambda params, x: 40.0 * np.asarray(y).reshape(49, 7))
    out, _ = gf.frequency_fit(t, "one_hot").measure(perfect, None)
    assert float(np.max(out["train_residual"])) < 1e-6 and float(np.max(out["test_residual"])) < 1e-6
    np.testing.assert_allclose(out["output_power"], grid ** 2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad, field", [({"op": "*"}, "op"), ({"tol": -0.1}, "tol"), ({"ratio": 0.5}, "ratio")])
def test_bad_config_is_refused_before_compiling(tmp_path, bad, field):
    with pytest.raises(ConfigError, match=field):
        experiment.run(gf, {**gf.PRESETS["quick"], **bad}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
