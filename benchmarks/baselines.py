"""What the engine is measured against, in the same process on the same workload.

"loop" (`user_loop`) is the per-run program a user writes by hand: a jit-compiled optax
step called in a Python loop over steps and runs; "scan" (`per_run_scan`) is the best
per-run program: the whole run one `lax.scan`, one run at a time; "eigsh_loop"
(`eigsh_loop`) is today's common practice for sharpness: the hand-written loop with
scipy's eigsh every few steps. Each returns run-steps/s, compilation outside the
timing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from benchmarks.measure import timed
from engine import curvature, losses


def _jit_step(loss, tx):
    """One jit-compiled optimizer step: (params, state) -> (params, state)."""
    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s
    return step


def user_loop(sim_model, scheme, dataset, tx, hp, steps, runs) -> float:
    """run-steps/s of a hand-written per-run loop: a jit step in Python loops."""
    step = _jit_step(lambda p: losses.mse(sim_model.apply(p, dataset.x), dataset.y), tx)

    def all_runs():
        for r in range(runs):
            p = scheme.sample(jax.random.key(r), hp)
            s = tx.init(p)
            for _ in range(steps):
                p, s = step(p, s)
            jax.block_until_ready(p)

    p0 = scheme.sample(jax.random.key(0), hp)
    jax.block_until_ready(step(p0, tx.init(p0)))  # compile outside the timing
    return runs * steps / timed(all_runs)


def per_run_scan(sim_model, scheme, dataset, tx, hp, steps, runs, loss_fn=losses.mse) -> float:
    """run-steps/s of the best per-run program: one jit-compiled lax.scan per run."""
    loss = lambda p: loss_fn(sim_model.apply(p, dataset.x), dataset.y)

    @jax.jit
    def train(p):
        def body(c, _):
            p, s = c
            u, s = tx.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(body, (p, tx.init(p)), length=steps)[0][0]

    jax.block_until_ready(train(scheme.sample(jax.random.key(0), hp)))
    return runs * steps / timed(
        lambda: [jax.block_until_ready(train(scheme.sample(jax.random.key(r), hp))) for r in range(runs)])


def eigsh_loop(model, scheme, dataset, lr, hp, steps, every, runs) -> float:
    """run-steps/s of today's common practice: a jit step in Python loops, and every
    `every` steps scipy's eigsh on a host LinearOperator whose matvec is a jit HVP."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    loss = lambda p: losses.mse(model.apply(p, dataset.x), dataset.y)
    tx = optax.sgd(lr)
    step = _jit_step(loss, tx)

    @jax.jit
    def hvp_flat(p, v):
        return ravel_pytree(curvature.hvp(loss, p, ravel_pytree(p)[1](v)))[0]

    def sharpness(p):
        n = ravel_pytree(p)[0].shape[0]
        op = LinearOperator((n, n), matvec=lambda v: np.asarray(hvp_flat(p, jnp.asarray(v, jnp.float32))),
                            dtype=np.float32)
        return eigsh(op, k=1, which="LA", tol=1e-3)[0][0]

    def all_runs():
        for r in range(runs):
            p = scheme.sample(jax.random.key(r), hp)
            s = tx.init(p)
            for t in range(steps):
                if t % every == 0:
                    sharpness(p)
                p, s = step(p, s)
            jax.block_until_ready(p)

    p0 = scheme.sample(jax.random.key(0), hp)
    jax.block_until_ready(step(p0, tx.init(p0)))
    sharpness(p0)
    return runs * steps / timed(all_runs)
