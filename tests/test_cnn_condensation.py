import json

from engine import analysis, experiment, sweep
from experiments import cnn_condensation as cc


def test_small_init_kernels_condense_onto_one_line_default_init_kernels_do_not(tmp_path):
    config = {**cc.PRESETS["quick"], "n_train": 64, "channels": 12, "init_scales": [1.0, 1e-3], "seeds": 1,
              "steps": 200}
    experiment.run(cc, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert all(s["claims"].values()), s
    assert s["largest_two_clusters_share_max"]["0.001"] >= 0.95 and s["largest_two_clusters_share_max"]["1"] < 0.3
    assert s["loss_fraction_at_condensation_min"] > 0.95 and s["time_to_condense_median"]["0.001"] <= 150
    # the two clusters are one line through the origin: some kernel pairs have cosine ~ -1
    ds = sweep.load(tmp_path / "results.nc")
    k = cc.kernel_stats(ds, config)
    w = ds.neuron_weights.sel(init_scale=1e-3, seed=0, step=int(k.time.sel(init_scale=1e-3, seed=0))).values
    assert analysis.cosine_similarity(w).min() < -0.9
