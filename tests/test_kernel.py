"""The kernel regime references (`engine.kernel`) against a model that is its own
linearization: a linear model f = X w, whose NTK is X X^T."""
import jax
import jax.numpy as jnp
import numpy as np

from engine import kernel, losses


def test_linearized_losses_equal_gd_on_a_linear_model_and_ridgeless_interpolates():
    X = jax.random.normal(jax.random.key(0), (12, 30))
    y = jax.random.normal(jax.random.key(1), (12, 1))
    w = 0.1 * jax.random.normal(jax.random.key(2), (30, 1))
    lrs = jnp.array([0.05, 0.1, 0.1])
    loss = lambda w: losses.mse(X @ w, y)
    expected = [float(loss(w))]
    for lr in lrs:
        for _ in range(5):
            w = w - lr * jax.grad(loss)(w)
        expected.append(float(loss(w)))
    w0 = 0.1 * jax.random.normal(jax.random.key(2), (30, 1))
    got = kernel.linearized_losses(X @ X.T, (X @ w0 - y)[:, 0], lrs, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    K = X @ X.T
    np.testing.assert_allclose(kernel.ridgeless_predict(K, K, y), y, atol=1e-4)
