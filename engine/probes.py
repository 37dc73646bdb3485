"""What is measured along a run, every `every` steps, inside the compiled loop.

A `Probe` is a pair of pure functions, as an optax transformation is:
`init(params) -> state` (or None: stateless) and
`measure(snapshot, state) -> ({variable: value}, state)`, where `state` is what the
probe carries from one measurement to the next (the previous top eigenvectors that
warm-start the next eigen-solve, theta_0 for the relative change). `outputs` names
each variable's trailing dimensions, such as ("layer",) or ("eigen",). Values are
fixed-size arrays, so a whole trajectory is one array.

`chain(*probes)` combines probes into one whose state is {probe name: its state}, as
`optax.named_chain` does; a simulation measures the chain of its `probes=`. A probe
that *sets* an optimizer hyperparameter (`sets`, e.g. `step_size` sets "lr") records
the value under that name, and the run trains with it from that record step until the
next; a chain measures such probes first and hands the others a snapshot whose
optimizer state already holds the new value, so no probe's meaning depends on its
position in the chain.

Every probe measures the full training set, also under minibatch SGD (`loss_fn`).
Built-in probes (names shared by every experiment; `probe(name)` or a factory below):
    loss, test_loss            training / test loss
    accuracy, test_accuracy    argmax accuracy (classification targets)
    param_norm                 ||theta_t||
    grad_norm                  ||grad L(theta_t)||
    prediction                 f(x_i; theta_t) on the training inputs, dims ("example", "output")
    loss_change                L(theta_t + u_t) - L(theta_t), u_t the optimizer's next update
                               (> 0: the next step raises the loss; edge of stability)
    relative_change            ||theta_t - theta_0|| / ||theta_0||
    relative_change_layer      the same per layer, dims ("layer",)  (Luo et al. 2021:
                               RD(theta_w) of the input layer is layer "0")
    neuron_weights             each unit's input weights with its bias appended, [neuron, fan_in]
                               (`neuron_weights(layer)`; conv kernels flattened: one row per
                               channel), for condensation (Zhou et al. 2021, 2023)
    sharpness (+ eigen_residual, eigen_products)   lambda_max(H), top-k with dims ("eigen",)
    preconditioned_sharpness (+ preconditioned_eigen_residual, _products)   lambda_max(P^-1 H)
    directional_curvature                 g^T H g / g^T g, g the full gradient
    preconditioned_directional_curvature  (d^T H d)/(d^T P d), d = P^-1 g
    trace (+ trace_error)                 Hutchinson estimate of tr H
    hessian_frobenius (+ _error)          Hutchinson estimate of ||H||_F = sqrt(tr H^2)
    spectral_density (+ spectrum_nodes, spectrum_weights, spectrum_radius)
                                          eigenvalue density of H by deflated stochastic Lanczos
                                          quadrature (Lin, Saad & Yang 2016; Ghorbani et al. 2019)
    hessian_extremes                      lambda_max and lambda_min (signed) of H (+ _residual,
                                          _products of each)
    layer_sharpness (+ _residual, _products)    lambda_max of each layer's Hessian block, dims ("layer",)
  under minibatch training (batch size B; refused under full batch):
    batch_sharpness (+ _error)            E_B[g_B^T H_B g_B / ||g_B||^2]  (Andreyev & Beneventano 2024)
    minibatch_sharpness (+ _error, _residual, _products)   E_B[lambda_max(H_B)]
    gradient_noise (+ _error, non_uniformity, non_uniformity_residual, _products)
                                          tr Cov_B[g_B] = E_B ||g_B - g||^2, and
                                          s = sqrt(lambda_max((1/n) sum_i H_i^2 - H^2)) (Wu, Ma & E 2018)
    step_size (lr, hessian_norm)          sets the learning rate a run can afford,
                                          lr = fraction * 2 / ||H||_2
  what the network represents (grokking):
    weight_norm_layer                     ||theta_l|| per layer, dims ("layer",)
    logit_norm                            mean_i ||f(x_i)||
    softmax_collapse                      fraction of examples whose correct-class softmax is
                                          exactly 1 in float32 (Prieto et al. 2025)
    ntk_distance                          1 - <K_t, K_0>_F / (||K_t|| ||K_0||) (Fort et al. 2020)
    output_spectrum(grid_x, grid_shape)   |DFT over the input grid of f|^2 per frequency
  transformers (Zhang et al. 2024, anchor functions):
    attention_maps(model, x_probe)        attention weights on a fixed probe batch, dims
                                          ("probe", "block", "head", "query", "key"), or
                                          averaged over it (average=True)
    answer_kinds(x, candidates)           fractions of x answered with each candidate answer
                                          (or none of them), dims ("answer",); held_out_answers(table)
                                          for the anchor task's inferential / symmetric split
    neuron_weights("Module_0/query")      also a flax submodule's path: an attention projection's
                                          output units (heads x head_dim) with their d_model inputs

Every Lanczos solve spends its budget (`iters` cold, `warm_iters` warm-started), then
goes on until its residuals are below `tol` (default TOL = 1e-3), at most `max_iters`
/ `max_warm_iters` products (default CAP x the budget); its residuals and products are
recorded with it.
"""
from __future__ import annotations

