"""Dropout: a traced rate, masks from the run's key and step, exact at rate 0."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import data, models, optim, probes, simulate, sweep
from tests.test_sweep import assert_bitwise


def _models():
    return [(models.mlp((4, 16, 16, 3), "tanh"), jnp.ones((5, 4))),
            (models.cnn((6, 6, 2), channels=(4, 4), out_dim=3), jnp.ones((5, 6, 6, 2))),
            (models.transformer(vocab=7, seq_len=3, d_model=8, heads=2), jnp.array([[1.0, 2, 3]] * 5))]


@pytest.mark.parametrize("i", range(3), ids=["mlp", "cnn", "transformer"])
def test_rate_zero_is_the_network_without_dropout_bit_for_bit(i):
    model, x = _models()[i]
    params = model.init(jax.random.key(0))
    dropped = jax.jit(lambda p, rate: model.train_apply(p, x, jax.random.key(1), rate))
    plain = jax.jit(model.apply)(params, x)
    np.testing.assert_array_equal(dropped(params, 0.0), plain)
    assert not np.array_equal(dropped(params, 0.5), plain)
    grads = [jax.jit(jax.grad(lambda p: jnp.sum(f(p) ** 2)))(params)
             for f in (lambda p: model.apply(p, x), lambda p: dropped(p, 0.0))]
    jax.tree.map(np.testing.assert_array_equal, *grads)


def test_a_run_at_rate_zero_is_the_run_without_dropout():
    model, d = models.mlp((64, 16, 10), "tanh"), data.digits(n_train=100)
    make = lambda **kw: simulate.simulation(model, d, "cross_entropy", optim.gd(lr=0.5), steps=20, every=10,
                                            probes=("loss", "accuracy", "param_norm"), batch_size=25, **kw)
    plain, dropped = (jax.jit(sim.run)(jax.random.key(3)) for sim in (make(), make(dropout=0.0)))
    for name in plain:
        np.testing.assert_array_equal(dropped[name], plain[name], err_msg=name)


@pytest.mark.parametrize("i", range(2), ids=["mlp", "cnn"])
def test_the_mean_output_over_masks_is_the_deterministic_output(i):
    """One dropped hidden layer before a linear readout: E_mask[f] = f without dropout.
    4000 masks at rate 0.3; every output within 4.5 standard errors (a false alarm
    somewhere among the 15 outputs has probability ~1e-4)."""
    model = [models.mlp((4, 32, 3), "tanh"), models.cnn((6, 6, 2), channels=(8,), out_dim=3)][i]
    x = [jax.random.normal(jax.random.key(5), (5, 4)), jax.random.normal(jax.random.key(5), (5, 6, 6, 2))][i]
    params = model.init(jax.random.key(0))
    outs = jax.jit(jax.vmap(lambda k: model.train_apply(params, x, k, 0.3)))(jax.random.split(jax.random.key(2), 4000))
    mean, se = outs.mean(0), outs.std(0, ddof=1) / np.sqrt(outs.shape[0])
    z = np.abs(mean - model.apply(params, x)) / se
    assert float(z.max()) < 4.5, z
    assert float(se.min()) > 0  # the masks do vary the output


def _dropout_sim(probes=("loss", probes.every(20, "sharpness"))):
    model = models.mlp((64, 16, 10), "tanh")
    return simulate.simulation(model, data.digits(n_train=120), "cross_entropy", optim.gd(lr=0.5), steps=30,
                               every=10, probes=probes, batch_size=40, dropout=0.2)


def test_the_same_key_gives_the_same_dropout_trajectory_alone_batched_and_chunked():
    """Bit for bit within a batching strategy; a vmapped batch multiplies matrices in
    another order (one float32 ulp), as every sweep does."""
    sim = _dropout_sim()
    grid = {"dropout": [0.0, 0.1, 0.5]}
    one = sweep.sweep(sim, grid=grid, seeds=2)
    assert_bitwise(one, sweep.sweep(sim, grid=grid, seeds=2, chunk=4, segment=1))
    wide = sweep.sweep(sim, grid=grid, seeds=2, strategy="vmap")
    for name in one.data_vars:
        np.testing.assert_allclose(wide[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    alone = jax.jit(sim.run)(jax.random.fold_in(jax.random.key(0), 1), {"dropout": 0.5})
    np.testing.assert_array_equal(one.loss.sel(seed=1, dropout=0.5), alone["loss"])
    assert np.isnan(one.sharpness.sel(step=10)).all() and np.isfinite(one.sharpness.sel(step=20)).all()
    losses = one.loss.isel(step=-1, seed=0).values
    assert len(set(losses.tolist())) == 3  # the rate does change the run


def test_a_curvature_probe_can_see_one_fixed_mask():
    """with_dropout_mask: the Hessian of one mask's objective, the same mask for every
    product of the solve, so Lanczos converges; it differs from the deterministic one."""
    sim = _dropout_sim(probes=("loss", probes.sharpness(), probes.with_dropout_mask(
        probes.directional_curvature())))
    t = jax.jit(sim.run)(jax.random.key(0), {"dropout": 0.3})
    assert np.all(np.isfinite(t["directional_curvature"]))
    plain = jax.jit(_dropout_sim(probes=("loss", "directional_curvature")).run)(jax.random.key(0), {"dropout": 0.3})
    assert not np.allclose(t["directional_curvature"], plain["directional_curvature"], rtol=1e-3)


EIGHT_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    from engine import anchors, init, models, optim, simulate, sweep
    assert jax.device_count() == 8, jax.devices()
    model = models.mlp((8, 64, 100), "relu")
    sim = simulate.simulation(model, anchors.composite(n=4, seed=0), "cross_entropy",
                              optim.adamw(lr=1e-3, weight_decay=0.01), init.scaled(model), steps=12, every=4,
                              probes=("loss", "accuracy"), batch_size=20, dropout=0.0)
    grid = {"init_scale": [0.5, 1.0, 1.5, 2.0], "dropout": [0.0, 0.1]}
    eight = sweep.sweep(sim, grid=grid, seeds=2, progress=False)
    one = sweep.sweep(sim, grid=grid, seeds=2, progress=False, devices=jax.devices()[:1])
    for name in ("loss", "accuracy"):
        np.testing.assert_array_equal(eight[name].values, one[name].values, err_msg=name)
    print("OK")
""")


def test_a_swept_dropout_rate_gives_the_same_runs_on_eight_simulated_devices():
    """With the rate as a grid axis, dropout's elementwise division by (1 - rate) was
    compiled differently in the 8-device program: 3 of 64 losses differed by one ulp.
    The scale is now one scalar division and a product: bit for bit."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
