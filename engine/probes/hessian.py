"""Curvature probes: the Hessian of the objective the optimizer descends, measured inside
the compiled loop with `engine.curvature` (Lanczos, power iteration, Hutchinson,
stochastic Lanczos quadrature), warm-started from the previous measurement; the
minibatch curvature of SGD; and `step_size`, which sets the learning rate from the
curvature. See the package docstring (`engine.probes`) for the list and formulas."""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from engine import curvature, optim
from engine.errors import require
from engine.models import layers
from engine.probes.base import Probe, Snapshot, _check_examples, _key, scalar


def _loss_on(snap: Snapshot, examples: int | None) -> Callable:
    """The training loss on all examples, or on the fixed first `examples` of them (as
    the edge-of-stability literature measures sharpness on 5000 examples)."""
    if examples is None:
        return snap.loss_fn
    x, y = snap.data.x[:examples], snap.data.y[:examples]
    return lambda p: snap.objective(p, x, y)


def _preconditioner(snap: Snapshot, preconditioned: bool):
    """The optimizer's diagonal P from its state, or None for the plain Hessian."""
    return optim.preconditioner(snap.opt_state) if preconditioned else None


TOL = 1e-3   # the residual every Lanczos probe's solves run to by default ...
CAP = 3      # ... spending at most CAP x their budget of products


class Budget(NamedTuple):
    """What a Lanczos probe's solves may spend: `iters` products cold (at step 0),
    `warm_iters` warm-started (after); then, with a residual tolerance `tol`, on until
    every residual is below it, at most `max_iters` cold and `max_warm_iters` warm in
    all (tol None: exactly the budget)."""
    iters: int
    warm_iters: int
    tol: float | None
    max_iters: int
    max_warm_iters: int

    def products(self, first: bool, size: int) -> tuple[int, int]:
        """(least, most) products of a solve, cold (`first`) or warm, on an operator of
        dimension `size`: Lanczos spends at most one product per dimension."""
        least = min(self.iters if first else self.warm_iters, size)
        return least, least if self.tol is None else min(self.max_iters if first else self.max_warm_iters, size)


def _budget(iters, warm_iters, tol, max_iters, max_warm_iters, k: int = 1, method: str = "lanczos",
            mode: str = "forward_over_reverse") -> Budget:
    """The Budget of a probe's settings, or a ConfigError that names the field."""
    curvature.check_solver(k, iters, method, tol, mode, prefix="probes.")
    curvature.check_solver(k, warm_iters, method, tol, mode, prefix="probes.", iters_name="warm_iters")
    caps = []
    for name, cap, least in (("max_iters", max_iters, iters), ("max_warm_iters", max_warm_iters, warm_iters)):
        require(cap is None or (isinstance(cap, int) and not isinstance(cap, bool) and cap >= least),
                f"probes.{name}", f"got {cap!r} with {name[4:]}={least}",
                f"use an integer >= {least} (the cap on a solve's products), or None for {CAP} x {least}")
        caps.append(CAP * least if cap is None else cap)
    return Budget(iters, warm_iters, tol, *caps)


def _warm_solve(solve, snap: Snapshot, vectors, budget: Budget):
    """One Lanczos solve `solve(least, most, init)` (`Budget.products`), cold at step 0
    and warm-started from `vectors` after: (eigenpairs, the vectors to start from next
    time; kept when the solve failed, so that it cannot poison the next one)."""
    least, most = budget.products(snap.first, vectors.shape[-1])
    eig = solve(least, most, None if snap.first else vectors)
    return eig, jnp.where(jnp.all(jnp.isfinite(eig.vectors)), eig.vectors, vectors)


def _products(eig) -> jax.Array:
    """The products a solve spent, as a float (NaN at the records a cadence skips)."""
    return eig.products.astype(eig.values.dtype)


