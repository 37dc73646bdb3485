"""theta-lazy (Li, Luo & Zhou 2024), small: with the initial output scale growing with
width, the parameters move less the wider the net, whatever the per-layer exponents,
and the loss follows the kernel at initialization."""
import pytest

from engine import experiment
from engine.errors import ConfigError
from experiments import theta_lazy as tl


def test_a_growing_output_scale_is_lazy_whatever_the_layer_exponents(tmp_path):
    """m 32 / 128, total 0.75 (kappa ~ m^0.25), tilts -0.25 / +0.25, 400 steps, 1 seed
    (measured: RD slopes -1.35 / -1.32, kernel error 2e-4 at m = 128, kappa exponent
    0.29)."""
    config = {**tl.PRESETS["quick"], "widths": [32, 128], "totals": [0.75], "tilts": [-0.25, 0.25], "steps": 400,
              "seeds": 1}
    s = experiment.run(tl, config, tmp_path, progress=False)
    for case in s["per_case"].values():
        assert case["rd_slope"] < -0.7, case
        assert case["kernel_error_by_width"][-1] < 0.02, case
        assert abs(case["kappa_exponent_fitted"] - 0.25) < 0.1, case
    assert (tmp_path / "theta_lazy.png").exists()


def test_one_width_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="widths"):
        experiment.run(tl, {**tl.PRESETS["quick"], "widths": [64]}, tmp_path / "o", progress=False)
