"""Lazy-to-rich grokking (Kumar et al. 2024) in a small version: the polynomial task
y = (beta . x)^2 / 2 (D = 100, P = 550) on the paper's readout-free network at width 100,
1000 GD steps, alpha = 0.5, 1, 2."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from engine import experiment
from engine.errors import ConfigError
from engine.probes import ntk_gram
from experiments import grokking_lazy_rich as glr


def test_delay_between_train_and_test_loss_grows_with_alpha(tmp_path):
    """Width 100 with lr 4000, i.e. their eta = 20 N / alpha^2 (their Fig. 3e rate), 500 test
    points, 1000 steps, one seed. Measured: kernel-regression test loss 0.330; t_train
    15 / 20 / 35, t_test 30 / 55 / 110, delay 15 / 35 / 75 for alpha 0.5 / 1 / 2; test loss
    at t_train 0.72-0.80 x the kernel level (peak before it: 1.31-1.45 x)."""
    config = {**glr.PRESETS["quick"], "width": 100, "n_test": 500, "steps": 1000,
              "output_scales": [0.5, 1.0, 2.0]}
    s = experiment.run(glr, config, tmp_path, progress=False)
    per = [s["per_alpha"][f"alpha={a:g}"] for a in config["output_scales"]]
    delays = [p["delay"] for p in per]
    assert all(d is not None for d in delays), per
    assert delays[0] < delays[1] < delays[2] and delays[2] > 2 * delays[0], delays
    assert all(p["t_train"] < p["t_test"] for p in per), per
    assert 0.5 < per[-1]["test_over_kernel_at_t_train"] < 1.5, per
    assert all(s["claims"].values()), s["claims"]
    assert json.loads((tmp_path / "summary.json").read_text())["claims"] == s["claims"]
    assert (tmp_path / "grokking_lazy_rich.png").exists()


@pytest.mark.parametrize("task", ["polynomial", "modular"])
def test_closed_form_ntk_matches_autodiff(task):
    """`initial_ntk` (traced over outputs, divided by their number) against the Gram matrix of
    parameter gradients, on a small network."""
    config = {**glr.PRESETS["quick"], "task": task, "d": 7, "n_train": 5, "n_test": 3, "p": 5,
              "train_fraction": 0.5, "width": 6}
    model, d = glr.task_of(config)
    params = model.init(jax.random.key(1))
    x = jnp.asarray(d.x[:5])
    outputs = d.y.shape[-1]
    autodiff = sum(ntk_gram(model.apply, params, x, jnp.eye(outputs)[j]) for j in range(outputs)) / outputs
    np.testing.assert_allclose(glr.initial_ntk(config, params, x, x), autodiff, rtol=1e-4, atol=1e-6)
    assert ravel_pytree(params)[0].size == (7 * 6 if task == "polynomial" else 10 * 6 + 6 * 5)


def test_bad_task_is_a_config_error():
    with pytest.raises(ConfigError, match="task"):
        glr.run_sweep({**glr.PRESETS["quick"], "task": "sparse_parity"})
