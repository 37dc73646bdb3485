"""lazy_rich on a small grid (d = 20, n = 200, 5 values of tau, 2 seeds, 1000 steps;
~10 s on 2 cores). Measured when written: final test loss 3e-5 at tau = 0.01 vs 8.6e-3 at
tau = 10 (ratio ~ 290); in the lazy range tau in {1, 3.16, 10} the distance
||theta_T - theta_0|| has log-log slope -0.99 and the relative change -1.99; the best
same-sign cosine to the teacher's neurons is 0.994-0.998 at tau <= 0.1 and 0.62, 0.43,
0.42 at tau = 1, 3.16, 10. tau = 1 is the crossover: with the quick preset's 10000 steps
its cosine reaches 0.76 and the lazy-alignment claim fails there (module docstring); at
these 1000 steps it holds."""
import json

import pytest

from engine import experiment, sweep
from engine.errors import ConfigError
from experiments import lazy_rich


def test_small_init_is_rich_and_aligns_large_init_is_lazy(tmp_path):
    config = {**lazy_rich.PRESETS["quick"], "taus": [0.01, 0.1, 1.0, 3.16, 10.0], "seeds": 2, "steps": 1000,
              "every": 100}
    experiment.run(lazy_rich, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "lazy_rich.png").exists() and s["diverged_runs"] == 0
    assert all(s["claims"].values()), s["claims"]
    loss = s["final_test_loss_median"]
    assert loss["10"] > 10 * loss["0.01"], loss  # lazy generalizes far worse
    assert -1.3 <= s["lazy_slope_distance"] <= -0.7 and -2.4 <= s["lazy_slope_relative_change"] <= -1.6, s
    align = s["alignment_median"]
    assert min(align["0.01"], align["0.1"]) > 0.95 and max(align["3.16"], align["10"]) < 0.6, align
    ds = sweep.load(tmp_path / "results.nc")
    assert ds.alignment.dims == ("seed", "init_scale") and "params_snapshot" not in ds


def test_odd_width_is_a_config_error():
    with pytest.raises(ConfigError, match="width"):
        lazy_rich.build({**lazy_rich.PRESETS["quick"], "width": 51})
