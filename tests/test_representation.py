"""Probes of what the network represents (grokking): layer norms, logit norm, Softmax
Collapse, the NTK's distance from its start and the power per frequency over an input
grid, each against a direct computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import data, models, optim, probes, simulate, sweep
from engine.errors import ConfigError
from engine.probes import Snapshot


def snapshot(params, predict, d):
    return Snapshot(params=params, loss_fn=None, objective=None, predict=predict, data=d, loss=None,
                    opt_state=None, update=None, key=jax.random.key(0), first=True)


def test_layer_norms_and_logit_norm_are_the_direct_ones():
    model = models.mlp((3, 8, 4), "tanh")
    params = model.init(jax.random.key(1))
    d = data.Dataset(jax.random.normal(jax.random.key(2), (5, 3)), jnp.eye(4)[jnp.arange(5) % 4])
    snap = snapshot(params, model.apply, d)
    norms, _ = probes.probe("weight_norm_layer").measure(snap, None)
    want = [np.sqrt(sum(np.sum(np.square(v)) for v in jax.tree.leaves(layer))) for _, layer in models.layers(params)]
    np.testing.assert_allclose(norms["weight_norm_layer"], want, rtol=1e-6)
    logits, _ = probes.probe("logit_norm").measure(snap, None)
    out = np.asarray(model.apply(params, d.x), np.float64)
    np.testing.assert_allclose(logits["logit_norm"], np.mean(np.linalg.norm(out, axis=1)), rtol=1e-6)


def test_softmax_collapses_at_a_smaller_logit_gap_in_lower_precision():
    """Correct-class logit ahead by 12: exp(-12) = 6e-6 is below float16's half-ulp of 1
    (2.4e-4) but not float32's (6e-8), so the softmax is exactly 1 in float16 only; at
    a gap of 40 it is exactly 1 in float32 too. One of four examples is misclassified."""
    y = jnp.eye(3)[jnp.array([0, 1, 2, 0])]
    for gap, collapsed16, collapsed32 in ((12.0, 0.75, 0.0), (40.0, 0.75, 0.75)):
        logits = gap * y.at[3].set(jnp.array([0.0, 1.0, 0.0]))
        snap = snapshot({"w": jnp.zeros(1)}, lambda p, x: x, data.Dataset(logits, y))
        for dtype, want in (("float16", collapsed16), ("float32", collapsed32)):
            got, _ = probes.softmax_collapse(dtype).measure(snap, None)
            assert float(got["softmax_collapse"]) == want, (gap, dtype)
    with pytest.raises(ConfigError, match="probes.dtype"):
        probes.softmax_collapse("float8")


def test_the_ntk_distance_is_the_kernel_distance_of_the_dense_jacobians():
    model = models.mlp((2, 16, 1), "tanh")
    x = jax.random.normal(jax.random.key(3), (6, 2))
    d = data.Dataset(x, jnp.zeros((6, 1)))
    params0 = model.init(jax.random.key(4))
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(5), a.shape), params0)
    probe = probes.ntk_distance(examples=6)
    at_start, _ = probe.measure(snapshot(params0, model.apply, d), params0)
    assert abs(float(at_start["ntk_distance"])) < 1e-6
    got, _ = probe.measure(snapshot(params, model.apply, d), params0)

    def kernel(p):
        flat, unravel = jax.flatten_util.ravel_pytree(p)
        J = np.asarray(jax.jacobian(lambda f: model.apply(unravel(f), x)[:, 0])(flat), np.float64)
        return J @ J.T
    K, K0 = kernel(params), kernel(params0)
    want = 1 - np.sum(K * K0) / (np.linalg.norm(K) * np.linalg.norm(K0))
    assert want > 1e-3
    np.testing.assert_allclose(float(got["ntk_distance"]), want, rtol=1e-4)


def test_a_large_output_scale_keeps_the_ntk_where_it_started():
    """Lazy training (Chizat et al. 2019): the centred model alpha (f - f_0) trained on
    L / alpha^2 moves its NTK ~1/alpha as far. 1-32-1 tanh, GD 200 steps."""
    model = models.mlp((1, 32, 1), "tanh")
    sim = simulate.simulation(model, data.chebyshev(3, 20), "mse", optim.gd(lr=0.2), steps=200, every=100,
                              probes=("loss", probes.ntk_distance(examples=20)), output_scale=1.0)
    ds = sweep.sweep(sim, {"output_scale": [1.0, 100.0]}, progress=False).isel(seed=0, step=-1)
    rich, lazy = (float(ds.ntk_distance.sel(output_scale=a)) for a in (1.0, 100.0))
    assert rich > 1e-2 and lazy < rich / 30, (rich, lazy)


def test_the_output_spectrum_of_a_pure_frequency_sits_at_that_frequency():
    """f(a, b) = cos(2 pi k (a + b) / p) on the grid Z_p^2 has all its power at the
    frequencies (k, k) and (-k, -k); Parseval: the power sums to mean f^2 * grid size."""
    p, k = 7, 2
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    grid = np.stack([a.ravel(), b.ravel()], 1).astype(np.float32)
    predict = lambda params, x: jnp.cos(2 * jnp.pi * k * (x[:, 0] + x[:, 1]) / p)[:, None]
    snap = snapshot({"w": jnp.zeros(1)}, predict, data.Dataset(grid, np.zeros((p * p, 1), np.float32)))
    power = np.asarray(probes.output_spectrum(grid, (p, p)).measure(snap, None)[0]["output_power"])
    assert power.shape == (p, p)
    peaks = sorted(zip(*np.nonzero(power > 1e-3 * power.max())))
    assert peaks == [(k, k), (p - k, p - k)]
    np.testing.assert_allclose(power.sum(), 0.5 * p * p, rtol=1e-5)
    with pytest.raises(ConfigError, match="probes.grid_x"):
        probes.output_spectrum(grid[:-1], (p, p))


def test_the_residual_spectrum_is_the_masked_dft_of_softmax_minus_targets():
    """Random logits on Z_5 x Z_5 with 3 classes: train_residual, test_residual and
    output_power against numpy's fft2 of the masked softmax residual (rel 1e-5); a
    perfect classifier leaves no residual; wrong sizes are refused."""
    p, c = 5, 3
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(p * p, c)).astype(np.float32) * 2
    y = np.eye(c, dtype=np.float32)[rng.integers(0, c, p * p)]
    mask = rng.random(p * p) < 0.4
    x = np.zeros((p * p, 1), np.float32)
    snap = snapshot({"w": jnp.zeros(1)}, lambda params, x: jnp.asarray(logits), data.Dataset(x, y))
    probe = probes.residual_spectrum(x, y, mask, (p, p), dims=("k_a", "k_b"))
    out = probe.measure(snap, None)[0]
    h = np.exp(logits - logits.max(1, keepdims=True))
    h = (h / h.sum(1, keepdims=True)).reshape(p, p, c)
    S = mask.reshape(p, p, 1).astype(float)
    norm = lambda g: np.sqrt((np.abs(np.fft.fft2(g, axes=(0, 1))) ** 2).sum(-1))
    r = h - y.reshape(p, p, c)
    np.testing.assert_allclose(out["train_residual"], norm(r * S), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["test_residual"], norm(r * (1 - S)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["output_power"], norm(h) ** 2, rtol=1e-5)
    assert probe.outputs["train_residual"] == ("k_a", "k_b") and probe.coords["k_a"] == list(range(p))
    perfect = snapshot({"w": jnp.zeros(1)}, lambda params, x: 60.0 * jnp.asarray(y), data.Dataset(x, y))
    assert float(np.max(probe.measure(perfect, None)[0]["train_residual"])) < 1e-6
    with pytest.raises(ConfigError, match="probes.train_mask"):
        probes.residual_spectrum(x, y, mask[:-1], (p, p))
