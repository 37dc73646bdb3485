import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine import models


@pytest.mark.parametrize("name", sorted(models.ACTIVATIONS))
def test_every_activation_runs_and_matches_its_formula(name):
    x = jnp.linspace(-2, 2, 9)
    y = models.activation_function(name)(x)
    expected = {"relu": np.maximum(x, 0), "tanh": np.tanh(x), "linear": x,
                "sigmoid": 1 / (1 + np.exp(-x)), "softplus": np.log1p(np.exp(x)),
                "xtanh": x * np.tanh(x), "x2tanh": x**2 * np.tanh(x), "quadratic": x**2}
    if name in expected:
        np.testing.assert_allclose(y, expected[name], rtol=1e-5, atol=1e-6)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


def test_multiplicity_family_has_the_right_order_of_zero():
    # phi^(s)(0) = 0 for s < p, nonzero for s = p (p = 1, 2, 3).
    for name, p in (("tanh", 1), ("xtanh", 2), ("x2tanh", 3)):
        f = models.activation_function(name)
        derivs = [f]
        for _ in range(p):
            derivs.append(jax.grad(derivs[-1]))
        assert all(abs(float(d(0.0))) < 1e-7 for d in derivs[:p])
        assert abs(float(derivs[p](0.0))) > 0.5


@pytest.mark.parametrize("widths", [(3, 1), (2, 5, 1), (4, 8, 8, 8, 3)])
def test_mlp_shapes_and_bias(widths):
    m = models.mlp(widths, "tanh")
    params = m.init(jax.random.key(0))
    assert len(params) == len(widths) - 1
    assert [p["w"].shape for p in params] == list(zip(widths[:-1], widths[1:]))
    assert m.apply(params, jnp.ones((7, widths[0]))).shape == (7, widths[-1])
    nob = models.mlp(widths, "tanh", bias=False).init(jax.random.key(0))
    assert all("b" not in p for p in nob)
    no_out = models.mlp(widths, "tanh", output_bias=False).init(jax.random.key(0))
    assert "b" not in no_out[-1] and ("b" in no_out[0]) == (len(widths) > 2)


def test_parameterizations_give_the_same_function_class():
    # NTK with W ~ N(0,1) and multiplier 1/sqrt(fan_in) equals standard with W/sqrt(fan_in).
    std, ntk = models.mlp((3, 16, 2), "tanh"), models.mlp((3, 16, 2), "tanh", parameterization="ntk")
    p = ntk.init(jax.random.key(1))
    q = tuple({"w": l["w"] / np.sqrt(l["w"].shape[0]), "b": l["b"]} for l in p)
    x = jax.random.normal(jax.random.key(2), (5, 3))
    np.testing.assert_allclose(ntk.apply(p, x), std.apply(q, x), rtol=1e-5)
    mf = models.mlp((3, 16, 2), "tanh", parameterization="mean_field")
    assert mf.multipliers[-1] == pytest.approx(1 / 16)


def test_cnn_is_a_model():
    m = models.cnn((8, 8, 1), channels=(4,), out_dim=3)
    params = m.init(jax.random.key(0))
    assert m.apply(params, jnp.ones((2, 8, 8, 1))).shape == (2, 3)
    assert [n for n, _ in models.layers(params)] == sorted(params)


def test_small_transformer_is_a_model():
    m = models.transformer(vocab=7, seq_len=3, d_model=16, heads=2)
    params = m.init(jax.random.key(0))
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert m.apply(params, x).shape == (2, 7)
    assert not np.allclose(m.apply(params, x), m.apply(params, x.at[:, 0].set(0.0)))  # sees every token
    grads = jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_nandas_transformer_has_no_layer_norm_and_a_relu_mlp():
    """layer_norm=False drops every LayerNorm's parameters; the activation changes the
    function, not the parameters."""
    x = jnp.array([[1.0, 2.0, 7.0], [4.0, 5.0, 7.0]])
    with_ln = models.transformer(vocab=8, seq_len=3, d_model=16, heads=2).init(jax.random.key(0))
    m = models.transformer(vocab=8, seq_len=3, d_model=16, heads=2, layer_norm=False, activation="relu")
    gelu = models.transformer(vocab=8, seq_len=3, d_model=16, heads=2, layer_norm=False)
    params = m.init(jax.random.key(0))
    assert any("LayerNorm" in k for k in with_ln) and not any("LayerNorm" in k for k in params)
    assert jax.tree.structure(params) == jax.tree.structure(gelu.init(jax.random.key(0)))
    assert not np.allclose(m.apply(params, x), gelu.apply(params, x))
    assert m.apply(params, x).shape == (2, 8) and bool(jnp.all(jnp.isfinite(m.apply(params, x))))
