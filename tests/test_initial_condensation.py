import json

import numpy as np
import xarray as xr

from engine import analysis, experiment
from experiments import initial_condensation as ic


def test_small_init_condenses_onto_at_most_2p_orientations_before_the_fit(tmp_path):
    config = {**ic.PRESETS["quick"], "activations": ["tanh", "xtanh"], "gammas": [1.0, 3.0], "seeds": 1,
              "steps": 400}
    experiment.run(ic, config, tmp_path, progress=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert all(s["claims"].values()), s["claims"]
    # multiplicity shows: tanh (p = 1) on one line (2 orientations), x tanh (p = 2) on more
    assert s["clusters_at_condensation_max"] == {"tanh": 2.0, "xtanh": 4.0}
    assert min(s["loss_fraction_at_condensation_min"].values()) > 0.95
    for a in ("tanh", "xtanh"):  # condensing takes < 1/4 the time at the small scale
        t = s["time_to_condense_median"][a]
        assert t["3"] < 0.25 * (t["1"] if np.isfinite(t["1"]) else np.inf), t


def test_orientation_clusters_count_directions_not_lines():
    rng = np.random.default_rng(0)
    u, v = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0]) / np.sqrt(2)
    rows = np.concatenate([u + 0.01 * rng.normal(size=(30, 3)), -2 * u + 0.01 * rng.normal(size=(20, 3)),
                           3 * v + 0.01 * rng.normal(size=(10, 3))])
    assert list(analysis.orientation_clusters(rows, 0.95)) == [30, 20, 10]
    share = analysis.condensation(xr.DataArray(rows[None], dims=("run", "neuron", "fan_in")), 2)
    assert abs(float(share.condensed_share[0]) - 50 / 60) < 1e-12 and int(share.clusters[0]) == 3
    cos = analysis.cosine_similarity(rows)
    np.testing.assert_allclose(np.diag(cos), 1.0)
    assert cos[0, 30] < -0.99 and abs(cos[0, 50]) < 0.05
    order = analysis.cluster_order(rows)
    assert sorted(order) == list(range(60))
