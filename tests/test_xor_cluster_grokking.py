"""Benign overfitting and grokking on XOR clusters (Xu et al. 2023) in a small version:
the quick preset's data and network (n = 100, d = 10^4, ||mu|| = 20, eta = 0.15, width 64),
one step size, two initialization scales, two seeds, 40 steps."""
import json

import numpy as np
import pytest

from engine import experiment, sweep
from experiments import xor_cluster_grokking as xor


def test_one_step_overfits_then_the_network_generalizes(tmp_path):
    """lr 0.03; init_scale 1e-4 (small) and 1e-2 (||w_j|| = 1 at d = 10^4); 500 test
    points (Bayes 0.85, sampling std 0.016). Measured at init_scale 1e-4: 100% training
    accuracy at step 1 in both runs with test accuracy 0.49 and 0.50 there; test accuracy
    >= 0.80 from step 4 (t_gen), 0.866 and 0.868 at step 40, training accuracy still 100%;
    feature alignment 0.004 / 0.009 at step 1, 0.22 / 0.23 at step 40. At init_scale 1e-2:
    final test accuracy 0.52 and 0.57, alignment 0.009."""
    config = {**xor.PRESETS["quick"], "lrs": [0.03], "claim_lr": 0.03, "n_test": 500, "seeds": 2, "steps": 40}
    experiment.run(xor, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    ref, bayes = s["reference"], s["bayes_test_accuracy"]
    run = s["per_run"]["lr=0.03,init_scale=0.0001"]
    assert run["t_fit"] == [1.0, 1.0] and run["final_train_accuracy"] == [1.0, 1.0], run  # flipped labels fitted
    assert max(run["test_accuracy_step1"]) < 0.6, run                                     # yet chance on test
    assert min(run["final_test_accuracy"]) > bayes - 0.06, run                            # then near 1 - eta
    assert ref["t_gen"] >= 3, ref
    assert ref["final_alignment"] - ref["alignment_step1"] > 0.1, ref
    lazy = s["per_run"]["lr=0.03,init_scale=0.01"]
    assert max(lazy["final_test_accuracy"]) < 0.6, lazy
    assert all(s["claims"].values()), s["claims"]
    ds = sweep.load(tmp_path / "results.nc")
    assert ds.test_accuracy.dims == ("seed", "lr", "init_scale", "step") and ds.sizes["step"] == 41
    assert np.isfinite(ds.feature_alignment.values).all() and not ds.diverged.values.any()
    assert (tmp_path / "xor_grokking_lr.png").exists() and (tmp_path / "xor_grokking_init.png").exists()


@pytest.mark.parametrize("setting,field", [("label_noise=0.6", "label_noise"), ("claim_lr=0.5", "claim_lr"),
                                           ("width=63", "width"), ("init_scales=[0.0, 0.01]", "init_scales")])
def test_bad_config_is_one_line_before_compiling(tmp_path, capsys, setting, field):
    with pytest.raises(SystemExit) as code:
        experiment.main(xor, ["--set", setting, "--out", str(tmp_path / "out"), "--no-progress"])
    message = capsys.readouterr().err.strip()
    assert code.value.code == 2 and message.startswith(f"error: {field}") and "\n" not in message, message
    assert "Fix:" in message
