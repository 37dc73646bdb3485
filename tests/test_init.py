import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import init, models
from engine.errors import ConfigError


def test_luo_scales_match_gamma_and_gamma_prime():
    m = 4000
    model = models.mlp((1, m, 1), "relu", output_bias=False)
    gamma, gamma_p = 1.5, 0.5
    params = init.luo(model).sample(jax.random.key(0), {"gamma": gamma, "gamma_prime": gamma_p})
    beta1 = float(jnp.std(params[1]["w"]))
    beta2 = float(jnp.std(jnp.concatenate([params[0]["w"].ravel(), params[0]["b"]])))
    # gamma = -log(beta1 beta2)/log m, gamma' = -log(beta1/beta2)/log m (alpha = 1)
    assert -np.log(beta1 * beta2) / np.log(m) == pytest.approx(gamma, abs=0.01)
    assert -np.log(beta1 / beta2) / np.log(m) == pytest.approx(gamma_p, abs=0.01)


def test_width_power_std_per_layer():
    model = models.mlp((2, 3000, 3000, 1), "tanh")
    hp = {"gamma_0": 0.5, "gamma_1": 1.0, "gamma_2": 0.25}
    params = init.width_power(model, per_layer=True).sample(jax.random.key(0), hp)
    for l, g in enumerate(hp.values()):
        assert float(jnp.std(params[l]["w"])) == pytest.approx(3000.0 ** -g, rel=0.05)


def test_init_scale_is_traceable_and_vmappable():
    model = models.mlp((1, 64, 1), "relu")
    scheme = init.width_power(model)
    stds = jax.vmap(lambda g: jnp.std(scheme.sample(jax.random.key(0), {"gamma": g})[0]["w"]))(
        jnp.array([0.25, 0.5, 1.0]))
    np.testing.assert_allclose(stds / stds[0], 64.0 ** -(jnp.array([0.25, 0.5, 1.0]) - 0.25), rtol=1e-5)


@pytest.mark.parametrize("widths", [(1, 10, 1), (3, 6, 8, 2)])
def test_antisymmetric_output_is_zero_at_init(widths):
    model = models.mlp(widths, "tanh")
    scheme = init.antisymmetric(model, init.width_power(model, gamma=0.3))
    params = scheme.sample(jax.random.key(3), scheme.defaults)
    x = jax.random.normal(jax.random.key(4), (11, widths[0]))
    plain = init.width_power(model, gamma=0.3).sample(jax.random.key(3), scheme.defaults)
    scale = float(jnp.max(jnp.abs(model.apply(plain, x))))
    assert float(jnp.max(jnp.abs(model.apply(params, x)))) < 1e-5 * scale  # zero up to rounding


@pytest.mark.parametrize("kind,var", [("lecun", lambda fi, fo: 1 / fi), ("he", lambda fi, fo: 2 / fi),
                                      ("xavier", lambda fi, fo: 2 / (fi + fo))])
def test_standard_initializations(kind, var):
    model = models.mlp((500, 300, 10), "relu")
    params = init.standard(model, kind).sample(jax.random.key(0), {"init_scale": 2.0})
    w = params[0]["w"]
    assert float(jnp.var(w)) == pytest.approx(4.0 * var(500, 300), rel=0.03)
    assert float(jnp.max(jnp.abs(params[0]["b"]))) == 0.0


def test_scaled_works_for_flax_models():
    model = models.cnn((6, 6, 1), channels=(3,), out_dim=2)
    scheme = init.scaled(model)
    a = scheme.sample(jax.random.key(0), {"init_scale": 1.0})
    b = scheme.sample(jax.random.key(0), {"init_scale": 0.1})
    jax.tree.map(lambda x, y: np.testing.assert_allclose(0.1 * x, y, rtol=1e-6), a, b)


def test_cohen_small_is_xavier_with_gain_on_the_first_layer():
    """std = gain * sqrt(2 / (fan_in + fan_out)): 1.9 sqrt(2/101) in, sqrt(2/101) out,
    biases zero, no output bias (the model's)."""
    model = models.mlp((1, 100, 1), "tanh", output_bias=False)
    scheme = init.cohen_small(model)
    ws = [scheme.sample(jax.random.key(s), {"init_scale": 1.0}) for s in range(200)]
    first = np.concatenate([np.ravel(w[0]["w"]) for w in ws])
    out = np.concatenate([np.ravel(w[1]["w"]) for w in ws])
    np.testing.assert_allclose(first.std(), 1.9 * np.sqrt(2 / 101), rtol=0.02)
    np.testing.assert_allclose(out.std(), np.sqrt(2 / 101), rtol=0.02)
    assert all(not np.any(w[0]["b"]) for w in ws) and "b" not in ws[0][1]
    with pytest.raises(ConfigError, match="gains"):
        init.standard(model, "xavier", gains=(1.0,))