import difflib
import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from engine import curvature, losses, optim
from engine.errors import ConfigError, require
from engine.models import layers


class Snapshot(NamedTuple):
    """One run at a record step: what every probe measures. (Under a sweep a probe
    still sees one run: the run axis is vmapped outside.)

    params: pytree, theta_t; loss_fn(params) -> scalar: the training loss on the full
    training set; objective(params, x [m, ...], y [m, d_out]) -> scalar: the loss on
    any examples; predict(params, x [m, ...]) -> [m, d_out]: the model; data:
    `engine.data.Dataset`; loss(y_pred, y) -> scalar; opt_state: the optimizer state,
    its hyperparameters included (`engine.optim.hyperparams`: the values the next
    interval trains with); update(grads, opt_state, params) -> (updates, opt_state):
    the optimizer's step; key: this record's PRNG key; first: True (statically) for
    the measurement at step 0, which has no previous state to warm-start from;
    batch_size: the training minibatch size (static; None for full batch); record: the
    record's index (int32 scalar, the same for every run of a sweep); every: steps
    between records (static); masked_objective(params, x, y, key) -> scalar: the
    objective with the dropout masks drawn from `key` (None without dropout);
    weights: None, or under a split drawn per run (`simulation(train_fraction=...)`,
    data with a `rank`) the pair ([n] training weights, [n] test weights), 1 / 0 on
    data.x: measure means over the training or the test set with `on_train` /
    `on_test`. `loss_fn` and `objective` are what the optimizer descends (coupled L2 and the
    1/alpha^2 of an output scale included, `engine.simulate`); `predict` is the
    deterministic network (no dropout; the centred f_alpha under an output scale)."""
    params: Any
    loss_fn: Callable
    objective: Callable
    predict: Callable
    data: Any
    loss: Callable
    opt_state: Any
    update: Callable
    key: jax.Array
    first: bool
    batch_size: int | None = None
    record: Any = 0
    every: int = 1
    masked_objective: Callable | None = None
    weights: Any = None


def on_train(snap: Snapshot, fn: Callable) -> jax.Array:
    """fn(y_pred, y) (a mean over examples) on the training set: the network's outputs
    on data.x, or under a per-run split those weighted by the run's training weights."""
    value = snap.predict(snap.params, snap.data.x)
    return fn(value, snap.data.y) if snap.weights is None else losses.weighted(fn, snap.weights[0])(value, snap.data.y)


def on_test(snap: Snapshot, fn: Callable) -> jax.Array:
    """fn(y_pred, y) on the test set: data.x_test, or under a per-run split the
    examples of data.x outside the run's training set."""
    if snap.weights is None:
        return fn(snap.predict(snap.params, snap.data.x_test), snap.data.y_test)
    return losses.weighted(fn, snap.weights[1])(snap.predict(snap.params, snap.data.x), snap.data.y)