def _eigen_probe(name, residual_name, k, iters, warm_iters, method, examples, preconditioned, mode, tol,
                 max_iters, max_warm_iters):
    budget = _budget(iters, warm_iters, tol, max_iters, max_warm_iters, k, method, mode)
    _check_examples(examples)
    dims = ("eigen",) if k > 1 else ()

    def init(params):
        flat = ravel_pytree(params)[0]
        return jnp.zeros((k, flat.shape[0]), flat.dtype)

    def measure(snap: Snapshot, vectors):
        precond = _preconditioner(snap, preconditioned)
        # Warm start from the previous top-k eigenvectors alone: tracking extra Ritz
        # vectors was measured to cost accuracy (it spends products on the block and its
        # poorly converged members), see tests/test_curvature.py.
        eig, vectors = _warm_solve(lambda least, most, v: curvature.top_eigenvalues(
            _loss_on(snap, examples), snap.params, _key(snap, name), k=k, iters=most, method=method,
            precond=precond, init=v, mode=mode, tol=tol, min_iters=least), snap, vectors, budget)
        pick = (lambda a: a) if k > 1 else (lambda a: a[0])
        return {name: pick(eig.values), residual_name: pick(eig.residuals), products_name: _products(eig)}, vectors

    products_name = name.replace("sharpness", "eigen_products")
    needs = frozenset({"preconditioner"}) if preconditioned else frozenset()
    return Probe(name, measure, {name: dims, residual_name: dims, products_name: ()}, init, needs,
                 {"eigen": list(range(k))} if k > 1 else {})
def sharpness(k: int = 1, iters: int = 20, warm_iters: int = 10, method: str = "lanczos",
              examples: int | None = None, mode: str = "forward_over_reverse",
              tol: float | None = TOL, max_iters: int | None = None,
              max_warm_iters: int | None = None) -> Probe:
    """Top-k eigenvalues of the training-loss Hessian (`sharpness`), their residuals
    ||Hv - lambda v|| / |lambda| (`eigen_residual`) and the Hessian-vector products the
    solve spent (`eigen_products`). The first measurement spends `iters` products from a
    random start, later ones `warm_iters` from the eigenvectors of the previous
    measurement; then a solve goes on until every residual is below `tol` (the
    eigenvalue error is about tol^2 |lambda| / gap), at most `max_iters` products cold
    and `max_warm_iters` warm (defaults 3 x iters, 3 x warm_iters; no count exceeds the
    number of parameters, and the Krylov basis of a solve is [cap, parameters]): a
    residual above `tol` with `eigen_products` at the cap marks a solve that hit it.
    tol=None spends exactly `iters` / `warm_iters` (and so must `method` "power" and
    "lobpcg"). Measured on the digits MLP 64-200-200-10 (GD, 8 rates x 2 seeds, 500
    steps): at a fixed 20 / 10 products 9 of 816 residuals were above 1e-3 (up to
    2.2e-2); converging to 1e-3 left none (max 9.7e-4), for 0.2% more products. An
    eigenvalue inside the bulk of the spectrum (k beyond the outliers) converges slowly
    in relative terms: k=3 on the 1-50-50-1 EoS network (4 seeds x 2 rates x 1000
    steps), whose third eigenvalue is in the bulk, left 327 of 2424 residuals above
    1e-3 at a fixed 20 / 10 products; converging, 86, each at its cap, where 95 of 800
    warm solves ended (13.9 products per warm solve on average).

    Early stopping: a small `warm_iters` (down to k + 1) lets a warm solve stop as soon
    as every residual is below `tol` (2-4 products for most), but a warm start that
    stops early can stay on an eigenvector that another eigenvalue has just overtaken:
    measured on the 1-100-1 tanh EoS sweep, 39 of 1608 warm estimates with
    warm_iters=2, max_warm_iters=20, tol=1e-3 were 0.2-2.5% low with residuals < 1e-5,
    against 1 (with residual 0.004) at a fixed 20 products. Use it where cost matters
    more than crossings. `mode` picks the HVP formulation (`engine.curvature.hvp`);
    `examples` the first-n subset the Hessian is taken on."""
    return _eigen_probe("sharpness", "eigen_residual", k, iters, warm_iters, method, examples, False,
                        mode, tol, max_iters, max_warm_iters)