def test_fan_in_power_draws_every_weight_at_d_in_to_the_minus_gamma():
    """A 2-block transformer (d_model 64, 4 heads, MLP 256): each kernel's and
    embedding's empirical std within 10% of d_in^-gamma (d_in = d_model for the
    embeddings, the attention projections and the MLP's input layer, 4 d_model = 256 for
    its output layer, heads x head_dim = 64 for the attention output); biases 0,
    LayerNorm scales 1."""
    model = models.transformer(vocab=97, seq_len=8, d_model=64, heads=4, depth=2)
    gamma = 0.8
    params = init.fan_in_power(model).sample(jax.random.key(1), {"gamma": jnp.float32(gamma)})
    drawn = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = init._names(path)
        d = init.fan_in(names, leaf.shape)
        if d is None:
            np.testing.assert_array_equal(leaf, 1.0 if names[-1] == "scale" else 0.0, err_msg=str(names))
            continue
        expected_d = {"Dense_1": 256, "Dense_3": 256, "out": 64}.get(names[-2] if len(names) > 1 else "", 64)
        assert d == expected_d, names
        assert float(jnp.std(leaf)) == pytest.approx(d ** -gamma, rel=0.1), names
        drawn += 1
    assert drawn == 2 * 6 + 3  # per block: q, k, v, out, two MLP kernels; embedding, positions, readout


def test_fan_in_power_vmapped_over_gamma_equals_each_alone():
    model = models.transformer(vocab=11, seq_len=4, d_model=8, heads=2)
    scheme = init.fan_in_power(model)
    gammas = jnp.array([0.3, 0.6, 1.2])
    batched = jax.vmap(lambda g: scheme.sample(jax.random.key(3), {"gamma": g}))(gammas)
    for i, g in enumerate(gammas):
        alone = scheme.sample(jax.random.key(3), {"gamma": g})
        jax.tree.map(lambda b, a: np.testing.assert_allclose(b[i], a, rtol=1e-6), batched, alone)
    # an MLP: its layers are {"w", "b"}
    mlp = models.mlp((3, 50, 2))
    p = init.fan_in_power(mlp).sample(jax.random.key(0), {"gamma": 1.0})
    assert float(jnp.abs(p[0]["b"]).max()) == 0.0 and p[1]["w"].shape == (50, 2)


def test_fan_in_power_refuses_a_nonpositive_gamma():
    with pytest.raises(ConfigError, match="gamma"):
        init.fan_in_power(models.mlp((2, 3, 1)), gamma=0.0)


def test_constant_std_draws_every_weight_at_init_std_whatever_the_width():
    """Two transformer widths: every weight matrix and embedding has empirical std within
    10% of init_std (traced), biases 0, LayerNorm scales 1; vmapped equals alone."""
    for d_model in (32, 64):
        model = models.transformer(vocab=50, seq_len=8, d_model=d_model, heads=2, depth=1)
        scheme = init.constant_std(model)
        assert scheme.defaults == {"init_std": 0.02}
        params = scheme.sample(jax.random.key(1), {"init_std": jnp.float32(0.05)})
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            names = init._names(path)
            if init.fan_in(names, leaf.shape) is None:
                assert set(np.unique(np.asarray(leaf))) <= {0.0, 1.0}, names
            else:
                assert float(jnp.std(leaf)) == pytest.approx(0.05, rel=0.1), names
    batched = jax.vmap(lambda s: scheme.sample(jax.random.key(3), {"init_std": s}))(jnp.array([0.02, 0.1]))
    alone = scheme.sample(jax.random.key(3), {"init_std": jnp.float32(0.1)})
    jax.tree.map(lambda b, a: np.testing.assert_allclose(b[1], a, rtol=1e-6), batched, alone)
    with pytest.raises(ConfigError, match="init_std"):
        init.constant_std(model, std=0.0)