class Probe(NamedTuple):
    """name; measure(snapshot, state) -> ({variable: value}, state); outputs: {variable:
    its trailing dims}; init(params) -> state, or None when stateless; needs: among
    {"test", "classification", "preconditioner", "minibatch", "dropout"}, checked by `check`;
    coords: {dim: coordinate values}; sets: the optimizer hyperparameters the probe
    chooses (each also one of its variables); members: the probes of a chain; every: the
    probe's own cadence in steps (None: every record; see `every`)."""
    name: str
    measure: Callable[[Snapshot, Any], tuple]
    outputs: dict
    init: Callable[[Any], Any] | None = None
    needs: frozenset = frozenset()
    coords: dict = {}
    sets: tuple = ()
    members: tuple = ()
    every: int | None = None

    def check(self, data, optimizer, batch_size: int | None = None, dropout: bool = False) -> None:
        """ConfigError, before anything compiles, if this probe (or a member of this
        chain) cannot measure a run of `optimizer` on `data` with minibatches of
        `batch_size` (None: full batch), with dropout or without."""
        for p in self.members or (self,):
            for need in sorted(p.needs):
                NEEDS[need](p.name, data, optimizer, batch_size, dropout)
            for h in p.sets:
                require(h in optimizer.defaults, "probes", f"probe {p.name!r} sets {h!r} and optimizer "
                        f"'{optimizer.name}' has no such hyperparameter", f"use an optimizer with {h!r}, or drop the probe")


def _needs_test(name, data, optimizer, batch_size, dropout):
    require(data.x_test is not None or data.rank is not None, "probes", f"probe {name!r} needs a test set and the data has none",
            "give data with x_test/y_test or drop the probe")


def _needs_classification(name, data, optimizer, batch_size, dropout):
    require(data.y.ndim == 2 and data.y.shape[1] > 1, "probes", f"probe {name!r} needs one-hot class "
            f"targets, the data has {data.y.shape[-1]} output(s)", "drop the probe or use classification data")


def _needs_preconditioner(name, data, optimizer, batch_size, dropout):
    require(optimizer.name in optim.PRECONDITIONED, "probes", f"probe {name!r} needs a diagonal "
            f"preconditioner and optimizer '{optimizer.name}' has none",
            f"use one of {', '.join(optim.PRECONDITIONED)}, or the unpreconditioned probe")


def _needs_minibatch(name, data, optimizer, batch_size, dropout):
    require(batch_size is not None and batch_size < data.n, "probes", f"probe {name!r} measures minibatch "
            "curvature and the run trains on the full batch", "set simulation(batch_size=...) below the number "
            "of examples, or drop the probe")


def _needs_dropout(name, data, optimizer, batch_size, dropout):
    require(dropout, "probes", f"probe {name!r} measures with a dropout mask and the run has no dropout",
            "set simulation(dropout=...), or use the probe without with_dropout_mask")


NEEDS = {"test": _needs_test, "classification": _needs_classification, "preconditioner": _needs_preconditioner,
         "minibatch": _needs_minibatch, "dropout": _needs_dropout}


def norm(tree) -> jax.Array:
    """Euclidean norm of a pytree viewed as one vector."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def relative_change(params, params0) -> jax.Array:
    """||theta - theta_0|| / ||theta_0||."""
    return norm(jax.tree.map(jnp.subtract, params, params0)) / norm(params0)


def scalar(name: str, fn: Callable[[Snapshot], jax.Array], dims=(), needs=()) -> Probe:
    """A stateless probe recording `fn(snapshot)` as the variable `name`."""
    return Probe(name, lambda snap, state: ({name: fn(snap)}, state), {name: tuple(dims)},
                 needs=frozenset(needs))


def from_start(name: str, fn: Callable[[Any, Any], jax.Array], dims=()) -> Probe:
    """A probe recording `fn(theta_t, theta_0)` as the variable `name`; it keeps
    theta_0 as its state."""
    return Probe(name, lambda snap, params0: ({name: fn(snap.params, params0)}, params0),
                 {name: tuple(dims)}, init=lambda params: params)


# ----------------------------------------------------------------------------- curvature
def _check_examples(examples) -> None:
    require(examples is None or (isinstance(examples, int) and not isinstance(examples, bool) and examples >= 1),
            "probes.examples", f"got {examples!r}", "use a number of examples >= 1, or None for all")


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


def _key(snap: Snapshot, name: str):
    return jax.random.fold_in(snap.key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


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


MATMUL_PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")


def with_precision(probe: Probe, precision: str = "highest") -> Probe:
    """`probe` with its matrix products at `precision` (`jax.default_matmul_precision`):
    "highest" (= "float32") asks for full float32 products where the default is lower,
    as on H100/H200-class GPUs, which run float32 matmuls as TF32 (~1e-3 relative) unless
    told otherwise; the cost is the slower full-precision products. On CPUs every
    float32 product is full precision already. Training itself keeps JAX's setting."""
    require(precision in MATMUL_PRECISIONS, "probes.precision", f"got {precision!r}",
            f"use one of {', '.join(MATMUL_PRECISIONS)}")

    def measure(snap, state):
        with jax.default_matmul_precision(precision):
            return probe.measure(snap, state)
    return probe._replace(measure=measure)