def preconditioned_sharpness(k: int = 1, iters: int = 20, warm_iters: int = 10,
                             method: str = "lanczos", examples: int | None = None,
                             mode: str = "forward_over_reverse", tol: float | None = TOL,
                             max_iters: int | None = None, max_warm_iters: int | None = None) -> Probe:
    """lambda_max(P^-1 H) with P the optimizer's diagonal preconditioner read from its
    state (`engine.optim.preconditioner`); compare with
    `engine.optim.stability_threshold` (38/lr for Adam at b1 = 0.9). Also records
    `preconditioned_eigen_residual` and `preconditioned_eigen_products`; solves as in
    `sharpness` (budget, tolerance, cap)."""
    return _eigen_probe("preconditioned_sharpness", "preconditioned_eigen_residual", k, iters,
                        warm_iters, method, examples, True, mode, tol, max_iters, max_warm_iters)


def minibatches(key, n: int, batch_size: int, batches: int):
    """Example indices [batches, batch_size] of `batches` minibatches of the n training
    examples, each drawn without replacement (a fresh permutation per batch)."""
    return jax.vmap(lambda k: jax.random.permutation(k, n)[:batch_size])(jax.random.split(key, batches))


def _check_batches(batches) -> None:
    require(isinstance(batches, int) and not isinstance(batches, bool) and batches >= 2, "probes.batches",
            f"got {batches!r}", "use an integer >= 2 (the standard error needs two)")


def _batch_objective(snap: Snapshot) -> Callable:
    """loss_B(params, i): the training objective on the examples i [batch_size]."""
    return lambda p, i: snap.objective(p, snap.data.x[i], snap.data.y[i])


def _mean_with_error(name: str, values) -> dict:
    """{name: the mean of values [batches], name_error: its standard error std / sqrt(batches)}."""
    return {name: jnp.mean(values), f"{name}_error": jnp.std(values, ddof=1) / jnp.sqrt(values.shape[0])}


def _over_batches(name: str, per_batch: Callable, batches: int) -> Probe:
    """A probe recording the mean of `per_batch(snap, loss_B)` over `batches` minibatches
    of the training batch size drawn from the record's key, as `name`, and its standard
    error (std / sqrt(batches)) as `name_error`."""
    _check_batches(batches)

    def fn(snap: Snapshot):
        idx = minibatches(_key(snap, name), snap.data.n, snap.batch_size, batches)
        loss_on = _batch_objective(snap)
        return _mean_with_error(name, jax.lax.map(lambda i: per_batch(snap, lambda p: loss_on(p, i)), idx))

    return Probe(name, lambda snap, state: (fn(snap), state), {name: (), f"{name}_error": ()},
                 needs=frozenset({"minibatch"}))


def batch_sharpness(batches: int = 8) -> Probe:
    """E_B[g_B^T H_B g_B / ||g_B||^2] over minibatches B of the training batch size (the
    curvature of each batch's loss along its own gradient; Andreyev & Beneventano 2024,
    "edge of stochastic stability": SGD hovers where it reaches 2/lr), with its standard
    error (`batch_sharpness_error`). A fixed number of batches per measurement, drawn
    from the run's key; one HVP each."""
    def along_own_gradient(snap, loss_b):
        return curvature.directional_curvature(loss_b, snap.params, jax.grad(loss_b)(snap.params))
    return _over_batches("batch_sharpness", along_own_gradient, batches)


