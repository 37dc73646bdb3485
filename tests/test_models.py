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


def test_transformer_readout_all_gives_every_position_and_the_last_equals_readout_last():
    kw = dict(vocab=13, seq_len=5, d_model=16, heads=2, depth=2)
    last, every = models.transformer(**kw), models.transformer(**kw, readout="all")
    params = last.init(jax.random.key(0))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, every.init(jax.random.key(0)))
    x = jax.random.randint(jax.random.key(1), (3, 5), 0, 13).astype(jnp.float32)
    out = every.apply(params, x)
    assert out.shape == (3, 5, 13)
    np.testing.assert_allclose(out[:, -1], last.apply(params, x), rtol=1e-5, atol=1e-6)
    # causal: the logits at position 1 do not depend on later tokens
    x2 = x.at[:, 3:].set(7.0)
    np.testing.assert_allclose(every.apply(params, x2)[:, :2], out[:, :2], rtol=1e-5, atol=1e-6)
    with pytest.raises(models.ConfigError, match="readout"):
        models.transformer(**kw, readout="first")


def test_transformer_attention_is_causal_rows_sum_to_one_and_matches_a_hand_computation():
    """One block, no LayerNorm, 2 heads: softmax((x W_q + b_q)(x W_k + b_k)^T / sqrt(d_head))
    under the causal mask, computed here from the parameters by hand."""
    model = models.transformer(vocab=10, seq_len=6, d_model=8, heads=2, layer_norm=False)
    params = model.init(jax.random.key(2))
    x = jnp.array([[1, 2, 3, 4, 5, 6], [9, 9, 0, 1, 2, 3]], jnp.float32)
    A = model.attention(params, x)
    assert A.shape == (2, 1, 2, 6, 6)
    np.testing.assert_allclose(A.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(jnp.triu(A, k=1)).max()) == 0.0
    att = params["MultiHeadDotProductAttention_0"]
    h = params["Embed_0"]["embedding"][x.astype(int)] + params["position"]
    q = jnp.einsum("nld,dhk->nhlk", h, att["query"]["kernel"]) + att["query"]["bias"][None, :, None]
    k = jnp.einsum("nld,dhk->nhlk", h, att["key"]["kernel"]) + att["key"]["bias"][None, :, None]
    logits = q @ jnp.swapaxes(k, -1, -2) / np.sqrt(4)
    logits = jnp.where(jnp.tril(jnp.ones((6, 6), bool)), logits, -jnp.inf)
    np.testing.assert_allclose(A[:, 0], jax.nn.softmax(logits, -1), rtol=1e-5, atol=1e-6)


def test_next_token_cross_entropy_averages_over_unmasked_positions_and_trains_in_a_simulation():
    """The loss against a hand computation (a masked position, id -1, is left out), and a
    transformer with readout "all" trained on next-token ids through engine.simulate."""
    from engine import data, losses, optim, simulate
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    y = jnp.array([[1, 4, -1], [0, 2, 3]], jnp.float32)
    logp = jax.nn.log_softmax(logits, -1)
    hand = -(logp[0, 0, 1] + logp[0, 1, 4] + logp[1, 0, 0] + logp[1, 1, 2] + logp[1, 2, 3]) / 5
    np.testing.assert_allclose(losses.next_token_cross_entropy(logits, y), hand, rtol=1e-6)
    seqs = np.array([[i % 7, (i + 1) % 7, (i + 2) % 7, (i + 3) % 7, (i + 4) % 7] for i in range(14)], np.float32)
    d = data.Dataset(jnp.asarray(seqs[:, :-1]), jnp.asarray(seqs[:, 1:]))
    model = models.transformer(vocab=7, seq_len=4, d_model=16, heads=2, readout="all")
    sim = simulate.simulation(model, d, "next_token_cross_entropy", optim.adam(lr=1e-2), steps=100, every=50)
    loss = np.asarray(sim.run(jax.random.key(0))["loss"])
    assert loss[0] > 1.5 and loss[-1] < 0.1 * loss[0], loss  # x -> x + 1 mod 7 is learnt at every position
    with pytest.raises(models.ConfigError, match="positions"):
        simulate.simulation(model, data.Dataset(d.x, d.y[:, :3]), "next_token_cross_entropy", optim.adam())


def test_softmax_and_its_closed_form_derivative_equal_jax_nn_softmax():
    """`models.softmax` (the transformer's attention softmax, differentiated by its
    closed form so the sharded program rounds as the one-device one) is jax.nn.softmax:
    values, masked rows (finfo.min logits get weight 0), and in float64 the gradient of
    a weighted sum of it and a Hessian-vector product."""
    x = jax.random.normal(jax.random.key(0), (3, 4, 6)) * 3
    x = x.at[:, :, -2:].set(jnp.finfo(x.dtype).min)
    np.testing.assert_allclose(models.softmax(x), jax.nn.softmax(x), rtol=1e-6, atol=1e-30)
    assert float(models.softmax(x)[..., -2:].max()) == 0.0
    with jax.enable_x64(True):
        x64 = jax.random.normal(jax.random.key(1), (5, 7), jnp.float64)
        c = jax.random.normal(jax.random.key(2), (5, 7), jnp.float64)
        f = lambda s: lambda z: jnp.sum(c * s(z) ** 2)
        np.testing.assert_allclose(jax.grad(f(models.softmax))(x64), jax.grad(f(jax.nn.softmax))(x64), rtol=1e-12)
        v = jax.random.normal(jax.random.key(3), (5, 7), jnp.float64)
        hvp = lambda s: jax.jvp(jax.grad(f(s)), (x64,), (v,))[1]
        np.testing.assert_allclose(hvp(models.softmax), hvp(jax.nn.softmax), rtol=1e-10, atol=1e-14)
