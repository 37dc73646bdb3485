"""Losses `loss(y_pred: [n, k], y: [n, k]) -> scalar`.

- `mse`: 0.5 * sum over outputs of the squared error, mean over examples,
  L = (1/n) sum_i 0.5 ||f(x_i) - y_i||^2, the convention of Cohen et al. 2021, so that
  the Hessian of a linear model is X^T X / n and GD is stable iff lambda_max < 2/eta.
- `cross_entropy`: softmax cross-entropy with one-hot (or soft) targets, mean over
  examples, computed from log-softmax (stable for large logits).
- `power(k)`: L = sum f^k / k, whatever the target: with `engine.models.scalar()` the
  degenerate polynomial x^k / k of one parameter (Bai et al. 2026; k = 2, a quadratic).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.errors import choose


def mse(y_pred, y):
    return 0.5 * jnp.mean(jnp.sum(jnp.square(y_pred - y), axis=-1))


def cross_entropy(y_pred, y):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(y_pred, axis=-1), axis=-1))


def accuracy(y_pred, y):
    """Fraction of examples whose largest output is the target class (one-hot y)."""
    return jnp.mean(jnp.argmax(y_pred, -1) == jnp.argmax(y, -1))


def power(k: int):
    """The loss `sum(y_pred^k) / k` (targets ignored), named "power_k"."""
    def loss(y_pred, y):
        return jnp.sum(y_pred ** k) / k
    loss.__name__ = f"power_{k}"
    return loss


LOSSES = {"mse": mse, "cross_entropy": cross_entropy}


def loss_function(name: str):
    return choose(name, LOSSES, "loss")