def minibatch_sharpness(batches: int = 4, iters: int = 20, tol: float | None = TOL,
                        max_iters: int | None = None) -> Probe:
    """The mean over minibatches B of lambda_max(H_B), each a cold Lanczos solve of
    `iters` products, then on until its residual is below `tol`, at most `max_iters`
    (as in `sharpness`), with its standard error (`minibatch_sharpness_error`), the
    largest residual of the batches' solves (`minibatch_sharpness_residual`) and their
    mean products (`minibatch_sharpness_products`)."""
    _check_batches(batches)
    budget, name = _budget(iters, iters, tol, max_iters, max_iters), "minibatch_sharpness"

    def measure(snap: Snapshot, state):
        idx = minibatches(_key(snap, name), snap.data.n, snap.batch_size, batches)
        loss_on = _batch_objective(snap)
        least, most = budget.products(True, ravel_pytree(snap.params)[0].shape[0])

        def top(i):
            eig = curvature.top_eigenvalues(lambda p: loss_on(p, i), snap.params, _key(snap, name), 1, most,
                                            tol=tol, min_iters=least)
            return eig.values[0], eig.residuals[0], _products(eig)
        values, residuals, products = jax.lax.map(top, idx)
        return {**_mean_with_error(name, values), f"{name}_residual": jnp.max(residuals),
                f"{name}_products": jnp.mean(products)}, state

    outputs = dict.fromkeys((name, f"{name}_error", f"{name}_residual", f"{name}_products"), ())
    return Probe(name, measure, outputs, needs=frozenset({"minibatch"}))


def gradient_noise(batches: int = 8, non_uniformity: bool = True, iters: int = 20, warm_iters: int = 10,
                   tol: float | None = TOL, max_iters: int | None = None,
                   max_warm_iters: int | None = None) -> Probe:
    """The minibatch gradient noise of SGD and the non-uniformity of the Hessians, on
    `batches` minibatches of the training batch size B drawn (each without replacement)
    from the record's key; n examples, per-example losses l_i, L = (1/n) sum_i l_i,
    full gradient g and Hessian H, a minibatch's g_b and H_b.

    gradient_noise = tr Sigma_B, Sigma_B = Cov_b[g_b]: the mean over the batches of
        ||g_b - g||^2 (unbiased), with its standard error `gradient_noise_error`. For
        sampling without replacement Sigma_B = (n - B) / (B (n - 1)) Sigma_1, with the
        per-example covariance Sigma_1 = (1/n) sum_i (g_i - g)(g_i - g)^T. One full and
        `batches` minibatch gradients.
    non_uniformity = s = sqrt(lambda_max(Sigma_H)), Sigma_H = (1/n) sum_i H_i^2 - H^2
        (Wu, Ma & E 2018, "How SGD selects the global minima in over-parameterized
        learning", NeurIPS). Since E_b[(H_b - H)^2] = (n - B) / (B (n - 1)) Sigma_H,
        s^2 is estimated as B (n - 1) / (n - B) * lambda_max(mean_b (H_b - H)^2) on the
        same batches, the top eigenvalue by Lanczos on that operator
        (`engine.curvature.hessian_spread`: HVPs only, each product 2 of H and 2 `batches`
        of the H_b), `iters` products at step 0, then `warm_iters` warm-started from the
        previous eigenvector, each on until its residual is below `tol`, at most
        `max_iters` / `max_warm_iters` (as in `sharpness`); `non_uniformity_residual` is its
        ||S v - theta v|| / theta, `non_uniformity_products` the products it spent.
        The matrix mean is unbiased, but lambda_max is convex, so the estimate of s^2 is
        biased upward (Jensen), by O(1/batches): take more batches where s matters more
        than cost. `non_uniformity=False` skips it (the costly part).

    Linear stability of SGD (learning rate eta, batch size B) at a global minimum
    requires (Wu, Ma & E 2018): sharpness lambda_max(H) <= 2/eta and
    s <= (1/eta) sqrt(B (n - 1) / (n - B)) ~ sqrt(B)/eta. Their derivation holds at a
    minimum where every l_i is minimal; elsewhere these are descriptive."""
    _check_batches(batches)
    require(isinstance(non_uniformity, bool), "probes.non_uniformity", f"got {non_uniformity!r}",
            "use True or False")
    budget = _budget(iters, warm_iters, tol, max_iters, max_warm_iters)

    def init(params):
        flat = ravel_pytree(params)[0]
        return jnp.zeros((1, flat.shape[0]), flat.dtype)

    def measure(snap: Snapshot, vector):
        n, B = snap.data.n, snap.batch_size
        idx = minibatches(_key(snap, "gradient_noise"), n, B, batches)
        loss_on, flat = _batch_objective(snap), lambda tree: ravel_pytree(tree)[0]
        g = flat(jax.grad(snap.loss_fn)(snap.params))
        g_b = jax.vmap(lambda i: flat(jax.grad(loss_on)(snap.params, i)))(idx)
        out = _mean_with_error("gradient_noise", jnp.sum(jnp.square(g_b - g), axis=1))
        if not non_uniformity:
            return out, vector
        eig, vector = _warm_solve(lambda least, most, v: curvature.hessian_spread(
            snap.loss_fn, loss_on, idx, snap.params, _key(snap, "non_uniformity"), most, v, tol=tol,
            min_iters=least), snap, vector, budget)
        spread = B * (n - 1) / (n - B) * jnp.maximum(eig.values[0], 0.0)
        return {**out, "non_uniformity": jnp.sqrt(spread), "non_uniformity_residual": eig.residuals[0],
                "non_uniformity_products": _products(eig)}, vector

    names = ("gradient_noise", "gradient_noise_error") + (
        ("non_uniformity", "non_uniformity_residual", "non_uniformity_products") if non_uniformity else ())
    return Probe("gradient_noise", measure, dict.fromkeys(names, ()), init if non_uniformity else None,
                 needs=frozenset({"minibatch"}))


