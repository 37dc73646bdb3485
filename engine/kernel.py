"""The kernel regime: what a network linearized at theta_0 would do, from its
empirical NTK K = J J^T (J = df/dtheta on the examples; `probes.ntk_gram`).

    ridgeless_predict(K_train, K_cross, y)     kernel regression, minimum-norm
                                               coefficients: K_cross K_train^+ y
    linearized_losses(K, r0, lrs, every)       GD on the linearized model under our
                                               "mse", L = ||r||^2 / (2n): residuals
                                               r <- r - (lr / n) K r, `every` steps per
                                               rate; the loss at each record

Both are pure jnp (jit/vmap them over runs); the lazy limit of training (Chizat et al.
2019; Jacot et al. 2018) is the reference experiments compare against.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def ridgeless_predict(K_train, K_cross, y):
    """K_cross [m, n] K_train^+ [n, n] y [n, d] -> [m, d] (least-squares coefficients)."""
    return K_cross @ jnp.linalg.lstsq(K_train, y)[0]


def linearized_losses(K, r0, lrs, every: int):
    """L_k = ||r_k||^2 / (2n) at the records of GD on the model linearized at theta_0:
    K [n, n], initial residual r0 [n] (f(x; theta_0) - y, one output), lrs [records - 1]
    the rate of each interval of `every` steps. -> [records]."""
    n = r0.shape[0]

    def interval(r, lr):
        r = jax.lax.fori_loop(0, every, lambda _, r: r - lr / n * (K @ r), r)
        return r, 0.5 * jnp.mean(r ** 2)
    return jnp.concatenate([0.5 * jnp.mean(r0 ** 2)[None], jax.lax.scan(interval, r0, lrs)[1]])
