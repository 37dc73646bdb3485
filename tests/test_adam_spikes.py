import json

from engine import experiment
from experiments import adam_spikes


def test_spikes_follow_threshold_crossings_and_vanish_with_large_eps(tmp_path):
    config = {**adam_spikes.PRESETS["quick"], "b2s": [0.9, 0.999], "seeds": 2,
              "quadratic_b2s": [0.99], "quadratic_steps": 6000}
    experiment.run(adam_spikes, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    counts = s["spike_counts"]
    assert counts["b2=0.999,eps=1e-08"] >= 5 and counts["b2=0.9,eps=1e-08"] < counts["b2=0.999,eps=1e-08"]
    assert counts["b2=0.9,eps=0.1"] == counts["b2=0.999,eps=0.1"] == 0
    assert s["fraction_of_spikes_whose_peak_follows_a_threshold_crossing"] >= 0.8
    assert s["fraction_of_spikes_with_curvature_crossing_between_it_and_the_peak"] >= 0.8
    # the quadratic: v decays exactly like b2^k while g^2 << v, then spikes follow
    decay = s["quadratic_v_decay"]["0.99"]
    assert abs(decay["log_v_slope_over_log_b2"] - 1) < 0.02 and decay["quiet_steps"] > 500
    assert s["quadratic_spike_counts"]["0.99"] > 0
    assert all(s["claims"].values()), s["claims"]