def hessian_extremes(iters: int = 20, warm_iters: int = 10, examples: int | None = None,
                     tol: float | None = TOL, max_iters: int | None = None,
                     max_warm_iters: int | None = None) -> Probe:
    """Both ends of the Hessian spectrum, signed: `lambda_max` and `lambda_min` (the top
    eigenvalue of -H, negated; `engine.curvature.smallest_eigenvalue`), with their
    residuals `lambda_max_residual`, `lambda_min_residual` and products
    `lambda_max_products`, `lambda_min_products`. Two Lanczos solves, each warm-started
    from its own previous eigenvector, each with the budget, tolerance and cap of
    `sharpness`. The residual is relative to |lambda|, so a lambda_min near 0 (inside
    the bulk) is slow to bring below `tol`: on the 1-50-50-1 EoS network (4 seeds x 2
    rates x 1000 steps) a fixed 20 / 10 products left 510 of 808 lambda_min residuals
    above 1e-3; converging, 78, each at its cap, where 83 of 800 warm solves ended
    (15.2 products per warm solve on average; lambda_max: none above, 10)."""
    budget = _budget(iters, warm_iters, tol, max_iters, max_warm_iters)
    _check_examples(examples)

    def init(params):
        flat = ravel_pytree(params)[0]
        return jnp.zeros((2, 1, flat.shape[0]), flat.dtype)

    def measure(snap: Snapshot, vectors):
        loss_fn, key = _loss_on(snap, examples), _key(snap, "hessian_extremes")
        top, v_max = _warm_solve(lambda least, most, v: curvature.top_eigenvalues(
            loss_fn, snap.params, key, 1, most, init=v, tol=tol, min_iters=least), snap, vectors[0], budget)
        low, v_min = _warm_solve(lambda least, most, v: curvature.smallest_eigenvalue(
            loss_fn, snap.params, key, most, init=v, tol=tol, min_iters=least), snap, vectors[1], budget)
        return {"lambda_max": top.values[0], "lambda_min": low.values[0], "lambda_max_residual": top.residuals[0],
                "lambda_min_residual": low.residuals[0], "lambda_max_products": _products(top),
                "lambda_min_products": _products(low)}, jnp.stack([v_max, v_min])

    return Probe("hessian_extremes", measure, dict.fromkeys(
        ("lambda_max", "lambda_min", "lambda_max_residual", "lambda_min_residual", "lambda_max_products",
         "lambda_min_products"), ()), init)


def _with_layer(params, i: int, block):
    """`params` with its i-th layer (`engine.models.layers` order) replaced by `block`."""
    if isinstance(params, (tuple, list)):
        return type(params)([block if j == i else p for j, p in enumerate(params)])
    name = layers(params)[i][0]
    return {**params, name: block}


