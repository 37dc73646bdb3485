"""Opposing signals (Rosenfeld & Risteski 2023), small: two planted groups that share a
large feature with opposite targets bring GD to the edge of stability and oscillate
there in anti-phase; without them the network never sharpens to 2/eta."""
import pytest

from engine import experiment
from engine.errors import ConfigError
from experiments import opposing_signals as opp


def test_the_planted_pair_oscillates_in_anti_phase_and_carries_the_sharpness(tmp_path):
    """eta 0.2, 1200 steps, 2 seeds (the quick preset at 2000 steps measured: late
    sharpness 0.999 x 2/eta with the pair, 0.40 without; rho(A, B) = -0.996)."""
    config = {**opp.PRESETS["quick"], "lrs": [0.2], "steps": 1200, "seeds": 2}
    s = experiment.run(opp, config, tmp_path, progress=False)
    row = s["per_lr"]["0.2"]
    assert abs(row["late_sharpness_over_threshold_with_pair"] - 1) < 0.05, row   # at the edge with the pair
    assert row["late_sharpness_over_threshold_without_pair"] < 0.6, row         # far below it without
    assert row["rho_AB"] <= -0.8, row                                           # anti-phase
    assert max(row["amplitude_A"], row["amplitude_B"]) > row["amplitude_clean_max"], row
    claims = s["claims"]
    assert [claims[k] for k in claims if "anti-phase" in k or "carries" in k or "some rate" in k] == [True] * 3
    assert (tmp_path / "opposing_signals.png").exists()


def test_more_clean_groups_than_examples_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="clean_groups"):
        experiment.run(opp, {**opp.PRESETS["quick"], "n_clean": 4, "clean_groups": 8}, tmp_path / "o", progress=False)
