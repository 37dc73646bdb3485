"""The probe contract: a `Snapshot` of the run at a record, the `Probe` pair of pure
functions (init, measure), the probes built from one function (`scalar`,
`from_start`), and the wrappers that change how a probe is measured (`with_precision`,
`with_dropout_mask`, and the cadence `every` sets, applied by `_measured`). See the
package docstring (`engine.probes`)."""
from __future__ import annotations

import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from engine import losses, optim
from engine.errors import require


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



def _check_examples(examples) -> None:
    require(examples is None or (isinstance(examples, int) and not isinstance(examples, bool) and examples >= 1),
            "probes.examples", f"got {examples!r}", "use a number of examples >= 1, or None for all")


def _key(snap: Snapshot, name: str):
    return jax.random.fold_in(snap.key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


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