def layer_sharpness(iters: int = 20, warm_iters: int = 10, examples: int | None = None,
                    tol: float | None = TOL, max_iters: int | None = None,
                    max_warm_iters: int | None = None) -> Probe:
    """lambda_max of each layer's diagonal block of the Hessian (the Hessian of the loss
    in that layer's parameters, the others held), dim `layer`, its residual
    (`layer_sharpness_residual`) and products (`layer_sharpness_products`). One Lanczos
    solve per layer, at most as many products as the layer has parameters, warm-started
    from the layer's previous eigenvector, with the budget, tolerance and cap of
    `sharpness`."""
    budget = _budget(iters, warm_iters, tol, max_iters, max_warm_iters)
    _check_examples(examples)

    def init(params):
        return tuple(jnp.zeros((1, ravel_pytree(p)[0].shape[0]), ravel_pytree(p)[0].dtype) for _, p in layers(params))

    def measure(snap: Snapshot, vectors):
        loss_fn, eigs, out = _loss_on(snap, examples), [], []
        for i, (_, block) in enumerate(layers(snap.params)):
            block_loss = lambda q, i=i: loss_fn(_with_layer(snap.params, i, q))
            eig, v = _warm_solve(lambda least, most, v: curvature.top_eigenvalues(
                block_loss, block, _key(snap, f"layer_sharpness_{i}"), 1, most, init=v, tol=tol, min_iters=least),
                snap, vectors[i], budget)
            eigs.append(eig)
            out.append(v)
        return {"layer_sharpness": jnp.stack([e.values[0] for e in eigs]),
                "layer_sharpness_residual": jnp.stack([e.residuals[0] for e in eigs]),
                "layer_sharpness_products": jnp.stack([_products(e) for e in eigs])}, tuple(out)

    return Probe("layer_sharpness", measure, dict.fromkeys(
        ("layer_sharpness", "layer_sharpness_residual", "layer_sharpness_products"), ("layer",)), init)


def directional_curvature(examples: int | None = None, preconditioned: bool = False) -> Probe:
    """Curvature along the gradient g: g^T H g / g^T g; preconditioned: along the update
    direction d = P^-1 g, (d^T H d) / (d^T P d) (Bai et al. 2025). One HVP."""
    _check_examples(examples)
    name = "preconditioned_directional_curvature" if preconditioned else "directional_curvature"

    def fn(snap):
        loss_fn = _loss_on(snap, examples)
        precond = _preconditioner(snap, preconditioned)
        return curvature.directional_curvature(loss_fn, snap.params, jax.grad(loss_fn)(snap.params), precond)

    return scalar(name, fn, needs={"preconditioner"} if preconditioned else ())


def _hutchinson_probe(name: str, estimator: Callable, samples: int, examples: int | None) -> Probe:
    """A probe recording `estimator(loss, params, key, samples)` -> (estimate, standard
    error) as `name` and `name`_error."""
    curvature.check_samples(samples, prefix="probes.")
    _check_examples(examples)

    def measure(snap, state):
        est, err = estimator(_loss_on(snap, examples), snap.params, _key(snap, name), samples)
        return {name: est, f"{name}_error": err}, state

    return Probe(name, measure, {name: (), f"{name}_error": ()})


def trace(samples: int = 16, examples: int | None = None) -> Probe:
    """Hutchinson estimate of tr H (`trace`) and its standard error (`trace_error`)."""
    return _hutchinson_probe("trace", curvature.hutchinson_trace, samples, examples)


def hessian_frobenius(samples: int = 16, examples: int | None = None) -> Probe:
    """Hutchinson estimate of ||H||_F = sqrt(tr H^2) (`hessian_frobenius`, from the mean
    of ||H z||^2 over `samples` Rademacher z) and its standard error
    (`hessian_frobenius_error`); the sharpness SGD's linear stability bounds for square
    loss, ||H||_F <= O(sqrt(B)/eta) (Wu, Wang & Su 2022)."""
    return _hutchinson_probe("hessian_frobenius", curvature.hutchinson_frobenius, samples, examples)


