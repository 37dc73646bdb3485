import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from engine import optim

DIRECT = {
    "gd": lambda h: optax.sgd(h["lr"]),
    "momentum": lambda h: optax.sgd(h["lr"], momentum=h["momentum"]),
    "nesterov": lambda h: optax.sgd(h["lr"], momentum=h["momentum"], nesterov=True),
    "adam": lambda h: optax.adam(h["lr"], h["b1"], h["b2"], h["eps"]),
    "adamw": lambda h: optax.adamw(h["lr"], h["b1"], h["b2"], h["eps"], weight_decay=h["weight_decay"]),
    "rmsprop": lambda h: optax.rmsprop(h["lr"], decay=h["decay"], eps=h["eps"]),
    "adagrad": lambda h: optax.adagrad(h["lr"], eps=h["eps"]),
    "lion": lambda h: optax.lion(h["lr"], h["b1"], h["b2"], weight_decay=h["weight_decay"]),
}


def descend(tx, start=None, steps=5):
    """`steps` updates of `tx` from `start(params)` (default `tx.init`)."""
    loss = lambda p: jnp.sum((p["a"] - 1.0) ** 4) + jnp.sum(p["b"] ** 2)
    params = {"a": jnp.array([0.3, -0.2]), "b": jnp.array([2.0])}
    state = tx.init(params) if start is None else start(params)
    for _ in range(steps):
        u, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, u)
    return params


@pytest.mark.parametrize("name", sorted(set(optim.OPTIMIZERS) - {"adam_raw"}))  # no optax twin: below
def test_traced_vmapped_hyperparameters_equal_plain_optax(name):
    opt = optim.optimizer(name)
    lrs = jnp.array([opt.defaults["lr"], 3 * opt.defaults["lr"]])
    traced = jax.jit(jax.vmap(lambda lr: descend(opt.tx, lambda p: opt.init(p, {"lr": lr}))))(lrs)
    for i, lr in enumerate(lrs.tolist()):
        plain = descend(DIRECT[name]({**opt.defaults, "lr": lr}))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=1e-7), traced, plain)


def test_adam_raw_has_no_bias_correction_and_allows_eps_zero():
    opt = optim.adam_raw(lr=0.1, b1=0.9, b2=0.99, eps=0.0)
    tx = opt.tx
    x = jnp.array([1.0, -2.0])
    state = tx.init(x)
    m = v = np.zeros(2)
    for _ in range(3):
        g = x ** 3
        m, v = 0.9 * m + 0.1 * np.asarray(g), 0.99 * v + 0.01 * np.asarray(g) ** 2
        u, state = tx.update(g, state, x)
        np.testing.assert_allclose(u, -0.1 * m / np.sqrt(v), rtol=1e-6)
        x = x + u


@pytest.mark.parametrize("name", ["gd", "momentum", "adam", "rmsprop"])
def test_decoupled_weight_decay_is_adamws_rule_for_every_optimizer(name):
    """weight_decay= adds -lr * weight_decay * theta to any optimizer's update (AdamW's
    decoupled rule): adam with it is optax.adamw; the others are optax's optimizer chained
    with that decay. Traced: two values vmapped in one program."""
    opt = optim.optimizer(name, weight_decay=0.1)
    wds = jnp.array([0.0, 0.1, 0.5])
    traced = jax.jit(jax.vmap(lambda wd: descend(opt.tx, lambda p: opt.init(p, {"weight_decay": wd}))))(wds)
    for i, wd in enumerate(wds.tolist()):
        h = {**opt.defaults, "weight_decay": wd}
        plain = (optax.adamw(h["lr"], h["b1"], h["b2"], h["eps"], weight_decay=wd) if name == "adam" else
                 optax.chain(DIRECT[name](h), optax.add_decayed_weights(-h["lr"] * wd)))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=2e-5, atol=1e-7), traced, descend(plain))
    no_decay = descend(optim.optimizer(name).tx)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[0], b), traced, no_decay)  # wd = 0: unchanged
    assert float(jnp.abs(traced["b"][2]).sum()) < float(jnp.abs(traced["b"][0]).sum())  # decay shrinks weights


@pytest.mark.parametrize("name", ["gd", "adam", "adamw"])
def test_clip_norm_clips_the_gradient_before_the_optimizer(name):
    """clip_norm=c: the update equals that of the optimizer fed g min(1, c/||g||)
    (optax.clip_by_global_norm), c traced; a gradient inside the ball is untouched."""
    params = {"a": jnp.ones((3,)), "b": jnp.full((2, 2), 2.0)}
    g = {"a": jnp.array([3.0, 0.0, 4.0]), "b": jnp.full((2, 2), 6.0)}  # ||g|| = 13
    plain = optim.optimizer(name, lr=0.1)
    for c in (2.0, 50.0):
        opt = optim.optimizer(name, lr=0.1, clip_norm=c)
        u, _ = opt.tx.update(g, opt.init(params), params)
        scaled = jax.tree.map(lambda x: x * min(1.0, c / 13.0), g)
        expected, _ = plain.tx.update(scaled, plain.init(params), params)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), u, expected)
    # traced: one optimizer, the threshold read from each run's state
    opt = optim.optimizer(name, lr=0.1, clip_norm=1.0)
    batched = jax.vmap(lambda c: opt.tx.update(g, opt.init(params, {"clip_norm": c}), params)[0])(jnp.array([2.0, 50.0]))
    u2, _ = optim.optimizer(name, lr=0.1, clip_norm=2.0).tx.update(g, opt.init(params, {"clip_norm": 2.0}), params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x[0], y, rtol=1e-6), batched, u2)


def test_clip_norm_leaves_decoupled_weight_decay_unclipped_and_refuses_a_negative_threshold():
    params = {"w": jnp.full((4,), 10.0)}
    g = {"w": jnp.zeros((4,))}  # nothing to clip: the update is the decay alone
    opt = optim.gd(lr=0.1, weight_decay=0.5, clip_norm=1e-3)
    u, _ = opt.tx.update(g, opt.init(params), params)
    np.testing.assert_allclose(u["w"], -0.1 * 0.5 * 10.0, rtol=1e-6)
    from engine.errors import ConfigError
    with pytest.raises(ConfigError, match="clip_norm"):
        optim.adamw(lr=1e-3, clip_norm=-1.0)
