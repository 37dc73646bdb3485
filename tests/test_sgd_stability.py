import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from engine import experiment, sweep
from engine.errors import ConfigError
from experiments import sgd_stability as sgd

SANITY = {**sgd.PRESETS["sanity"], "batch_sizes": [4, 16], "lrs": [0.2], "seeds": 1, "steps": 300,
          "curvature_every": 100, "noise_every": 300, "noise_batches": 4}
EDGE = {**sgd.PRESETS["quick"], "batch_sizes": [32], "lrs": [0.2], "steps": 6000, "curvature_every": 1500,
        "noise_every": 6000, "noise_batches": 2, "frobenius_samples": 2}
EOSS = "EoSS: late batch sharpness within 10% of 2/eta (2 standard errors allowed) for every (B, eta) that trains"


def test_batch_sharpness_rises_to_two_over_eta_and_stays_there_on_random_labels(tmp_path):
    """The quick preset's one cell that trains, (B=32, eta=0.2), cut to 6000 steps: 1797
    digits with shuffled labels, the authors' network narrowed (64-256-256-10 ReLU, He x
    0.2), one seed; 38-90 s on 2 shared cores. Measured: batch sharpness 0.12 of 2/eta at
    step 0, at the edge from step ~4300; over the last quarter (steps 4500-6000) 0.997 of
    2/eta, standard error 0.009: EoSS holds here. lambda_max there 0.98 of 2/eta, just
    below the edge; final loss 0.034 (from 0.50)."""
    summary = experiment.run(sgd, EDGE, tmp_path, progress=False)
    cell = summary["cells"]["B=32, lr=0.2"]
    assert cell["trains"] and summary["diverged_runs"] == 0 and summary["judged_cells"] == ["B=32, lr=0.2"]
    ds = sweep.load(tmp_path / "results.nc")
    start = float(ds.batch_sharpness.isel(step=0).squeeze()) / cell["two_over_eta"]
    assert start < 0.2, start  # it rises to the edge: it does not start there
    ratio = cell["late_batch_sharpness_over_threshold"]
    error = cell["late_batch_sharpness_standard_error_over_threshold"]
    assert 0 < error < 0.03 and abs(ratio - 1) <= 0.1 + 2 * error, cell
    assert summary["claims"][EOSS]
    assert 0.8 < cell["late_sharpness_over_threshold"] < 1, cell  # lambda_max plateaus just below 2/eta
    assert summary["claims"]["late full-batch lambda_max below 2/eta for every (B, eta) that trains"]


def test_lambda_max_sits_below_two_over_eta_and_grows_with_the_batch_on_64_digits(tmp_path):
    """The sanity preset (the issue's CPU sanity setting) shrunk: 64 true-label digits,
    64-32-32-10 tanh, eta 0.2, B 4 and 16, one seed, 300 steps. Measured: late lambda_max
    0.32 and 0.59 of 2/eta (lower for the smaller batch: SGD at B=4 starts with batch
    sharpness 1.38x 2/eta and leaves that region), late batch sharpness 0.58 and 0.35 of
    2/eta with standard errors 0.017 and 0.012: below the edge by far more than its
    error, so the EoSS claim does not hold on 64 digits (fitted before the edge);
    ||H||_F (16, 23) >= lambda_max (3.2, 5.9)."""
    summary = experiment.run(sgd, SANITY, tmp_path, progress=False)
    assert {"results.nc", "summary.json", "sgd_stability_lr0.2.png"} <= {p.name for p in tmp_path.iterdir()}
    cells = json.loads((tmp_path / "summary.json").read_text())["cells"]
    small, large = cells["B=4, lr=0.2"], cells["B=16, lr=0.2"]
    assert small["trains"] and large["trains"] and summary["diverged_runs"] == 0
    assert small["late_sharpness_over_threshold"] < large["late_sharpness_over_threshold"] < 0.9
    assert summary["claims"]["late lambda_max increases with B at every eta"]
    assert summary["claims"]["late full-batch lambda_max below 2/eta for every (B, eta) that trains"]
    for c in (small, large):  # below the edge by far more than the estimate's error
        ratio, error = c["late_batch_sharpness_over_threshold"], c["late_batch_sharpness_standard_error_over_threshold"]
        assert 0.2 < ratio < 0.8 and 0 < error and 1 - ratio - 0.1 > 4 * error, c
    assert not summary["claims"][EOSS]
    ds = sweep.load(tmp_path / "results.nc")
    assert ds.batch_sharpness.dims == ("seed", "batch_size", "lr", "step")
    final = ds.isel(step=-1)
    assert bool((final.hessian_frobenius >= final.sharpness).all())  # ||H||_F >= ||H||_2
    assert np.isfinite(final.non_uniformity).all() and bool((final.non_uniformity > 0).all())


def test_bad_config_is_a_clear_config_error(tmp_path):
    for field, change in (("batch_sizes", {"batch_sizes": [4, 64]}), ("noise_every", {"noise_every": 70}),
                          ("labels", {"labels": "random"}), ("init", {"init": "xavier"})):
        with pytest.raises(ConfigError, match=field):
            experiment.run(sgd, {**SANITY, **change}, tmp_path / field, progress=False)
        assert not (tmp_path / field).exists()


EIGHT_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from engine import data, init, models, optim, probes, simulate, sweep
    model = models.mlp((64, 32, 32, 10), "tanh")  # the quick preset's network, data and batch size
    sim = simulate.simulation(model, data.digits(n_train=64), "mse", optim.gd(), init.scaled(model), steps=60,
                              every=20, batch_size=4, probes=("loss", probes.batch_sharpness(4)))
    grid = {"lr": [0.05, 0.2]}
    one = sweep.sweep(sim, grid=grid, seeds=3, devices=jax.devices()[:1])
    eight = sweep.sweep(sim, grid=grid, seeds=3)                       # 6 runs over 8 devices, padded
    chunked = sweep.sweep(sim, grid=grid, seeds=3, devices=jax.devices()[:1], chunk=4)
    assert "x8" in eight.attrs["device"] and "x1" in one.attrs["device"]
    alone = jax.jit(sim.run)(jax.random.fold_in(jax.random.key(0), 2), {"lr": 0.2})
    np.testing.assert_array_equal(one.loss.sel(seed=2, lr=0.2), alone["loss"])
    for other in (eight, chunked):
        np.testing.assert_array_equal(other.loss.values, one.loss.values)
        np.testing.assert_allclose(other.batch_sharpness.values, one.batch_sharpness.values, rtol=1e-5)
    assert len(set(one.loss.isel(step=-1).values.ravel().tolist())) == 6  # the seeds' batches differ
    print("OK")
""")


def test_minibatch_runs_are_the_same_alone_chunked_and_on_eight_devices():
    """The experiment's path (its network, 64 digits, minibatches of 4 drawn from each
    run's key, the batch-sharpness probe): the same minibatch trajectory bit for bit
    alone, in a batch, in chunks of 4 and sharded over 8 simulated devices; the batch
    sharpness within 1e-5. (Same-key minibatch runs: tests/test_simulate.py; minibatch
    runs alone, batched and chunked with dropout: tests/test_dropout.py; GD on 8
    devices: tests/test_sweep.py. Minibatch runs on 8 devices were not covered.)"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
