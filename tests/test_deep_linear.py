"""Deep linear networks (Saxe et al. 2014): GD from a balanced decoupled start follows
the exact map of each mode to float64 rounding, and the paper's closed form up to the
discretization; modes are learned strongest first."""
import numpy as np
import pytest

from engine import experiment
from engine.errors import ConfigError
from experiments import deep_linear as dl


def test_modes_follow_the_closed_form_strongest_first(tmp_path):
    """s = 3, 2, 1, u_0 = 1e-3, eta 0.01, 1500 steps, 1 seed (measured on the quick
    preset: 1.1e-14 s_i from the exact map; the closed form within its discretization
    estimate; half-times within 1.3%)."""
    config = {**dl.PRESETS["quick"], "singular_values": [3.0, 2.0, 1.0], "u0s": [1e-3], "steps": 1500, "seeds": 1}
    s = experiment.run(dl, config, tmp_path, progress=False)
    assert s["max_error_against_gd_map_over_s"] < 1e-9, s
    measured, predicted = (np.array(s[k]["u0=0.001"]) for k in ("half_time_measured", "half_time_predicted"))
    np.testing.assert_allclose(measured, predicted, rtol=0.02)
    assert np.all(np.diff(s["random_start_half_time"]) > 0), s["random_start_half_time"]
    assert all(s["claims"].values()), s["claims"]


def test_the_gd_map_is_the_flow_for_small_steps():
    """The exact GD map tends to the closed form as eta -> 0 (the error ~ eta)."""
    t = 1.5
    errs = [abs(dl.discrete_map(2.0, 1e-3, lr, int(t / lr))[-1] - dl.closed_form(2.0, 1e-3, t)) for lr in (1e-2, 1e-3)]
    assert errs[1] < errs[0] / 5, errs


@pytest.mark.parametrize("bad, field", [({"singular_values": [1.0, 2.0]}, "singular_values"),
                                        ({"singular_values": [5.0, 4, 3, 2, 1, 0.5]}, "singular_values"),
                                        ({"n": 4}, "n")])
def test_bad_config_is_refused_before_compiling(tmp_path, bad, field):
    with pytest.raises(ConfigError, match=field):
        experiment.run(dl, {**dl.PRESETS["quick"], **bad}, tmp_path / "out", progress=False)
