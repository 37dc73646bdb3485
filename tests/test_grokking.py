"""Grokking (Power et al. 2022) in a small version: an MLP on (a + b) mod 23 fits its
training pairs within ~100 steps and generalizes only much later, and only with enough
weight decay."""
import json

from engine import experiment, sweep
from experiments import grokking


def test_test_accuracy_follows_training_accuracy_only_much_later(tmp_path):
    """p = 23, 70% of the pairs for training, width 128, 4000 steps, weight decay 0.3 and
    3, two seeds (measured: t_train 100, t_half 700, final test accuracy 0.95 at wd 3;
    0.13 at wd 0.3)."""
    config = {**grokking.PRESETS["quick"], "p": 23, "train_fractions": [0.7], "steps": 4000,
              "weight_decays": [0.3, 3.0], "seeds": 2}
    experiment.run(grokking, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    ref = s["reference"]
    assert ref["t_train"] <= 200 and ref["t_half"] >= 5 * ref["t_train"], ref
    assert ref["final_test_accuracy"] > 0.9, ref
    small = s["per_run"]["wd=0.3,f=0.7"]
    assert max(small["final_test_accuracy"]) < 0.5, small  # too little weight decay: no grokking yet
    ds = sweep.load(tmp_path / "results.nc")
    assert set(ds.softmax_collapse.dims) >= {"seed", "weight_decay", "step"}
    assert (tmp_path / "grokking.png").exists()