def with_dropout_mask(probe: Probe) -> Probe:
    """`probe` measured on the network with dropout, one fixed mask per measurement
    (drawn from the record's key), instead of the deterministic network: the Hessian is
    then that of one draw of the stochastic training objective, as a training step sees
    it. Needs `simulation(dropout=...)`."""
    def measure(snap, state):
        key = _key(snap, "dropout_mask")
        masked = lambda p, x, y: snap.masked_objective(p, x, y, key)
        return probe.measure(snap._replace(objective=masked, loss_fn=lambda p: masked(p, snap.data.x, snap.data.y)),
                             state)
    return probe._replace(measure=measure, needs=probe.needs | {"dropout"})


def every(steps: int, what) -> Probe:
    """`what` (a probe's name or a `Probe`) measured every `steps` steps instead of at every
    record, e.g. `every(50, "sharpness")` beside the loss at every=10: papers probe
    curvature less often than the loss (`eig_freq` in Cohen et al.'s code). `steps` must
    be a whole multiple of the simulation's `every`; between its measurements the
    probe's variables are NaN (`ds.sharpness.dropna("step")` keeps its own steps) and
    its state (warm starts) carries over from its last measurement. It is measured at
    step 0 and at every record whose step is a multiple of `steps`; the skipped records
    cost nothing (a `lax.cond` on the record index, which all runs share)."""
    given = what if isinstance(what, Probe) else probe(what)
    require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "probes.every",
            f"got {steps!r}", "use a whole number of steps >= 1, a multiple of the simulation's every")
    require(not given.members, "probes.every", "got a chain", "give each probe its own cadence")
    require(not given.sets, "probes.every", f"probe {given.name!r} sets {', '.join(given.sets)}, which the run "
            "trains with until the next measurement", "measure it at every record")
    return given._replace(every=steps)


