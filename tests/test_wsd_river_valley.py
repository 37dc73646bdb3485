"""Warmup-stable-decay in a river valley (Wen et al. 2024), small: SGD bounces on the
hillsides by a gap that grows with eta, the decay removes it, and WSD ends below a
cosine schedule of the same length."""

import pytest

from engine import experiment
from engine.errors import ConfigError
from experiments import wsd_river_valley as wsd


def test_the_stable_phase_gap_grows_with_eta_and_the_decay_removes_it(tmp_path):
    """d = 4, n = 128, B = 8, eta 0.05 / 0.1, 1500 steps, 4 seeds, and the network on
    256 digits at eta 0.3 for 1000 steps, 2 seeds. Measured: stable gaps 0.0036 / 0.0129
    (0.53 / 0.80 of the independent-batch prediction), WSD's final loss 0.55x cosine's
    at both rates; the network 0.0169 against 0.0261."""
    config = {**wsd.PRESETS["quick"], "dim": 4, "n": 128, "lrs": [0.05, 0.1], "steps": 1500, "seeds": 4,
              "network_n": 256, "network_lrs": [0.3], "network_steps": 1000, "network_seeds": 2}
    s = experiment.run(wsd, config, tmp_path, progress=False)
    lo, hi = s["per_lr"]["0.05"], s["per_lr"]["0.1"]
    assert 1.5 < hi["stable_gap"] / lo["stable_gap"] < 4, (lo, hi)            # ~ eta / (2 - eta lambda)
    for row in (lo, hi):
        assert 0.4 < row["measured_over_predicted"] < 1.2, row              # linear stability, reshuffled batches
        assert row["final_gap_wsd"] < 0.1 * row["stable_gap"], row          # the decay drops to the floor
        assert row["final_loss_wsd"] < 0.9 * row["final_loss_cosine"], row  # WSD beats cosine
        assert row["final_river_position_wsd"] > row["final_river_position_cosine"], row
    net = s["network_final_loss"]["0.3"]
    assert net["wsd"] < 0.95 * net["cosine"], net                         # the small network too
    assert all(s["claims"].values()), s["claims"]
    assert (tmp_path / "wsd_river_valley.png").exists()


@pytest.mark.parametrize("bad, field", [({"batch_size": 256}, "batch_size"), ({"n": 8}, "n"),
                                        ({"lambda_min": 20.0}, "lambda_min"),
                                        ({"network_batch_size": 600}, "network_batch_size")])
def test_bad_config_is_refused_before_compiling(tmp_path, bad, field):
    with pytest.raises(ConfigError, match=field):
        experiment.run(wsd, {**wsd.PRESETS["quick"], **bad}, tmp_path / "out", progress=False)
