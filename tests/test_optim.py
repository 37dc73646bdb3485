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