def _measured(m: Probe, snap: Snapshot, state):
    """m.measure(snap, state) at the records its cadence picks (`every`); NaN values and
    the state unchanged at the others."""
    if m.every is None or snap.first:
        return m.measure(snap, state)
    shapes = jax.eval_shape(lambda s: m.measure(snap, s)[0], state)
    blank = lambda v: jnp.full(v.shape, jnp.nan if jnp.issubdtype(v.dtype, jnp.inexact) else -1, v.dtype)
    skip = lambda s: ({k: blank(v) for k, v in shapes.items()}, s)
    due = snap.record % (m.every // snap.every) == 0
    return jax.lax.cond(due, lambda s: m.measure(snap, s), skip, state)


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
def unit_weights(layer) -> jax.Array:
    """Rows (w_k, b_k): the input weights of each output unit k of one layer, bias last.
    MLP layers {"w": [fan_in, m], "b": [m]}; flax Dense/Conv {"kernel": [..., m], "bias": [m]}
    (a conv kernel is flattened over its window and input channels). [m, fan_in (+1)]."""
    w = layer["w"] if "w" in layer else layer["kernel"]
    rows = w.reshape(-1, w.shape[-1]).T
    b = layer.get("b", layer.get("bias"))
    return rows if b is None else jnp.concatenate([rows, b[:, None]], axis=1)


def _submodule(params, layer: str):
    """The parameters at `layer`: a name from `engine.models.layers`, or a "/"-separated
    path into a flax dict ("MultiHeadDotProductAttention_0/query"). An attention
    projection's kernel [d_model, heads, head_dim] and bias [heads, head_dim] come back
    as a dense layer [d_model, heads head_dim], one unit per (head, feature)."""
    first, *rest = layer.split("/")
    named = dict(layers(params))
    require(first in named, "probes.layer", f"no layer {first!r}", f"use one of {', '.join(named)}")
    node = named[first]
    for i, part in enumerate(rest):
        require(isinstance(node, dict) and part in node, "probes.layer", f"no {part!r} in {'/'.join([first, *rest[:i]])}",
                f"use one of {', '.join(node) if isinstance(node, dict) else '(none: a leaf)'}")
        node = node[part]
    if isinstance(node, dict) and "kernel" in node and node["kernel"].ndim == 3 and rest and rest[-1] in ("query", "key", "value"):
        node = {"kernel": node["kernel"].reshape(node["kernel"].shape[0], -1),
                **({"bias": node["bias"].reshape(-1)} if "bias" in node else {})}
    return node


def neuron_weights(layer: str = "0", name: str = "neuron_weights") -> Probe:
    """Each unit's input weights (w_k, b_k) in layer `layer` (a name from
    `engine.models.layers`, "0" = the first, or a path into a flax model's submodules,
    "MultiHeadDotProductAttention_0/query": the query projection's heads x head_dim
    units, each with its d_model input weights and bias): variable `name` with dims
    ("neuron", "fan_in"), or (f"{name}_neuron", f"{name}_fan_in") under another name, so
    several layers can be recorded at once. Their cosine similarities show condensation
    onto a few orientations (`engine.analysis`; the query/key and MLP input weights of a
    transformer, Zhang et al. 2024)."""
    require(isinstance(layer, str), "probes.layer", f"got {layer!r}", 'use a layer name such as "0"')
    require(isinstance(name, str) and name.isidentifier(), "probes.name", f"got {name!r}",
            "use a Python identifier such as 'kernels_1'")
    dims = ("neuron", "fan_in") if name == "neuron_weights" else (f"{name}_neuron", f"{name}_fan_in")

    def fn(snap):
        return unit_weights(_submodule(snap.params, layer))

    return scalar(name, fn, dims=dims)


# ----------------------------------------------------------------------------- transformers
def attention_maps(model, x_probe, average: bool = False, name: str = "attention") -> Probe:
    """The attention weights of every block on a fixed probe batch x_probe [m, seq_len]
    (`model.attention`, e.g. `engine.models.transformer`): variable `name` with dims
    ("probe", "block", "head", "query", "key"), or with average=True their mean over the
    probe batch, ("block", "head", "query", "key"); "block" (with its index as coordinate,
    so runs of several depths join, NaN past a run's depth) rather than "layer", which
    names parameter groups elsewhere. Causal rows sum to 1 over the keys
    at or before the query. The deterministic network (no dropout)."""
    require(getattr(model, "attention", None) is not None, "probes", f"attention_maps needs a model that returns "
            f"its attention weights, {getattr(model, 'name', model)!r} does not", "use engine.models.transformer")
    x_probe = jnp.asarray(x_probe)
    require(x_probe.ndim == 2 and x_probe.shape[0] >= 1, "probes.x_probe", f"has shape {x_probe.shape}",
            "give a batch of token sequences [m, seq_len]")
    shape = jax.eval_shape(lambda: model.attention(model.init(jax.random.key(0)), x_probe)).shape
    dims = ("block", "head", "query", "key")  # "block", not "layer": that dim names parameter groups
    coords = {d: list(range(n)) for d, n in zip(dims, shape[1:])}  # so sweeps over depth line up

    def fn(snap):
        a = model.attention(snap.params, x_probe)
        return a.mean(0) if average else a

    dims = dims if average else ("probe", *dims)
    return Probe(name, lambda snap, state: ({name: fn(snap)}, state), {name: dims}, coords=coords)


def answer_kinds(x, candidates: dict, name: str = "answers") -> Probe:
    """Of the examples x [m, ...], the fraction whose predicted class (argmax of the
    network's output) equals each candidate answer, and of those equal to none:
    candidates {kind: [m] class ids}, variable `name` with dims (f"{name}_kind",), one
    entry per kind in order, then "other". With two candidates that never coincide (the
    anchor task's held-out pair, `held_out_answers`) the fractions sum to 1."""
    require(isinstance(candidates, dict) and len(candidates) >= 1, "probes.candidates", f"got {candidates!r}",
            "give {kind: [m] class ids}")
    x = jnp.asarray(x)
    kinds = list(candidates)
    ids = jnp.stack([jnp.asarray(candidates[k]).astype(jnp.int32) for k in kinds])  # [kinds, m]
    require(ids.shape[1] == x.shape[0], "probes.candidates", f"hold {ids.shape[1]} answers for {x.shape[0]} examples",
            "give one answer per example")

    def fn(snap):
        predicted = jnp.argmax(snap.predict(snap.params, x), -1)
        hit = predicted[None] == ids
        return jnp.concatenate([hit.mean(1), jnp.mean(~hit.any(0))[None]]).astype(jnp.result_type(float))

    dim = f"{name}_kind"
    return Probe(name, lambda snap, state: ({name: fn(snap)}, state), {name: (dim,)}, coords={dim: [*kinds, "other"]})


def held_out_answers(table, name: str = "held_out_answers") -> Probe:
    """The anchor task's held-out sequences (`engine.anchors.composite_table`, those
    with `~table.train`): the fractions answered inferentially (key + shift_a1 +
    shift_a2), symmetrically (the label of the mirrored pair) and otherwise, as
    `engine.anchors.answer_kinds` counts them, measured inside the run."""
    test = ~table.train
    return answer_kinds(table.tokens[test].astype(float), {"inferential": table.inferential[test],
                                                            "symmetric": table.symmetric[test]}, name)


def loss_change(snap: Snapshot) -> jax.Array:
    """The change of the training loss over the step the run is about to take: the
    optimizer's update u from the current state, L(theta + u) - L(theta). Full batch."""
    updates, _ = snap.update(jax.grad(snap.loss_fn)(snap.params), snap.opt_state, snap.params)
    return snap.loss_fn(optax.apply_updates(snap.params, updates)) - snap.loss_fn(snap.params)


def _per_layer(params, params0) -> jax.Array:
    return jnp.stack([relative_change(p, p0) for (_, p), (_, p0) in zip(layers(params), layers(params0))])


# ----------------------------------------------------------------------------- representation
def layer_norms(params) -> jax.Array:
    """||theta_l|| of each layer (`engine.models.layers` order): [layer]."""
    return jnp.stack([norm(p) for _, p in layers(params)])


def logit_norm(snap: Snapshot) -> jax.Array:
    """The mean over training examples of ||f(x_i)||_2, the logits' size (Prieto et al.
    2025: it grows without bound on the way to Softmax Collapse)."""
    return on_train(snap, lambda f, y: jnp.mean(jnp.linalg.norm(f, axis=-1)))


def softmax_collapse(dtype: str = "float32") -> Probe:
    """The fraction of training examples whose softmax has collapsed: the correct-class
    probability is exactly 1 when the logits are rounded to `dtype` and the softmax is
    computed in it, so that example's cross-entropy gradient is exactly 0 (Softmax
    Collapse, Prieto et al. 2025). Classification targets."""
    require(dtype in ("float16", "bfloat16", "float32", "float64"), "probes.dtype", f"got {dtype!r}",
            "use float16, bfloat16, float32 or float64")

    def collapsed(logits, y):
        p = jax.nn.softmax(logits.astype(dtype), axis=-1)
        correct = jnp.take_along_axis(p, jnp.argmax(y, -1)[:, None], -1)[:, 0]
        return jnp.mean((correct == 1).astype(jnp.float32))

    return scalar("softmax_collapse", lambda snap: on_train(snap, collapsed), needs={"classification"})


def ntk_gram(predict, params, x, direction) -> jax.Array:
    """K_ij = <grad_theta u.f(x_i), grad_theta u.f(x_j)>: the empirical NTK of the
    outputs projected on `direction` u [outputs] (for one output, u = 1: the NTK
    itself), on the examples x [m, ...]. [m, m]."""
    row = lambda xi: ravel_pytree(jax.grad(lambda p: predict(p, xi[None])[0] @ direction)(params))[0]
    J = jax.vmap(row)(x)
    return J @ J.T


def ntk_distance(examples: int = 32) -> Probe:
    """The kernel distance of the empirical NTK from its value at initialization,
    d(K_t, K_0) = 1 - <K_t, K_0>_F / (||K_t||_F ||K_0||_F) (Fort et al. 2020; the
    measure of laziness in Kumar et al. 2023): 0 while training is lazy. K on the first
    `examples` training inputs; for several outputs, the NTK of their projection on one
    fixed random unit direction (drawn from a fixed key, the same at every step and in
    every run), which costs `examples` gradients instead of `examples` x outputs.
    State: theta_0."""
    _check_examples(examples)

    def measure(snap, params0):
        x = snap.data.x[:examples]
        outputs = snap.data.y.shape[-1]
        u = jax.random.normal(jax.random.key(0), (outputs,))
        u = u / jnp.linalg.norm(u)
        K, K0 = (ntk_gram(snap.predict, p, x, u) for p in (snap.params, params0))
        return {"ntk_distance": 1 - jnp.sum(K * K0) / (jnp.linalg.norm(K) * jnp.linalg.norm(K0))}, params0

    return Probe("ntk_distance", measure, {"ntk_distance": ()}, init=lambda params: params)


def output_spectrum(grid_x, grid_shape: tuple, name: str = "output_power") -> Probe:
    """The power per frequency of the network's outputs over an input grid: f on the
    inputs grid_x [prod(grid_shape), ...] (e.g. every pair (a, b) of Z_p^2 in order,
    grid_shape (p, p)), reshaped to [*grid_shape, outputs], its discrete Fourier
    transform over the grid axes, |F(k)|^2 summed over outputs: dims
    (f"{name}_k0", f"{name}_k1", ...). For modular arithmetic, a network that has learnt
    (a + b) mod p puts its power on a few frequencies (Nanda et al. 2023; Zhou, Zhang &
    Xu 2024 read grokking as the fitting of frequencies)."""
    grid_shape = tuple(int(g) for g in grid_shape)
    require(len(grid_x) == int(jnp.prod(jnp.array(grid_shape))), "probes.grid_x",
            f"has {len(grid_x)} inputs, grid_shape {grid_shape} needs {int(jnp.prod(jnp.array(grid_shape)))}",
            "give every grid point once, in row-major order")
    grid_x = jnp.asarray(grid_x)
    axes = tuple(range(len(grid_shape)))

    def fn(snap):
        f = snap.predict(snap.params, grid_x).reshape(*grid_shape, -1)
        return jnp.sum(jnp.abs(jnp.fft.fftn(f, axes=axes)) ** 2, axis=-1) / f.size

    return scalar(name, fn, dims=tuple(f"{name}_k{i}" for i in axes))


# ----------------------------------------------------------------------------- registry
BUILTIN = {
    "loss": lambda: scalar("loss", lambda s: on_train(s, s.loss)),
    "test_loss": lambda: scalar("test_loss", lambda s: on_test(s, s.loss),
                                needs={"test"}),
    "accuracy": lambda: scalar("accuracy", lambda s: on_train(s, losses.accuracy),
                               needs={"classification"}),
    "test_accuracy": lambda: scalar(
        "test_accuracy", lambda s: on_test(s, losses.accuracy),
        needs={"classification", "test"}),
    "param_norm": lambda: scalar("param_norm", lambda s: norm(s.params)),
    "loss_change": lambda: scalar("loss_change", loss_change),
    "prediction": lambda: scalar("prediction", lambda s: s.predict(s.params, s.data.x), dims=("example", "output")),
    "grad_norm": lambda: scalar("grad_norm", lambda s: norm(jax.grad(s.loss_fn)(s.params))),
    "relative_change": lambda: from_start("relative_change", relative_change),
    "relative_change_layer": lambda: from_start("relative_change_layer", _per_layer, dims=("layer",)),
    "sharpness": sharpness,
    "preconditioned_sharpness": preconditioned_sharpness,
    "directional_curvature": directional_curvature,
    "preconditioned_directional_curvature": lambda: directional_curvature(preconditioned=True),
    "trace": trace,
    "hessian_frobenius": hessian_frobenius,
    "spectral_density": spectral_density,
    "hessian_extremes": hessian_extremes,
    "batch_sharpness": batch_sharpness,
    "minibatch_sharpness": minibatch_sharpness,
    "gradient_noise": gradient_noise,
    "layer_sharpness": layer_sharpness,
    "step_size": step_size,
    "neuron_weights": neuron_weights,
    "weight_norm_layer": lambda: scalar("weight_norm_layer", lambda s: layer_norms(s.params), dims=("layer",)),
    "logit_norm": lambda: scalar("logit_norm", logit_norm),
    "softmax_collapse": softmax_collapse,
    "ntk_distance": ntk_distance,
}


def probe(name: str) -> Probe:
    """The built-in probe called `name`, with default settings."""
    if not isinstance(name, str) or name not in BUILTIN:
        close = difflib.get_close_matches(str(name), BUILTIN, n=3)
        raise ConfigError("probes", f"unknown probe {name!r}", (f"did you mean {' or '.join(map(repr, close))}? " if close
                          else "") + "The built-in names are engine.probes.BUILTIN; or pass an engine.probes.Probe")
    return BUILTIN[name]()


def chain(*probes) -> Probe:
    """One probe that measures all of `probes` (names or `Probe`s; chains are
    flattened). Its state is {name: that probe's state}; its variables are all of
    theirs. Probes that set hyperparameters (`sets`) are measured first, and the others
    see a snapshot whose optimizer state holds the values they set. ConfigError for an
    unknown name, a name or variable used twice, or a hyperparameter set twice."""
    require(len(probes) >= 1, "probes", "no probes given", "give a list of probe names, e.g. ('loss', 'sharpness')")
    given = [p if isinstance(p, Probe) else probe(p) for p in probes]
    members = tuple(m for p in given for m in (p.members or (p,)))
    for what, names in (("probe", [m.name for m in members]), ("variable", [v for m in members for v in m.outputs]),
                        ("set hyperparameter", [h for m in members for h in m.sets])):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError("probes", f"{what} {dup[0]!r} appears twice", "list each probe once")
    setters, observers = [m for m in members if m.sets], [m for m in members if not m.sets]

    def init(params):
        return {m.name: m.init(params) if m.init is not None else None for m in members}

    def measure(snap: Snapshot, state: dict):
        values, state = {}, dict(state)
        for m in setters:
            v, state[m.name] = m.measure(snap, state[m.name])
            values.update(v)
        if setters:
            snap = snap._replace(opt_state=optim.with_hyperparams(
                snap.opt_state, **{h: values[h] for m in setters for h in m.sets}))
        for m in observers:
            v, state[m.name] = _measured(m, snap, state[m.name])
            values.update(v)
        return values, state

    return Probe("chain", measure, {v: d for m in members for v, d in m.outputs.items()}, init,
                 coords={d: c for m in members for d, c in m.coords.items()},
                 sets=tuple(h for m in setters for h in m.sets), members=members)


def chain_of(probes) -> Probe:
    """The chain of a `simulation(probes=...)` argument: a list or tuple of names and
    `Probe`s, or one `Probe`."""
    if isinstance(probes, Probe):
        return chain(probes)
    require(isinstance(probes, (list, tuple)) and len(probes) >= 1, "probes", f"got {probes!r}",
            "give a list of probe names, e.g. ('loss', 'sharpness')")
    return chain(*probes)
