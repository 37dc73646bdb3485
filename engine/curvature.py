"""Curvature of a loss, in pure JAX, so it runs inside the compiled training loop for
every run of a vmapped sweep (no host round trip per Hessian-vector product).

`loss_fn(params) -> scalar` closes over the data; `params`, vectors and
preconditioners are pytrees shaped like `params`. Eigen-solvers work on the flattened
parameter vector theta: [n].

    hvp                        H v, forward-over-reverse (jvp of grad) or reverse-over-forward
    top_eigenvalues            top-k of H (or of P^-1/2 H P^-1/2): Lanczos with full
                               reorthogonalization, power (subspace) iteration, LOBPCG
    sharpness                  lambda_max(H)                       (Cohen et al. 2021)
    preconditioned_sharpness   lambda_max(P^-1 H) = lambda_max(P^-1/2 H P^-1/2)  (Cohen et al. 2022)
    directional_curvature      d^T H d / d^T d; with P: (d^T H d) / (d^T P d), d = P^-1 g
    hutchinson_trace           tr H ~ mean_z z^T H z, z Rademacher  (Hutchinson 1989)
    spectral_norm              ||H||_2 = max |lambda(H)| by power iteration (for step sizes)
    hessian_spread             top eigenpair of mean_b (H_b - H)^2 over minibatches b
                               (the non-uniformity of Wu, Ma & E 2018)
    spectral_quadrature        the eigenvalue density by (deflated) stochastic Lanczos
                               quadrature (Lin, Saad & Yang 2016; Ghorbani et al. 2019);
                               spectral_density: its Gaussian-smoothed density on a grid
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from engine.errors import ConfigError, require

METHODS = ("lanczos", "power", "lobpcg")
HVP_MODES = ("forward_over_reverse", "reverse_over_forward")


class Eigen(NamedTuple):
    """values: [k] (descending); vectors: [k, n] (unit rows, flattened params);
    residuals: [k], ||A v - lambda v|| / |lambda|; products: operator products spent
    (scalar int)."""
    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    products: jax.Array


def hvp(loss_fn: Callable, params, v, mode: str = "forward_over_reverse"):
    """H v for the Hessian H of `loss_fn` at `params` (v: pytree like params).

    forward_over_reverse: d/de grad L(theta + e v) (jvp of grad; the cheap one);
    reverse_over_forward: grad_theta <grad L(theta), v> (for benchmarking)."""
    if mode == "forward_over_reverse":
        return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]
    if mode == "reverse_over_forward":
        return jax.grad(lambda p: jax.jvp(loss_fn, (p,), (v,))[1])(params)
    raise ConfigError("mode", f"unknown value {mode!r}", f"use one of {', '.join(HVP_MODES)}")


def check_solver(k: int, iters: int, method: str = "lanczos", tol: float | None = None,
                 mode: str = "forward_over_reverse", prefix: str = "", iters_name: str = "iters",
                 min_iters: int | None = None) -> None:
    """ConfigError, before anything is traced, for eigen-solver settings that cannot
    work: k >= 1 eigenpairs; `iters` >= 1 products (Lanczos: >= k); a known method and
    HVP mode; a positive residual tolerance, Lanczos only; `min_iters` (the products
    spent before the tolerance is checked) in [1, iters]. Fields are named
    `prefix + name` (the probes pass "probes."), the count `iters_name`."""
    require(isinstance(k, int) and not isinstance(k, bool) and k >= 1, f"{prefix}k", f"got {k!r}",
            "use an integer >= 1")
    require(method in METHODS, f"{prefix}method", f"unknown value {method!r}", f"use one of {', '.join(METHODS)}")
    least = k if method == "lanczos" else 1
    require(isinstance(iters, int) and not isinstance(iters, bool) and iters >= least, f"{prefix}{iters_name}",
            f"got {iters!r} for k={k}", f"use an integer >= {'k' if least == k else 1}")
    require(mode in HVP_MODES, f"{prefix}mode", f"unknown value {mode!r}", f"use one of {', '.join(HVP_MODES)}")
    require(tol is None or (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0),
            f"{prefix}tol", f"got {tol!r}", "use a positive relative residual such as 1e-3, or None to run all iters")
    require(tol is None or method == "lanczos", f"{prefix}tol", f"method {method!r} runs a fixed number of products",
            "use method='lanczos' for a tolerance, or tol=None")
    require(min_iters is None or (isinstance(min_iters, int) and not isinstance(min_iters, bool)
                                  and 1 <= min_iters <= iters), f"{prefix}min_iters",
            f"got {min_iters!r} with {iters_name}={iters!r}", f"use an integer in [1, {iters_name}], or None")


def check_samples(samples: int, prefix: str = "") -> None:
    """ConfigError unless a Hutchinson estimate gets >= 2 samples (for its standard error)."""
    require(isinstance(samples, int) and not isinstance(samples, bool) and samples >= 2, f"{prefix}samples",
            f"got {samples!r}", "use samples >= 2")


def flat_operator(loss_fn: Callable, params, precond=None, mode: str = "forward_over_reverse"):
    """(matvec, n, unravel): u -> A u on flat vectors with A = H, or with a diagonal
    preconditioner P (pytree of positive entries) the symmetric A = P^-1/2 H P^-1/2,
    whose eigenvalues are those of P^-1 H."""
    flat, unravel = ravel_pytree(params)
    scale = None if precond is None else jax.lax.rsqrt(ravel_pytree(precond)[0])

    def matvec(u):
        if scale is not None:
            u = scale * u
        out = ravel_pytree(hvp(loss_fn, params, unravel(u.astype(flat.dtype)), mode))[0]
        return out if scale is None else scale * out

    return matvec, flat.shape[0], unravel


def _one_run_at_a_time(fn: Callable) -> Callable:
    """`fn` unchanged, except that on CPU a vmapped call loops over the batch.

    jaxlib's CPU LAPACK kernels (eigh, qr) split a batch over XLA's intra-op thread
    pool and block until it is done. With one host device per core (engine/__init__.py)
    every pool thread can be such a blocked caller, and the sweep deadlocks: seen with
    2 devices and a vmapped 40 x 40 eigh (gdb: both pool threads in ParallelBatchMap).
    Accelerators keep their batched kernels."""
    if jax.default_backend() != "cpu":
        return fn
    return jax.custom_batching.sequential_vmap(fn)


def _eigh(T):
    return _one_run_at_a_time(lambda a: tuple(jnp.linalg.eigh(a)))(T)


def _qr(X):
    return _one_run_at_a_time(lambda a: jnp.linalg.qr(a)[0])(X)


def _start_block(key, n, dtype, init, k):
    """Start vectors [p, n]: the previous eigenvectors (warm start) plus a little noise
    so that no direction is exactly missing; k random vectors when there is no usable
    previous estimate (none given, all zero, or not finite). For Lanczos a cold start is
    one random vector (p = 1)."""
    if init is None:
        return jax.random.normal(key, (k, n), dtype)
    warm = jnp.atleast_2d(init).astype(dtype)
    # noise on the top vector only: the Krylov space grows from it, while noise on the
    # others would stay in the basis and cap their residuals near 1e-3 (measured)
    noise = jax.random.normal(key, warm.shape, dtype) / jnp.sqrt(n)
    usable = jnp.all(jnp.isfinite(warm)) & (jnp.linalg.norm(warm) > 0)
    return jnp.where(usable, jnp.where(usable, warm, 0.0) + 1e-3 * noise.at[1:].set(0.0), noise)


def _orthogonalize(x, Q):
    """x minus its projection on the rows of Q (Gram-Schmidt twice; rows not yet
    filled are zero), normalized; zero if nothing is left (the Krylov space is
    exhausted)."""
    for _ in range(2):
        x = x - (Q @ x) @ Q
    size = jnp.linalg.norm(x)
    return jnp.where(size > 1e-10 * (1 + jnp.linalg.norm(Q[0])), x / jnp.maximum(size, 1e-30), 0.0)


def _ritz(Q, AQ, filled, k: int, T=None) -> Eigen:
    """Top-k Ritz pairs from the first `filled` rows of a basis Q [m, n] and the stored
    products AQ = A Q [m, n] (Rayleigh-Ritz), T = Q AQ^T [m, m] if already known.
    Unfilled rows are decoupled onto a diagonal value below every Gershgorin disc of the
    filled block, so they can never rank in the top k; residuals
    ||A y - theta y|| / |theta| are exact, from AQ. (Power iteration and LOBPCG call it
    on their final block, k = filled = its rows.)"""
    m = Q.shape[0]
    live = jnp.arange(m) < filled
    T = Q @ AQ.T if T is None else T
    T = jnp.where(live[:, None] & live[None, :], 0.5 * (T + T.T), 0.0)
    floor = -2.0 * jnp.max(jnp.sum(jnp.abs(T), axis=1)) - 1.0
    theta, S = _eigh(T + jnp.diag(jnp.where(live, 0.0, floor)))
    theta, S = theta[::-1][:k], S[:, ::-1][:, :k]
    vectors, Avectors = S.T @ Q, S.T @ AQ
    residuals = jnp.linalg.norm(Avectors - theta[:, None] * vectors, axis=1) / jnp.abs(theta)
    return Eigen(theta, vectors, residuals, jnp.asarray(filled, jnp.int32))


def lanczos(matvec, X0, iters: int, k: int = 1, tol: float | None = None, min_iters: int | None = None) -> Eigen:
    """k largest eigenpairs of a symmetric operator by Lanczos with full
    reorthogonalization, at most `iters` products in all, started from the
    p = X0.shape[0] rows of X0: the basis is the block Krylov space
    span(X0, A X0, A^2 X0, ...), built one vector at a time (band Lanczos, Ruhe 1979).
    p = 1 is classic Lanczos; a warm start passes the previous Ritz vectors, so an
    eigenvector that rotates within a cluster of close eigenvalues between two
    measurements is found again in a few products, and the residual of every one of
    them is in the basis after p products. (Growing the space from the residual of the
    top Ritz vector alone, as thick-restart Lanczos does, left the second of two
    well-separated eigenvalues at residual 2-4e-2 after 30 warm products on a 61-
    parameter MLP, where this converges both in 10.) The projected eigenproblem is
    solved on device; residuals ||A y - theta y|| / |theta| are exact, from the stored
    products A Q.

    tol: spend `min_iters` products (default k + 1, at least p), then stop as soon as
    all k residuals are below `tol` (checked after every product), at the latest at
    `iters`, the cap: a result above `tol` with `products == iters` hit it. None runs
    exactly `iters`. A small `min_iters` stops early (most warm-started solves after 2-4
    products); a `min_iters` budget with `iters` a few times it converges what the
    budget left unconverged. An eigenvalue's error is about residual^2 |theta| / gap.
    Under vmap the loop runs until the slowest run of the batch stops; a run that has
    stopped keeps its basis and count, so its products and results do not depend on its
    batch-mates."""
    X0 = jnp.atleast_2d(X0)
    p, n = X0.shape
    m = max(iters, p)
    least = m if tol is None else min(max(k + 1 if min_iters is None else min_iters, p), m)
    Q, AQ = _krylov(matvec, X0, least)
    T = Q @ AQ.T
    eig = _ritz(Q, AQ, least, k, T)
    if least == m:
        return eig

    # On from `least` products, one at a time, until converged or at `m`; the projected
    # matrix T = Q A Q^T grows by a row and a column per product. Under vmap the loop runs
    # until the slowest run stops, and JAX keeps the carry of a run whose own condition
    # is false (its batching rule selects between the body's output and the old carry):
    # a run that has stopped keeps its basis, count and result (tested).
    def step(carry):
        j, Q, AQ, T, _, _ = carry
        at = jnp.minimum(j, m - 1)  # < m for every run still going
        q = _orthogonalize(AQ[at - p], Q)
        Aq = matvec(q)
        Q, AQ = Q.at[at].set(q), AQ.at[at].set(Aq)
        column = Q @ Aq
        T = T.at[:, at].set(column).at[at, :].set(column)
        eig = _ritz(Q, AQ, j + 1, k, T)
        return j + 1, Q, AQ, T, eig, (j + 1 < m) & ~jnp.all(eig.residuals < tol)

    grow = lambda a: jnp.zeros((m,) + a.shape[1:], a.dtype).at[:least].set(a)
    T = jnp.zeros((m, m), T.dtype).at[:least, :least].set(T)
    start = (eig.products, grow(Q), grow(AQ), T, eig, ~jnp.all(eig.residuals < tol))
    return jax.lax.while_loop(lambda c: c[-1], step, start)[4]


def _krylov(matvec, X0, size: int):
    """(Q [size, n], AQ = A Q): an orthonormal basis of the block Krylov space
    span(X0, A X0, A^2 X0, ...) of the p rows of X0, one vector at a time (row j is
    made from A Q[j - p]), and its products. p = 1 is classic Lanczos."""
    p, n = X0.shape
    Q = jnp.zeros((size, n), X0.dtype)
    for i in range(p):
        Q = Q.at[i].set(_orthogonalize(X0[i], Q))
    AQ = jnp.zeros((size, n), X0.dtype).at[:p].set(jax.vmap(matvec)(Q[:p]))

    def fill(j, carry):
        Q, AQ = carry
        q = _orthogonalize(AQ[j - p], Q)
        return Q.at[j].set(q), AQ.at[j].set(matvec(q))

    return jax.lax.fori_loop(p, size, fill, (Q, AQ))


def power_iteration(matvec, X0, iters: int) -> Eigen:
    """Subspace (block power) iteration on k = X0.shape[0] vectors with a Rayleigh-Ritz
    step at the end. Converges to the k eigenvalues of largest magnitude, which are the
    largest ones when the Hessian is dominated by its positive outliers."""
    def step(_, X):
        return _qr(jax.vmap(matvec)(X).T).T
    X = _qr(X0.T).T
    X = jax.lax.fori_loop(0, iters, step, X)
    k = X.shape[0]
    return _ritz(X, jax.vmap(matvec)(X), k, k)._replace(products=jnp.asarray((iters + 1) * k))


def lobpcg(matvec, X0, iters: int) -> Eigen:
    """LOBPCG (jax.experimental.sparse.linalg.lobpcg_standard) on k = X0.shape[0] vectors."""
    from jax.experimental.sparse.linalg import lobpcg_standard
    _, X, done = lobpcg_standard(lambda X: jax.vmap(matvec, in_axes=1, out_axes=1)(X), X0.T, m=iters)
    k = X0.shape[0]
    return _ritz(X.T, jax.vmap(matvec)(X.T), k, k)._replace(products=(done + 1) * k)


def top_eigenvalues(loss_fn: Callable, params, key, k: int = 1, iters: int = 20,
                    method: str = "lanczos", precond=None, init=None,
                    mode: str = "forward_over_reverse", tol: float | None = None,
                    min_iters: int | None = None) -> Eigen:
    """Top-k eigenpairs of H = hessian(loss_fn)(params), or of P^-1/2 H P^-1/2 with a
    diagonal preconditioner `precond` (its eigenvalues are those of P^-1 H).

    init: [p, n] (or [n]) previous eigenvectors to warm-start from (Lanczos uses all p
    as its start block, the others their first k). Cost in
    Hessian-vector products: Lanczos `iters` in all (at least p); power and LOBPCG
    `iters` products of a block of k vectors, plus k for the Ritz step.
    tol (Lanczos only): stop once every residual is below it, after at least `min_iters`
    products (default k + 1), at most `iters`: the cap (see `lanczos`).
    """
    check_solver(k, iters, method, tol, mode, min_iters=min_iters)
    matvec, n, _ = flat_operator(loss_fn, params, precond, mode)
    require(k <= n, "k", f"k={k} exceeds the {n} parameters", f"use k <= {n}")
    dtype = ravel_pytree(params)[0].dtype
    if method == "lanczos":
        require(k <= iters <= n, "iters", f"Lanczos needs k <= iters <= n, got k={k}, iters={iters}, n={n}",
                f"use iters in [{k}, {n}]")
        X0 = _start_block(key, n, dtype, init, 1)
        return lanczos(matvec, X0, iters, k, tol, min_iters)
    X0 = _start_block(key, n, dtype, init, k)
    if method == "power":
        return power_iteration(matvec, X0, iters)
    require(n >= 5 * k, "k", f"LOBPCG needs n >= 5k, got n={n}, k={k}", "use lanczos for tiny models")
    # lobpcg_standard calls eigh and qr inside; loop over runs on CPU as a whole
    solve = lambda p, X, P: lobpcg(flat_operator(loss_fn, p, P, mode)[0], X, iters)
    return _one_run_at_a_time(solve)(params, X0, precond)


def smallest_eigenvalue(loss_fn: Callable, params, key, iters: int = 20, init=None,
                        mode: str = "forward_over_reverse", tol: float | None = None,
                        min_iters: int | None = None) -> Eigen:
    """lambda_min of H, signed: the top eigenpair of -H, negated (Lanczos; residuals are
    those of H). Power iteration on H finds the eigenvalue of largest magnitude, which
    can be a large negative one; Lanczos on H and on -H gives both ends."""
    eig = top_eigenvalues(lambda p: -loss_fn(p), params, key, 1, iters, init=init, mode=mode, tol=tol,
                          min_iters=min_iters)
    return eig._replace(values=-eig.values)


def sharpness(loss_fn: Callable, params, key, iters: int = 20) -> jax.Array:
    """lambda_max of the Hessian of the training loss (Cohen et al. 2021). Scalar."""
    return top_eigenvalues(loss_fn, params, key, 1, iters).values[0]


def preconditioned_sharpness(loss_fn: Callable, params, precond, key, iters: int = 20) -> jax.Array:
    """lambda_max(P^-1 H) for a diagonal preconditioner P (pytree of positive entries),
    computed in the symmetric form P^-1/2 H P^-1/2 (Cohen et al. 2022). Scalar."""
    return top_eigenvalues(loss_fn, params, key, 1, iters, precond=precond).values[0]


def spectral_norm(loss_fn: Callable, params, key, iters: int = 20, init=None):
    """||H||_2 = max_i |lambda_i(H)| by power iteration, warm-started from `init` (a
    flat unit vector [n], or None / zeros / non-finite for a random start).

    Returns (rho, v): rho = ||H v_{iters-1}||, a lower bound that converges to ||H||_2
    at the rate |lambda_2 / lambda_1|, and v = H v_{iters-1} / rho for the next warm
    start. Unlike Lanczos for lambda_max it also sees negative curvature, such as the
    +-s pairs of the saddle at theta = 0 of a small-initialized network."""
    check_solver(1, iters, "power")
    matvec, n, _ = flat_operator(loss_fn, params)
    dtype = ravel_pytree(params)[0].dtype
    v = _start_block(key, n, dtype, init, 1)[0]
    v = v / jnp.linalg.norm(v)

    def step(_, carry):
        v, _ = carry
        w = matvec(v)
        rho = jnp.linalg.norm(w)
        return jnp.where(rho > 0, w / jnp.maximum(rho, 1e-30), v), rho

    v, rho = jax.lax.fori_loop(0, iters, step, (v, jnp.zeros((), dtype)))
    return rho, v


def spread_operator(loss_fn: Callable, batch_loss: Callable, batches, params,
                    mode: str = "forward_over_reverse"):
    """(matvec, n): u -> S u on flat vectors [n], S = mean_b (H_b - H)^2, with H the
    Hessian of `loss_fn` and H_b that of `batch_loss(params, b)` for each row b of
    `batches` [m, ...] (e.g. example indices [m, batch_size]). S is symmetric PSD.

    (H_b - H)^2 u = H_b w_b - H w_b with w_b = (H_b - H) u, and mean_b H w_b =
    H mean_b w_b, so one product costs 2 HVPs of H and 2m of the H_b (the m batches'
    products vmapped into one batched product). No Hessian is formed."""
    flat, unravel = ravel_pytree(params)

    def product(f, u):
        return ravel_pytree(hvp(f, params, unravel(u.astype(flat.dtype)), mode))[0]

    def on_batches(u):  # [m, n] -> H_b u_b
        return jax.vmap(lambda b, ub: product(lambda p: batch_loss(p, b), ub))(batches, u)

    def matvec(u):
        W = on_batches(jnp.broadcast_to(u, (len(batches), u.shape[0]))) - product(loss_fn, u)
        return jnp.mean(on_batches(W), axis=0) - product(loss_fn, jnp.mean(W, axis=0))

    return matvec, flat.shape[0]


def hessian_spread(loss_fn: Callable, batch_loss: Callable, batches, params, key, iters: int = 20,
                   init=None, mode: str = "forward_over_reverse", tol: float | None = None,
                   min_iters: int | None = None) -> Eigen:
    """Top eigenpair of S = mean_b (H_b - H)^2 (`spread_operator`) by Lanczos, at most
    `iters` products (each 2 + 2m HVPs), warm-started from `init` ([1, n] or [n]);
    with `tol`, stopping once the residual is below it after `min_iters` (`lanczos`).

    Over uniformly drawn minibatches of B of the n examples (without replacement),
    E_b[(H_b - H)^2] = (n - B) / (B (n - 1)) Sigma_H with Sigma_H = (1/n) sum_i H_i^2 - H^2,
    whose lambda_max is the squared non-uniformity of Wu, Ma & E 2018."""
    check_solver(1, iters, tol=tol, mode=mode, min_iters=min_iters)
    matvec, n = spread_operator(loss_fn, batch_loss, batches, params, mode)
    require(iters <= n, "iters", f"Lanczos needs iters <= n, got iters={iters}, n={n}", f"use iters <= {n}")
    X0 = _start_block(key, n, ravel_pytree(params)[0].dtype, init, 1)
    return lanczos(matvec, X0, iters, 1, tol, min_iters)


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def directional_curvature(loss_fn: Callable, params, direction, precond=None) -> jax.Array:
    """Curvature along a direction: d^T H d / d^T d. With a preconditioner P and the
    gradient g as `direction`, the curvature of P^-1/2 H P^-1/2 along u = P^-1/2 g,
    which equals (d^T H d) / (d^T P d) for the update direction d = P^-1 g
    (Bai et al. 2025). Scalar; one Hessian-vector product."""
    d = direction if precond is None else jax.tree.map(jnp.divide, direction, precond)
    Hd = hvp(loss_fn, params, d)
    norm = _dot(d, d) if precond is None else _dot(d, jax.tree.map(jnp.multiply, precond, d))
    return _dot(d, Hd) / norm


def hutchinson_trace(loss_fn: Callable, params, key, samples: int = 16) -> tuple[jax.Array, jax.Array]:
    """tr H estimated as the mean of z^T H z over `samples` Rademacher vectors z
    (Hutchinson 1989). Returns (estimate, its standard error)."""
    check_samples(samples)
    flat, unravel = ravel_pytree(params)
    z = jax.random.rademacher(key, (samples, flat.shape[0]), flat.dtype)
    quad = jax.vmap(lambda zi: jnp.dot(zi, ravel_pytree(hvp(loss_fn, params, unravel(zi)))[0]))(z)
    return quad.mean(), quad.std(ddof=1) / jnp.sqrt(samples)


def hutchinson_frobenius(loss_fn: Callable, params, key, samples: int = 16) -> tuple[jax.Array, jax.Array]:
    """||H||_F = sqrt(tr H^2), tr H^2 estimated as the mean of ||H z||^2 over `samples`
    Rademacher vectors z (E z z^T = I, so E ||H z||^2 = tr H^2; Hutchinson 1989). Returns
    (estimate, its standard error), the error by the delta method: se(tr H^2) / (2 ||H||_F).
    One Hessian-vector product per sample."""
    check_samples(samples)
    flat, unravel = ravel_pytree(params)
    z = jax.random.rademacher(key, (samples, flat.shape[0]), flat.dtype)
    sq = jax.vmap(lambda zi: jnp.sum(jnp.square(ravel_pytree(hvp(loss_fn, params, unravel(zi)))[0])))(z)
    est = jnp.sqrt(sq.mean())
    return est, sq.std(ddof=1) / jnp.sqrt(samples) / (2 * est)


# ----------------------------------------------------------------------------- spectral density
class Quadrature(NamedTuple):
    """The spectral measure of H by stochastic Lanczos quadrature (`spectral_quadrature`).

    nodes, weights: [starts, k + iters]; each row is one random start's quadrature and
    sums to 1, so mean_s sum_i weights[s, i] f(nodes[s, i]) ~ (1/n) tr f(H) = (1/n)
    sum_j f(lambda_j). The first k columns are the deflated top eigenpairs, the same in
    every row (Ritz values, weight 1/n each); the other `iters` are the row's Gauss nodes
    of the complement. top: those k eigenpairs (`Eigen`: their vectors warm-start the next
    solve, `init`; their residuals), None without deflation."""
    nodes: jax.Array
    weights: jax.Array
    top: Eigen | None = None


def gauss_quadrature(matvec, z, iters: int):
    """The `iters`-point Gauss quadrature of the spectral measure of a unit vector z [n],
    mu_z = sum_j (v_j^T z)^2 delta(lambda_j) (Golub & Meurant 1994; Lin, Saad & Yang
    2016): Lanczos from z with full reorthogonalization gives the tridiagonal
    T = Q A Q^T [iters, iters] (alpha_j = q_j^T A q_j, beta_j = q_{j+1}^T A q_j);
    T = S diag(theta) S^T gives nodes theta [iters] and weights tau = S[0, :]^2 [iters],
    sum tau = 1, exact for polynomials of degree <= 2 iters - 1
    (sum_i tau_i theta_i = z^T A z). If the Krylov space runs out early, the rest of T
    decouples (beta = 0) and its nodes get weight 0. Gram-Schmidt runs against all of Q
    unmasked (its unfilled rows are 0), not through the masked `_orthogonalize`: 2x
    faster in a vmapped sweep (8 runs x 4 starts x 30 steps on 321 parameters, 2-core
    CPU: 8.2 against 18.3 ms; matfree's tridiag_sym: 9.7 ms)."""
    n = z.shape[0]
    Q = jnp.zeros((iters + 1, n), z.dtype).at[0].set(z)

    def step(j, carry):  # classical Gram-Schmidt, twice
        Q, alpha, beta = carry
        Aq = matvec(Q[j])
        h = Q @ Aq
        r = Aq - h @ Q
        r = r - (Q @ r) @ Q
        b = jnp.linalg.norm(r)
        b = jnp.where(b > 1e-10 * jnp.linalg.norm(Aq), b, 0.0)  # 0: the Krylov space is exhausted
        return Q.at[j + 1].set(r / jnp.where(b > 0, b, 1.0) * (b > 0)), alpha.at[j].set(h[j]), beta.at[j].set(b)

    zeros = jnp.zeros((iters,), z.dtype)
    _, alpha, beta = jax.lax.fori_loop(0, iters, step, (Q, zeros, zeros))
    T = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    theta, S = _eigh(T)
    return theta, jnp.square(S[0])


def _complement(matvec, V):
    """u -> P A P u with P = I - V^T V, the projector off the rows of V [k, n]."""
    project = lambda u: u - (V @ u) @ V
    return lambda u: project(matvec(project(u)))


def stochastic_lanczos_quadrature(matvec, n: int, key, starts: int, iters: int, top: Eigen | None = None,
                                  dtype=jnp.float32) -> Quadrature:
    """Stochastic Lanczos quadrature (Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao
    2019) of a symmetric operator A on [n]: `starts` Rademacher vectors, each the start of
    an `iters`-point Gauss quadrature (`gauss_quadrature`), vmapped over the starts.

    Deflated (top: k eigenpairs with unit, orthogonal rows `vectors` [k, n]): the k
    values enter as point masses of weight 1/n, and the quadrature runs on
    P A P (P = I - V^T V) from the starts projected off V, its weights scaled by (n - k)/n.
    As tr A = sum_j v_j^T A v_j + tr(P A P) for any orthonormal V, the first moment
    n sum_i w_i theta_i is an unbiased estimate of tr A whether or not V has converged,
    with the outliers' variance gone; converged V puts each outlier's mass exactly at
    its eigenvalue, where plain SLQ weighs it (v^T z)^2 ~ chi^2_1 / n."""
    k = 0 if top is None else top.values.shape[0]
    z = jax.random.rademacher(key, (starts, n), dtype)
    if k:
        V = top.vectors.astype(dtype)
        matvec = _complement(matvec, V)
        z = z - (z @ V.T) @ V
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    nodes, weights = jax.vmap(lambda zi: gauss_quadrature(matvec, zi, iters))(z)
    if k:
        nodes = jnp.concatenate([jnp.broadcast_to(top.values.astype(dtype), (starts, k)), nodes], axis=1)
        weights = jnp.concatenate([jnp.full((starts, k), 1 / n, dtype), (n - k) / n * weights], axis=1)
    return Quadrature(nodes, weights, top)


def check_quadrature(starts: int, iters: int, deflate: int, prefix: str = "") -> None:
    """ConfigError, before anything is traced, unless starts >= 1, iters >= 1, deflate >= 0."""
    for name, v, least in (("starts", starts, 1), ("iters", iters, 1), ("deflate", deflate, 0)):
        require(isinstance(v, int) and not isinstance(v, bool) and v >= least, f"{prefix}{name}", f"got {v!r}",
                f"use an integer >= {least}")


def spectral_quadrature(loss_fn: Callable, params, key, starts: int = 4, iters: int = 30, deflate: int = 8,
                        deflate_iters: int = 30, init=None, mode: str = "forward_over_reverse") -> Quadrature:
    """The Hessian's spectral measure (1/n) sum_j delta(lambda_j) as a `Quadrature`
    ([starts, deflate + iters] nodes and weights): the top `deflate` eigenpairs by
    Lanczos (`top_eigenvalues`, `deflate_iters` products, warm-started from `init`
    [deflate, n]) deflated exactly, then stochastic Lanczos quadrature of the rest
    (`stochastic_lanczos_quadrature`, starts * iters products). deflate=0 is plain SLQ.

    Deflation is the default because a few outliers carry the physics (sharpness, the
    edge of stability) and plain SLQ weighs each of them (v^T z)^2 ~ chi^2_1 / n per
    start. Measured over 40 keys at 4 starts of 30 nodes (tests/test_spectrum.py): n
    times the mass above lambda_max / 2 (dense counts 2 and 4) is exact deflated, off by
    >= 1 eigenvalue in 25% and 30% of the keys plain; where two outliers hold 94% of
    tr H, the first moment's error has std 0.4% deflated against 46% plain. Where the
    bulk holds most of tr H the first moment is as noisy as Hutchinson's estimate with
    `starts` vectors (6% at 4 starts on a 310-parameter digits classifier)."""
    check_quadrature(starts, iters, deflate)
    matvec, n, _ = flat_operator(loss_fn, params, mode=mode)
    require(deflate + iters <= n, "iters", f"deflate + iters = {deflate + iters} exceeds the {n} parameters",
            f"use deflate + iters <= {n}")
    dtype = ravel_pytree(params)[0].dtype
    k_top, k_slq = jax.random.split(key)
    top = top_eigenvalues(loss_fn, params, k_top, deflate, max(deflate_iters, deflate), init=init,
                          mode=mode) if deflate else None
    return stochastic_lanczos_quadrature(matvec, n, k_slq, starts, iters, top, dtype)


def spectral_density(nodes, weights, grid, sigma):
    """The density of eigenvalues on `grid` [g] from a quadrature's nodes and weights
    [..., starts, m], each node a Gaussian of width sigma (scalar, or [...]) (Lin, Saad &
    Yang 2016; Ghorbani, Krishnan & Xiao 2019):
    phi(t) = mean_s sum_i w[s, i] exp(-(t - theta[s, i])^2 / (2 sigma^2)) / (sigma sqrt(2 pi)).
    [..., g]; it integrates to sum w = 1 when the grid covers the nodes +- 5 sigma.
    Works on numpy arrays too (e.g. a saved sweep's spectrum_nodes)."""
    sigma = jnp.asarray(sigma)[..., None, None, None]
    t = (jnp.asarray(grid) - jnp.asarray(nodes)[..., None]) / sigma
    bumps = jnp.exp(-0.5 * t * t) / (sigma * jnp.sqrt(2 * jnp.pi))
    return jnp.mean(jnp.sum(jnp.asarray(weights)[..., None] * bumps, axis=-2), axis=-2)
