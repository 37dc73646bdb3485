"""Grokking tasks, StableMax, precision-controlled cross-entropy and ⊥Grad (issue 16, items 1-2)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine import data, losses, models, optim, simulate, sweep
from engine.errors import ConfigError

PYTHON_OPS = {"+": lambda a, b, p: (a + b) % p, "-": lambda a, b, p: (a - b) % p,
              "*": lambda a, b, p: (a * b) % p, "/": lambda a, b, p: (a * pow(b, -1, p)) % p}


def decode(p: int, x, y):
    """(a, b, label) triples of one-hot inputs [n, 2p] and targets [n, p]."""
    x, y = np.asarray(x), np.asarray(y)
    return list(zip(x[:, :p].argmax(1).tolist(), x[:, p:].argmax(1).tolist(), y.argmax(1).tolist()))


@pytest.mark.parametrize("op,p", [("+", 10), ("-", 10), ("*", 10), ("/", 11)])
def test_modular_labels_every_pair_once_in_a_disjoint_split(op, p):
    d = data.modular(p, op, 0.3, seed=3)
    train, test = decode(p, d.x, d.y), decode(p, d.x_test, d.y_test)
    pairs = [(a, b) for a, b, _ in train + test]
    expected = [(a, b) for a in range(p) for b in range(1 if op == "/" else 0, p)]
    assert sorted(pairs) == expected                          # every pair exactly once, none twice
    assert len(train) == int(0.3 * len(expected))
    for a, b, c in train + test:
        assert c == PYTHON_OPS[op](a, b, p), (a, op, b)       # Python's own modular arithmetic
    np.testing.assert_array_equal(np.asarray(d.x).sum(1), 2)  # two one-hots
    np.testing.assert_array_equal(np.asarray(d.y).sum(1), 1)


def test_modular_split_follows_the_data_seed_only():
    same = [data.modular_table(13, "+", 0.4, seed=5) for _ in range(2)]
    np.testing.assert_array_equal(same[0].train, same[1].train)
    other = data.modular_table(13, "+", 0.4, seed=6)
    assert (other.train != same[0].train).any() and other.train.sum() == same[0].train.sum()
    assert same[0].seed == 5 and same[0].op == "+" and same[0].p == 13   # recorded with the split
    # the encodings share the split: tokens (a, b, =) with "=" the token p
    one_hot, tokens = data.modular(13, "add", 0.4, 5), data.modular(13, "+", 0.4, 5, encoding="tokens")
    assert tokens.x.shape == (67, 3) and tokens.x_test.shape == (169 - 67, 3)
    pairs = np.stack(decode(13, one_hot.x, one_hot.y))[:, :2]
    np.testing.assert_array_equal(np.asarray(tokens.x)[:, :2], pairs)
    np.testing.assert_array_equal(np.asarray(tokens.x)[:, 2], 13)
    np.testing.assert_array_equal(tokens.y, one_hot.y)
    np.testing.assert_array_equal(data.named("modular-add-13-0.4", seed=5).x, one_hot.x)
    np.testing.assert_array_equal(data.named("modular-add-13-0.4-tokens", seed=5).x, tokens.x)


def test_token_encoding_fits_the_transformer():
    p = 7
    d = data.modular(p, "*", 0.5, encoding="tokens")
    model = models.transformer(p + 1, 3, out_dim=p, d_model=16, heads=2)
    sim = simulate.simulation(model, d, "stablemax_cross_entropy", optim.adamw(orthogonal=True), steps=2, every=1)
    assert sim.config["data_shape"] == [24, 3] and sim.config["orthogonal"] is True


@pytest.mark.parametrize("call,field", [
    (lambda: data.modular(1), "p"),
    (lambda: data.modular(97, "+", 0.0), "train_fraction"),
    (lambda: data.modular(97, "+", 1.0), "train_fraction"),
    (lambda: data.modular(97, "+", -0.2), "train_fraction"),
    (lambda: data.modular(12, "/"), "p"),
    (lambda: data.modular(97, "^"), "op"),
    (lambda: data.modular(97, encoding="bits"), "encoding"),
    (lambda: data.modular(5, "+", 0.01), "train_fraction"),   # no training pair left
    (lambda: data.named("modular-pow-97-0.3"), "data"),
    (lambda: losses.cross_entropy_in("float8"), "loss"),
])
def test_bad_grokking_data_is_one_line_config_error(call, field):
    with pytest.raises(ConfigError) as e:
        call()
    assert e.value.field == field and "\n" not in str(e.value) and "Fix:" in str(e.value)


def test_xor_clusters_labels_are_the_xor_of_the_clusters_flipped_at_rate_eta():
    d = data.xor_clusters(n=4000, d=20, mean_norm=40.0, label_noise=0.2, n_test=4000, seed=1, noisy_test=False)
    x, label = np.asarray(d.x), np.asarray(d.y).argmax(1)
    on_mu1 = np.abs(x[:, 0]) > np.abs(x[:, 1])                # mu_1 = |mu| e_1, mu_2 = |mu| e_2
    flipped = (label == 1) != on_mu1
    assert 0.18 < flipped.mean() < 0.22                        # eta = 0.2, 4000 draws: std 0.006
    xt, lt = np.asarray(d.x_test), np.asarray(d.y_test).argmax(1)
    np.testing.assert_array_equal(lt == 1, np.abs(xt[:, 0]) > np.abs(xt[:, 1]))   # clean test labels
    assert abs(np.abs(x[:, 2:]).mean() - np.sqrt(2 / np.pi)) < 0.01                # N(0, 1) noise elsewhere
    small = data.xor_clusters()
    assert small.x.shape == (200, 1000) and small.y.shape == (200, 2) and small.x_test.shape == (1000, 1000)
    np.testing.assert_array_equal(small.x, data.xor_clusters().x)


def test_quadratic_index_is_half_the_square_of_a_unit_projection():
    d = data.quadratic_index(seed=2)
    beta = data.quadratic_index_direction(100, seed=2)
    assert d.x.shape == (550, 100) and d.y.shape == (550, 1) and d.x_test.shape == (1000, 100)
    assert abs(np.linalg.norm(beta) - 1) < 1e-12
    for x, y in ((d.x, d.y), (d.x_test, d.y_test)):
        np.testing.assert_allclose(np.asarray(y)[:, 0], 0.5 * (np.asarray(x, np.float64) @ beta) ** 2,
                                   rtol=1e-5, atol=1e-6)  # x is held in float32
    assert 0.4 < float(np.mean(d.y_test)) < 0.6                # E y = 1/2
    assert not np.allclose(beta, data.quadratic_index_direction(100, seed=3))


# ----------------------------------------------------------------------------- losses
def stablemax_reference(x, y):
    """Loss and gradient of StableMax cross-entropy, float64 numpy, straight from the formula."""
    x = np.asarray(x, np.float64)
    s = np.where(x >= 0, x + 1, 1 / (1 - np.minimum(x, 0)))
    ds = np.where(x >= 0, 1.0, 1 / (1 - np.minimum(x, 0)) ** 2)
    total = s.sum(-1, keepdims=True)
    n = x.shape[0]
    loss = -np.mean(np.sum(y * np.log(s / total), -1))
    grad = (-y * ds / s + y.sum(-1, keepdims=True) * ds / total) / n
    return loss, grad


def test_stablemax_cross_entropy_matches_float64_numpy_even_for_huge_logits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)) * np.array([[1.0], [10.0], [1e3], [1e6], [1e12], [1e30]])
    x[0, 0] = 0.0                                              # the kink of s, where both branches meet
    y = np.eye(5)[[0, 1, 2, 3, 4, 0]]
    value_and_grad = jax.jit(jax.value_and_grad(losses.stablemax_cross_entropy))
    loss, grad = value_and_grad(jnp.asarray(x, jnp.float32), jnp.asarray(y))
    ref_loss, ref_grad = stablemax_reference(np.asarray(jnp.asarray(x, jnp.float32)), y)
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(losses.stablemax_cross_entropy(jnp.zeros((3, 4)), jnp.eye(4)[:3])),
                               np.log(4), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.stablemax(jnp.array([[1.0, 0.0, -1.0]]))),
                               [[2 / 3.5, 1 / 3.5, 0.5 / 3.5]], rtol=1e-6)   # s = 2, 1, 1/2
    assert losses.loss_function("stablemax_cross_entropy") is losses.stablemax_cross_entropy


def test_low_precision_softmax_collapses_where_float64_does_not():
    y = jnp.array([[1.0, 0.0, 0.0]])
    f16, f32 = losses.loss_function("cross_entropy_float16"), losses.loss_function("cross_entropy_float32")
    with jax.enable_x64(True):
        f64 = losses.loss_function("cross_entropy_float64")
        x = jnp.array([[30.0, 0.0, 0.0]], jnp.float64)         # the correct logit leads by 30
        (l32, g32), (l64, g64) = jax.value_and_grad(f32)(x, y), jax.value_and_grad(f64)(x, y)
        assert float(l32) == 0.0 and float(g32[0, 0]) == 0.0   # absorbed: 1 + 2e^-30 == 1 in float32
        # float64's log(1 + 2e^-30) is 2e^-30 to within its own rounding of 1 + 2e^-30 (1e-16 / 2e-13)
        np.testing.assert_allclose(float(l64), np.log1p(2 * np.exp(-30.0)), rtol=2e-3)
        np.testing.assert_allclose(float(g64[0, 0]), -2 * np.exp(-30.0) / (1 + 2 * np.exp(-30.0)), rtol=2e-3)
        x = jnp.array([[120.0, 0.0, 0.0]], jnp.float64)        # by 120: e^-120 underflows float32
        assert float(jnp.abs(jax.grad(f32)(x, y)).max()) == 0.0                      # the whole gradient
        np.testing.assert_allclose(np.asarray(jax.grad(f64)(x, y))[0, 1:], np.exp(-120.0), rtol=1e-6)
    x = jnp.array([[10.0, 0.0, 0.0]])                          # float16 collapses at a gap of 10 already
    assert float(f16(x, y)) == 0.0 and float(f32(x, y)) > 0
    assert f16(x, y).dtype == jnp.float32                      # recorded in the model's type
    np.testing.assert_allclose(float(f32(x, y)), float(losses.cross_entropy(x, y)), rtol=1e-6)


def tiny_modular_sim(loss, steps=4, optimizer=None):
    p = 5
    model = models.mlp((2 * p, 16, p), "relu")
    return simulate.simulation(model, data.modular(p, "+", 0.5, seed=0), loss,
                               optimizer or optim.adamw(lr=1e-2, orthogonal=True), steps=steps, every=2,
                               probes=("loss", "test_loss", "test_accuracy"))


def test_float64_loss_without_x64_fails_before_compiling():
    with pytest.raises(ConfigError) as e:
        losses.cross_entropy_in("float64")(jnp.zeros((1, 3)), jnp.eye(3)[:1])
    assert e.value.field == "loss" and "x64" in str(e.value) and "\n" not in str(e.value)
    sim = tiny_modular_sim("cross_entropy_float64")
    with pytest.raises(ConfigError, match="jax_enable_x64 is off"):
        sweep.sweep(sim, x64=False, progress=False)
    assert sim.compiled == {}                                  # raised while tracing, nothing compiled
    ds = sweep.sweep(sim, x64=True, progress=False)
    assert ds.loss.dtype == np.float64 and np.isfinite(ds.loss.values).all()


# ----------------------------------------------------------------------------- ⊥Grad
def orthogonal_reference(g, w):
    g, w = np.asarray(g, np.float64).ravel(), np.asarray(w, np.float64).ravel()
    perp = g - (w @ g) / (w @ w + 1e-30) * w
    return perp * np.linalg.norm(g) / (np.linalg.norm(perp) + 1e-30)


def test_orthogonal_grad_per_tensor_matches_numpy():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)), "b": np.zeros(3), "v": rng.normal(size=5)}
    grads = {"w": rng.normal(size=(4, 3)) + 2 * params["w"], "b": rng.normal(size=3),
             "v": 3 * params["v"] + rng.normal(size=5)}
    params, grads = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), (params, grads))
    tx = optim.orthogonal_grad()
    out, _ = tx.update(grads, tx.init(params), params)
    for k in params:
        got, w, g = np.asarray(out[k], np.float64).ravel(), np.asarray(params[k]).ravel(), np.asarray(grads[k]).ravel()
        assert out[k].shape == params[k].shape
        np.testing.assert_allclose(got, orthogonal_reference(g, w), rtol=1e-5, atol=1e-6)
        assert abs(got @ w) < 1e-5 * np.linalg.norm(got) * max(np.linalg.norm(w), 1)   # orthogonal to its tensor
        np.testing.assert_allclose(np.linalg.norm(got), np.linalg.norm(g), rtol=1e-6)  # at the gradient's norm
    np.testing.assert_allclose(out["b"], grads["b"], rtol=1e-6)   # a zero tensor: nothing to remove
    with pytest.raises(ValueError, match="params"):
        tx.update(grads, tx.init(params))


def test_orthogonal_adamw_is_adamw_of_the_projected_gradient():
    rng = np.random.default_rng(1)
    params = (jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), jnp.asarray(rng.normal(size=2), jnp.float32))
    grads = jax.tree.map(lambda p: p * 0.5 + jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    perp = optim.orthogonal_grad().update(grads, optax.EmptyState(), params)[0]
    ortho = optim.optimizer("adamw", lr=0.1, weight_decay=0.01, orthogonal=True)
    plain = optim.adamw(lr=0.1, weight_decay=0.01)
    assert ortho.orthogonal and not plain.orthogonal and ortho.name == "adamw"
    s1, s2 = ortho.init(params, {"lr": 0.05}), plain.init(params, {"lr": 0.05})
    for _ in range(2):
        u1, s1 = ortho.tx.update(grads, s1, params)
        u2, s2 = plain.tx.update(perp, s2, params)
        for a, b in zip(u1, u2):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(optim.hyperparams(s1)["lr"]) == pytest.approx(0.05)
    np.testing.assert_allclose(optim.preconditioner(s1)[1], optim.preconditioner(s2)[1], rtol=1e-6)
    with pytest.raises(ConfigError, match="orthogonal"):
        optim.gd(orthogonal="yes")
    with pytest.raises(ConfigError, match="⊥Grad"):
        optim.stability_threshold(optim.gd(orthogonal=True), {"lr": 0.1})


def test_modular_run_with_stablemax_and_orthogonal_adamw_under_a_sweep():
    sim = tiny_modular_sim("stablemax_cross_entropy", steps=6)
    ds = sweep.sweep(sim, seeds=2, progress=False)
    assert ds.test_accuracy.dims == ("seed", "step") and ds.test_accuracy.shape == (2, 4)
    acc = ds.test_accuracy.values
    assert ((acc >= 0) & (acc <= 1)).all() and np.allclose(acc * 13, np.round(acc * 13), atol=1e-5)  # k/13 test pairs
    loss = ds.loss.values
    assert np.isfinite(loss).all() and (loss[:, -1] < loss[:, 0]).all()      # it trains
    assert not np.allclose(loss[0], loss[1])                                 # two seeds, two inits
    assert not ds.diverged.values.any()
    assert sweep.config_of(ds)["orthogonal"] is True and sweep.config_of(ds)["loss"] == "stablemax_cross_entropy"
