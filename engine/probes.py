"""What is measured along a run, every `every` steps, inside the compiled loop.

A `Probe` measures quantities of a `Snapshot` of the run:
`measure(snapshot, state) -> ({variable: value}, state)`, where `state` (from
`init(params)`, or None) is what the probe carries from one measurement to the next,
e.g. the previous top eigenvectors that warm-start the next eigen-solve. `outputs`
names each variable's trailing dimensions, such as ("layer",) or ("eigen",). Values
are fixed-size arrays, so a whole trajectory is one array.

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
    sharpness (+ eigen_residual)          lambda_max(H), top-k with dims ("eigen",)
    preconditioned_sharpness (+ preconditioned_eigen_residual)   lambda_max(P^-1 H)
    directional_curvature                 g^T H g / g^T g, g the full gradient
    preconditioned_directional_curvature  (d^T H d)/(d^T P d), d = P^-1 g
    trace (+ trace_error)                 Hutchinson estimate of tr H
    step_size (lr, hessian_norm)          the learning rate a run can afford, fraction * 2 / ||H||_2,
                                          for `simulation(step_size=...)`
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from engine import curvature, losses
from engine.errors import ConfigError, require
from engine.models import layers
from engine.optim import preconditioner


class Snapshot(NamedTuple):
    """The run at a record step. `loss_fn(params) -> scalar` is the training loss on the
    full training set, `objective(params, x, y)` the loss on any examples,
    `predict(params, x)` the model; `first` is True (statically) for the measurement
    at step 0, which has no previous state to warm-start from."""
    params: Any
    params0: Any
    loss_fn: Callable
    objective: Callable
    predict: Callable
    data: Any
    loss: Callable
    opt_state: Any
    optimizer: Any
    hparams: dict
    key: jax.Array
    first: bool


class Probe(NamedTuple):
    name: str
    measure: Callable[[Snapshot, Any], tuple]
    outputs: dict                     # variable -> its trailing dims
    init: Callable[[Any], Any] | None = None
    needs: frozenset = frozenset()    # among {"test", "classification", "preconditioner"}
    coords: dict = {}                 # dim -> coordinate values


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


# ----------------------------------------------------------------------------- curvature
def _loss_on(snap: Snapshot, examples: int | None) -> Callable:
    """The training loss on all examples, or on the fixed first `examples` of them (as
    the edge-of-stability literature measures sharpness on 5000 examples)."""
    if examples is None:
        return snap.loss_fn
    x, y = snap.data.x[:examples], snap.data.y[:examples]
    return lambda p: snap.objective(p, x, y)


def _preconditioner(snap: Snapshot, preconditioned: bool):
    """The optimizer's diagonal P from its state, or None for the plain Hessian."""
    return preconditioner(snap.opt_state, snap.hparams) if preconditioned else None


