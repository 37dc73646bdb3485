"""Our stochastic Lanczos quadrature against matfree's (https://github.com/pnkraemer/matfree),
inside jit + vmap over runs: accuracy against the dense float64 spectrum and speed.

Not part of the suite (`python -m benchmarks`): matfree is not a dependency. Run it with
matfree importable (`pip install matfree`):

    python -m benchmarks.matfree_slq [--runs 8] [--repeats 5]

Both sides get the same Rademacher starts and the same eigensolver (`curvature._eigh`)
for the tridiagonal; matfree tridiagonalizes with `decomp.tridiag_sym(iters,
reortho="full")` (Arnoldi with full reorthogonalization), we with
`curvature.gauss_quadrature`. matfree has no deflation, so "deflated" wraps its
tridiagonalization in our projection (`curvature._complement`). Prints one JSON record
per (network, implementation)."""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from matfree import decomp

from engine import curvature, data, losses, models


def matfree_quadrature(matvec, z, iters: int):
    """(nodes, weights) [iters] of unit z [n] from matfree's tridiagonalization."""
    _, T, *_ = decomp.tridiag_sym(iters, reortho="full", custom_vjp=False)(matvec, z)
    theta, S = curvature._eigh(T)
    return theta, jnp.square(S[0])


def slq(quadrature, matvec, n, key, starts, iters, top=None):
    """curvature.stochastic_lanczos_quadrature with `quadrature` for the Gauss step."""
    z = jax.random.rademacher(key, (starts, n), jnp.float32)
    if top is not None:
        V = top.vectors
        matvec = curvature._complement(matvec, V)
        z = z - (z @ V.T) @ V
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    nodes, weights = jax.vmap(lambda zi: quadrature(matvec, zi, iters))(z)
    if top is not None:
        k = V.shape[0]
        nodes = jnp.concatenate([jnp.broadcast_to(top.values, (starts, k)), nodes], axis=1)
        weights = jnp.concatenate([jnp.full((starts, k), 1 / n), (n - k) / n * weights], axis=1)
    return nodes, weights


def problem(widths, d, loss, steps=200, lr=0.2, runs=8):
    """`runs` parameter vectors [runs, n] (GD from `runs` inits) and their dense float64 spectra."""
    model = models.mlp(widths, "tanh")
    f = losses.mse if loss == "mse" else losses.cross_entropy
    x, y = jnp.asarray(d.x), jnp.asarray(d.y)
    loss_fn = lambda p: f(model.apply(p, x), y)
    descend = lambda _, p: jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss_fn)(p))
    train = jax.jit(jax.vmap(lambda k: jax.lax.fori_loop(0, steps, descend, model.init(k))))
    params = train(jax.random.split(jax.random.key(2), runs))
    unravel = ravel_pytree(jax.tree.map(lambda a: a[0], params))[1]
    flat = jax.vmap(lambda p: ravel_pytree(p)[0])(params)
    with jax.enable_x64(True):
        loss64 = lambda v: f(model.apply(unravel(v), x.astype(float)), y.astype(float))
        H = jax.jit(jax.vmap(jax.hessian(loss64)))(flat.astype(float))
    return loss_fn, unravel, flat, np.linalg.eigvalsh(np.asarray(H))


def compiled(impl, loss_fn, unravel, flat, starts, iters, deflate):
    """(jit(vmap(solve)) over the runs, its arguments, seconds to compile and run once)."""
    quadrature = curvature.gauss_quadrature if impl == "engine" else matfree_quadrature
    n = flat.shape[1]

    def one(v, key):
        params = unravel(v)
        matvec = curvature.flat_operator(loss_fn, params)[0]
        k_top, k_slq = jax.random.split(key)
        top = curvature.top_eigenvalues(loss_fn, params, k_top, deflate, 30) if deflate else None
        return slq(quadrature, matvec, n, k_slq, starts, iters, top)

    args = (flat, jax.random.split(jax.random.key(1), flat.shape[0]))
    f = jax.jit(jax.vmap(one))
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return f, args, time.perf_counter() - t0


def accuracy(nodes, weights, dense) -> dict:
    """rms relative error of the first moment n sum w theta against tr H, and the largest
    error of n times the mass above lambda_max / 2 against the dense count, over runs."""
    nodes, weights = np.asarray(nodes, float), np.asarray(weights, float)
    n = dense.shape[1]
    moment = n * np.mean(np.sum(nodes * weights, -1), -1) / dense.sum(-1) - 1
    top = dense[:, -1:]
    mass = n * np.mean(np.sum(np.where(nodes > top[:, None] / 2, weights, 0.0), -1), -1)
    return dict(moment_rel_err_rms=round(float(np.sqrt(np.mean(moment**2))), 5),
                count_abs_err_max=round(float(np.max(np.abs(mass - np.sum(dense > top / 2, -1)))), 3))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    nets = [("mlp_1-16-16-1_tanh_chebyshev", (1, 16, 16, 1), data.chebyshev(3, 20), "mse"),
            ("mlp_64-16-10_tanh_digits200_ce", (64, 16, 10), data.digits(n_train=200), "cross_entropy")]
    for name, widths, d, loss in nets:
        loss_fn, unravel, flat, dense = problem(widths, d, loss, runs=args.runs)
        for deflate in (0, 8):
            impls = {impl: compiled(impl, loss_fn, unravel, flat, 4, 30, deflate) for impl in ("engine", "matfree")}
            seconds = {impl: [] for impl in impls}
            for _ in range(args.repeats):  # interleaved, so that neither gets the quieter moments of a shared machine
                for impl, (f, fargs, _) in impls.items():
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(*fargs))
                    seconds[impl].append(time.perf_counter() - t0)
            outputs = {impl: f(*fargs) for impl, (f, fargs, _) in impls.items()}
            for impl, (f, fargs, first_s) in impls.items():
                print(json.dumps(dict(
                    network=name, implementation=impl, deflate=deflate, runs=flat.shape[0], n_params=flat.shape[1],
                    starts=4, iters=30, ms_per_call=round(1e3 * min(seconds[impl]), 3),
                    ms_median=round(1e3 * float(np.median(seconds[impl])), 3), compile_s=round(first_s, 2),
                    **accuracy(*outputs[impl], dense), max_node_difference=float(np.max(np.abs(
                        np.asarray(outputs[impl][0]) - np.asarray(outputs["engine"][0])))))), flush=True)


if __name__ == "__main__":
    main()