RELATIVE_SPAN = 1.1  # a relative grid spans +- 1.1 spectrum_radius: the extreme nodes' Gaussians fit


def _check_grid(grid, sigma) -> tuple:
    """The grid as a tuple of floats and whether it is relative (an int: that many points)."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        require(grid >= 2, "probes.grid", f"got {grid!r}", "use a number of points >= 2, or eigenvalues")
        points = tuple(RELATIVE_SPAN * (2 * i / (grid - 1) - 1) for i in range(grid))
        relative = True
    else:
        try:
            points, relative = tuple(float(t) for t in grid), False
        except (TypeError, ValueError):
            points, relative = (), False
        require(len(points) >= 2 and all(a < b for a, b in zip(points, points[1:]))
                and all(abs(t) < float("inf") for t in points), "probes.grid", f"got {grid!r}",
                "use an increasing sequence of >= 2 finite eigenvalues, or a number of points for a relative grid")
    require(sigma is None or (isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
                              and 0 < sigma < float("inf")), "probes.sigma", f"got {sigma!r}",
            "use a positive width, or None for two grid spacings")
    return points, relative


def spectral_density(starts: int = 4, iters: int = 30, grid=201, sigma: float | None = None, deflate: int = 8,
                     deflate_iters: int = 30, examples: int | None = None,
                     mode: str = "forward_over_reverse") -> Probe:
    """The eigenvalue density of the training-loss Hessian by deflated stochastic Lanczos
    quadrature (`engine.curvature.spectral_quadrature`; Lin, Saad & Yang 2016; Ghorbani,
    Krishnan & Xiao 2019): the top `deflate` eigenpairs by Lanczos (`deflate_iters`
    products) as exact point masses of weight 1/n, and `starts` Rademacher starts of
    `iters` Lanczos steps on the rest; starts * iters + deflate_iters products in all.
    deflate=0 is plain SLQ. Every solve is cold: warm-starting the deflation from the
    previous eigenvectors (16 products, thick restart from 4 vectors) left the second
    outlier 0.5% low where a cold solve of 30 is exact to 1e-6 (float64, the 1-16-16-1
    sweep of tests/test_spectrum.py).

    Records, n the number of parameters:
      spectrum_nodes, spectrum_weights  [spectrum_start, spectrum_node]: the quadrature
          itself (start s: theta[s, i], w[s, i], each row summing to 1; the first
          `deflate` nodes are the top eigenvalues). Everything else follows from it:
          n * mean_s sum_i w f(theta) ~ tr f(H) (first moment: tr H), n times the mass
          above a value counts the eigenvalues there, and
          `engine.analysis.spectral_density(ds, grid, sigma)` draws the density on any
          grid after the run.
      spectrum_radius  max |theta|, the largest eigenvalue magnitude found (~ ||H||_2).
      spectral_density  mean_s sum_i w[s, i] N(t; theta[s, i], sigma^2) on a grid fixed
          now, since the recorded arrays must have one shape for the whole run:
          grid=an int G (default 201): relative, dim `relative_eigenvalue` with G points
              u in [-1.1, 1.1], the density of u = lambda / spectrum_radius (so the top
              outlier sits near 1 whatever the scale, and runs at different learning
              rates compare); absolute eigenvalues are u * spectrum_radius
              (`ds.relative_eigenvalue * ds.spectrum_radius` is a coordinate to plot on);
          grid=a sequence of eigenvalues: absolute, dim `eigenvalue`, for runs whose
              spectrum you know the range of (e.g. up to 2/lr at the edge of stability).
          Either way it integrates to 1 over its coordinate when the grid covers the
          spectrum. sigma: the Gaussian width in the grid's units (u or eigenvalues);
          None: two grid spacings (0.022 of the radius for the default grid).
    `examples`: the first-n subset the Hessian is taken on; `mode`: the HVP formulation."""
    curvature.check_quadrature(starts, iters, deflate, prefix="probes.")
    if deflate:
        curvature.check_solver(deflate, deflate_iters, prefix="probes.", iters_name="deflate_iters")
    curvature.check_solver(1, 1, mode=mode, prefix="probes.")
    _check_examples(examples)
    points, relative = _check_grid(grid, sigma)
    width = 2 * (points[-1] - points[0]) / (len(points) - 1) if sigma is None else float(sigma)
    dim = "relative_eigenvalue" if relative else "eigenvalue"

    def measure(snap: Snapshot, state):
        q = curvature.spectral_quadrature(_loss_on(snap, examples), snap.params, _key(snap, "spectral_density"),
                                          starts, iters, deflate, deflate_iters, mode=mode)
        radius = jnp.max(jnp.abs(q.nodes))
        nodes = q.nodes / jnp.where(radius > 0, radius, 1.0) if relative else q.nodes  # H = 0: all at 0
        density = curvature.spectral_density(nodes, q.weights, jnp.asarray(points, q.nodes.dtype), width)
        return {"spectral_density": density, "spectrum_nodes": q.nodes, "spectrum_weights": q.weights,
                "spectrum_radius": radius}, state

    pair = ("spectrum_start", "spectrum_node")
    return Probe("spectral_density", measure, {"spectral_density": (dim,), "spectrum_nodes": pair,
                                               "spectrum_weights": pair, "spectrum_radius": ()},
                 coords={dim: list(points), "spectrum_start": list(range(starts)),
                         "spectrum_node": list(range(deflate + iters))})


def step_size(fraction: float = 0.5, iters: int = 20, warm_iters: int = 3, lr_max: float = 1e3) -> Probe:
    """Sets the learning rate a run can afford now: lr = min(lr_max, fraction * 2 / ||H||_2),
    ||H||_2 = max |lambda(H)| by power iteration (`engine.curvature.spectral_norm`),
    warm-started from the previous measurement (`iters` products at step 0, then
    `warm_iters`). Records `lr` and `hessian_norm`; the run trains with that `lr` for
    the next `every` steps (`sets=("lr",)`), and every other probe of the chain sees it.

    GD on a quadratic is stable iff lr * lambda_max < 2, so fraction < 1 leaves a margin
    for the growth of the curvature between measurements; |lambda_min| counts too,
    because a small initialization sits near a saddle whose negative curvature sets the
    escape rate (1 + lr |lambda_min| per step). This replaces the learning-rate halving
    retries of hand-written phase-diagram scripts (Luo et al. 2021)."""
    require(isinstance(fraction, (int, float)) and 0 < fraction <= 1, "probes.fraction",
            f"got {fraction!r}", "use a number in (0, 1]: the fraction of the stability limit 2/||H||")
    curvature.check_solver(1, iters, "power", prefix="probes.")
    curvature.check_solver(1, warm_iters, "power", prefix="probes.", iters_name="warm_iters")
    require(isinstance(lr_max, (int, float)) and 0 < lr_max < float("inf"), "probes.lr_max",
            f"got {lr_max!r}", "use a finite positive cap on the learning rate")

    def init(params):
        flat = ravel_pytree(params)[0]
        return {"vector": jnp.zeros_like(flat), "lr": jnp.zeros((), flat.dtype)}

    def measure(snap: Snapshot, state):
        rho, v = curvature.spectral_norm(snap.loss_fn, snap.params, _key(snap, "step_size"),
                                         iters if snap.first else warm_iters,
                                         None if snap.first else state["vector"])
        lr = jnp.minimum(lr_max, 2.0 * fraction / jnp.maximum(rho, 2.0 * fraction / lr_max))
        ok = jnp.isfinite(rho) & jnp.all(jnp.isfinite(v))
        state = {"vector": jnp.where(ok, v, state["vector"]), "lr": jnp.where(ok, lr, state["lr"])}
        return {"lr": state["lr"], "hessian_norm": rho}, state

    return Probe("step_size", measure, {"lr": (), "hessian_norm": ()}, init, sets=("lr",))