def _key(snap: Snapshot, name: str):
    return jax.random.fold_in(snap.key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def _check_curvature_args(k, iters, warm_iters, method, examples, tol=None):
    require(isinstance(k, int) and k >= 1, "probes.k", f"got {k!r}", "use an integer >= 1")
    for field, v in (("iters", iters), ("warm_iters", warm_iters)):
        require(isinstance(v, int) and v >= k, f"probes.{field}", f"got {v!r} for k={k}",
                "use an integer >= k")
    require(method in curvature.METHODS, "probes.method", f"unknown value {method!r}",
            f"use one of {', '.join(curvature.METHODS)}")
    require(examples is None or (isinstance(examples, int) and examples >= 1), "probes.examples",
            f"got {examples!r}", "use a number of examples >= 1, or None for all")
    require(tol is None or (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0),
            "probes.tol", f"got {tol!r}", "use a positive relative residual such as 1e-3, or None")
    require(tol is None or method == "lanczos", "probes.tol",
            f"method {method!r} runs a fixed number of products", "use method='lanczos', or tol=None")


def _eigen_probe(name, residual_name, k, iters, warm_iters, method, examples, preconditioned, mode, tol):
    _check_curvature_args(k, iters, warm_iters, method, examples, tol)
    require(mode in curvature.HVP_MODES, "probes.mode", f"unknown value {mode!r}",
            f"use one of {', '.join(curvature.HVP_MODES)}")
    dims = ("eigen",) if k > 1 else ()

    def init(params):
        flat = ravel_pytree(params)[0]
        return jnp.zeros((k, flat.shape[0]), flat.dtype)

    def measure(snap: Snapshot, vectors):
        precond = _preconditioner(snap, preconditioned)
        # Warm start from the previous top-k eigenvectors alone: tracking extra Ritz
        # vectors was measured to cost accuracy (it spends products on the block and its
        # poorly converged members), see tests/test_curvature.py.
        eig = curvature.top_eigenvalues(
            _loss_on(snap, examples), snap.params, _key(snap, name), k=k,
            iters=iters if snap.first else warm_iters, method=method, precond=precond,
            init=None if snap.first else vectors, mode=mode, tol=tol)
        ok = jnp.all(jnp.isfinite(eig.vectors))  # a failed solve must not poison the next one
        vectors = jnp.where(ok, eig.vectors, vectors)
        pick = (lambda a: a) if k > 1 else (lambda a: a[0])
        return {name: pick(eig.values), residual_name: pick(eig.residuals),
                products_name: eig.products.astype(eig.values.dtype)}, vectors

    products_name = name.replace("sharpness", "eigen_products")
    needs = frozenset({"preconditioner"}) if preconditioned else frozenset()
    return Probe(name, measure, {name: dims, residual_name: dims, products_name: ()}, init, needs,
                 {"eigen": list(range(k))} if k > 1 else {})


def sharpness(k: int = 1, iters: int = 20, warm_iters: int = 10, method: str = "lanczos",
              examples: int | None = None, mode: str = "forward_over_reverse",
              tol: float | None = None) -> Probe:
    """Top-k eigenvalues of the training-loss Hessian (`sharpness`), their residuals
    ||Hv - lambda v|| / |lambda| (`eigen_residual`) and the Hessian-vector products the
    solve spent (`eigen_products`). The first measurement runs at most `iters` products
    from a random start; later ones at most `warm_iters`, starting from the
    eigenvectors of the previous measurement. With `tol`, Lanczos stops as soon as every
    residual is below it (2-4 products for most warm solves, the eigenvalue error about
    tol^2 |lambda| / gap), but a warm start that stops early can stay on an eigenvector
    that another eigenvalue has just overtaken: measured on the 1-100-1 tanh EoS sweep,
    39 of 1608 warm estimates at tol=1e-3 were 0.2-2.5% low with residuals < 1e-5, against
    1 (with residual 0.004) at a fixed 20 products. Use tol where cost matters more
    than crossings. `mode` picks the HVP
    formulation (`engine.curvature.hvp`); `examples` the first-n subset the Hessian is
    taken on."""
    return _eigen_probe("sharpness", "eigen_residual", k, iters, warm_iters, method, examples, False,
                        mode, tol)


def preconditioned_sharpness(k: int = 1, iters: int = 20, warm_iters: int = 10,
                             method: str = "lanczos", examples: int | None = None,
                             mode: str = "forward_over_reverse", tol: float | None = None) -> Probe:
    """lambda_max(P^-1 H) with P the optimizer's diagonal preconditioner read from its
    state (`engine.optim.preconditioner`); compare with
    `engine.optim.stability_threshold` (38/lr for Adam at b1 = 0.9). Also records
    `preconditioned_eigen_residual` and `preconditioned_eigen_products`."""
    return _eigen_probe("preconditioned_sharpness", "preconditioned_eigen_residual", k, iters,
                        warm_iters, method, examples, True, mode, tol)


def directional_curvature(examples: int | None = None, preconditioned: bool = False) -> Probe:
    """Curvature along the gradient g: g^T H g / g^T g; preconditioned: along the update
    direction d = P^-1 g, (d^T H d) / (d^T P d) (Bai et al. 2025). One HVP."""
    require(examples is None or (isinstance(examples, int) and examples >= 1), "probes.examples",
            f"got {examples!r}", "use a number of examples >= 1, or None for all")
    name = "preconditioned_directional_curvature" if preconditioned else "directional_curvature"

    def fn(snap):
        loss_fn = _loss_on(snap, examples)
        precond = _preconditioner(snap, preconditioned)
        return curvature.directional_curvature(loss_fn, snap.params, jax.grad(loss_fn)(snap.params), precond)

    return scalar(name, fn, needs={"preconditioner"} if preconditioned else ())


def trace(samples: int = 16, examples: int | None = None) -> Probe:
    """Hutchinson estimate of tr H (`trace`) and its standard error (`trace_error`)."""
    require(isinstance(samples, int) and samples >= 2, "probes.samples", f"got {samples!r}",
            "use samples >= 2")

    def measure(snap, state):
        est, err = curvature.hutchinson_trace(_loss_on(snap, examples), snap.params,
                                              _key(snap, "trace"), samples)
        return {"trace": est, "trace_error": err}, state

    return Probe("trace", measure, {"trace": (), "trace_error": ()})


def step_size(fraction: float = 0.5, iters: int = 20, warm_iters: int = 3, lr_max: float = 1e3) -> Probe:
    """The learning rate a run can afford now: lr = min(lr_max, fraction * 2 / ||H||_2),
    ||H||_2 = max |lambda(H)| by power iteration (`engine.curvature.spectral_norm`),
    warm-started from the previous measurement (`iters` products at step 0, then
    `warm_iters`). Records `lr` (used for the next `every` steps when given to
    `engine.simulate.simulation(step_size=...)`) and `hessian_norm`.

    GD on a quadratic is stable iff lr * lambda_max < 2, so fraction < 1 leaves a margin
    for the growth of the curvature between measurements; |lambda_min| counts too,
    because a small initialization sits near a saddle whose negative curvature sets the
    escape rate (1 + lr |lambda_min| per step). This replaces the learning-rate halving
    retries of hand-written phase-diagram scripts (Luo et al. 2021)."""
    require(isinstance(fraction, (int, float)) and 0 < fraction <= 1, "probes.fraction",
            f"got {fraction!r}", "use a number in (0, 1]: the fraction of the stability limit 2/||H||")
    for field, v in (("iters", iters), ("warm_iters", warm_iters)):
        require(isinstance(v, int) and v >= 1, f"probes.{field}", f"got {v!r}", "use an integer >= 1")
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

    return Probe("step_size", measure, {"lr": (), "hessian_norm": ()}, init)


def unit_weights(layer) -> jax.Array:
    """Rows (w_k, b_k): the input weights of each output unit k of one layer, bias last.
    MLP layers {"w": [fan_in, m], "b": [m]}; flax Dense/Conv {"kernel": [..., m], "bias": [m]}
    (a conv kernel is flattened over its window and input channels). [m, fan_in (+1)]."""
    w = layer["w"] if "w" in layer else layer["kernel"]
    rows = w.reshape(-1, w.shape[-1]).T
    b = layer.get("b", layer.get("bias"))
    return rows if b is None else jnp.concatenate([rows, b[:, None]], axis=1)


def neuron_weights(layer: str = "0", name: str = "neuron_weights") -> Probe:
    """Each unit's input weights (w_k, b_k) in layer `layer` (a name from
    `engine.models.layers`, "0" = the first): variable `name` with dims ("neuron",
    "fan_in"), or (f"{name}_neuron", f"{name}_fan_in") under another name, so several
    layers can be recorded at once. Their cosine similarities show condensation onto a
    few orientations (`engine.analysis`)."""
    require(isinstance(layer, str), "probes.layer", f"got {layer!r}", 'use a layer name such as "0"')
    require(isinstance(name, str) and name.isidentifier(), "probes.name", f"got {name!r}",
            "use a Python identifier such as 'kernels_1'")
    dims = ("neuron", "fan_in") if name == "neuron_weights" else (f"{name}_neuron", f"{name}_fan_in")

    def fn(snap):
        named = dict(layers(snap.params))
        require(layer in named, "probes.layer", f"no layer {layer!r}", f"use one of {', '.join(named)}")
        return unit_weights(named[layer])

    return scalar(name, fn, dims=dims)


def loss_change(snap: Snapshot) -> jax.Array:
    """The change of the training loss over the step the run is about to take: the
    optimizer's update u from the current state, L(theta + u) - L(theta). Full batch."""
    tx = snap.optimizer.build(snap.hparams)
    updates, _ = tx.update(jax.grad(snap.loss_fn)(snap.params), snap.opt_state, snap.params)
    return snap.loss_fn(optax.apply_updates(snap.params, updates)) - snap.loss_fn(snap.params)


# ----------------------------------------------------------------------------- registry
BUILTIN = {
    "loss": lambda: scalar("loss", lambda s: s.loss_fn(s.params)),
    "test_loss": lambda: scalar("test_loss", lambda s: s.loss(s.predict(s.params, s.data.x_test), s.data.y_test),
                                needs={"test"}),
    "accuracy": lambda: scalar("accuracy", lambda s: losses.accuracy(s.predict(s.params, s.data.x), s.data.y),
                               needs={"classification"}),
    "test_accuracy": lambda: scalar(
        "test_accuracy", lambda s: losses.accuracy(s.predict(s.params, s.data.x_test), s.data.y_test),
        needs={"classification", "test"}),
    "param_norm": lambda: scalar("param_norm", lambda s: norm(s.params)),
    "loss_change": lambda: scalar("loss_change", loss_change),
    "prediction": lambda: scalar("prediction", lambda s: s.predict(s.params, s.data.x), dims=("example", "output")),
    "grad_norm": lambda: scalar("grad_norm", lambda s: norm(jax.grad(s.loss_fn)(s.params))),
    "relative_change": lambda: scalar("relative_change", lambda s: relative_change(s.params, s.params0)),
    "relative_change_layer": lambda: scalar(
        "relative_change_layer", lambda s: jnp.stack([relative_change(p, p0) for (_, p), (_, p0)
                                                      in zip(layers(s.params), layers(s.params0))]),
        dims=("layer",)),
    "sharpness": sharpness,
    "preconditioned_sharpness": preconditioned_sharpness,
    "directional_curvature": directional_curvature,
    "preconditioned_directional_curvature": lambda: directional_curvature(preconditioned=True),
    "trace": trace,
    "step_size": step_size,
    "neuron_weights": neuron_weights,
}


def probe(name: str) -> Probe:
    """The built-in probe called `name`, with default settings."""
    if not isinstance(name, str) or name not in BUILTIN:
        raise ConfigError("probes", f"unknown probe {name!r}",
                          f"use engine.probes.Probe or one of {', '.join(BUILTIN)}")
    return BUILTIN[name]()


def resolve(probes) -> tuple[Probe, ...]:
    """Probe objects from names or `Probe`s; a ConfigError for an unknown name or a
    variable recorded twice."""
    require(isinstance(probes, (list, tuple)) and len(probes) >= 1, "probes", f"got {probes!r}",
            "give a list of probe names, e.g. ('loss', 'sharpness')")
    out = tuple(p if isinstance(p, Probe) else probe(p) for p in probes)
    names = [v for p in out for v in p.outputs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError("probes", f"{dup[0]!r} is recorded twice", "list each probe once")
    return out
