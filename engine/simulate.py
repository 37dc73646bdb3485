"""One training run as a pure function: `run(key, hparams) -> trajectory`.

`simulation(model, data, loss, optimizer, ...)` closes over the static physics of a run
(shapes, number of steps, what to record) the way `jax_md.simulate.nve` closes over an
energy, and returns a `Simulation` whose pieces are pure and jit-able:

    state, rec0 = sim.init(key, hparams, data)     # theta_0, optimizer state, probes at t=0
    state, recs = sim.advance(state, data, k, r)    # k record intervals of `every` steps
                                                    # from record r (0 after init)
    traj        = sim.run(key, hparams)             # both, for the whole run

`hparams` is a dict of scalars (traced in a sweep, where each value is `[runs]`); names
not given take the defaults of the initializer and optimizer (`sim.defaults`). They
are read once, by `init`: the initializer draws theta_0 with them and the optimizer
keeps its own in its state (`engine.optim`), so `advance` needs only the state. Records
are taken at steps 0, every, 2 every, ..., steps (`sim.record_steps`).

One step is three named pieces, composed in `train_step`: the examples it trains on
(`examples`: all, or a minibatch), the optimizer's `update`, and `freeze`, which keeps
a run still once it diverged or converged. At each record step `observe` hands the
probe chain a `Snapshot`; a probe that sets a hyperparameter (the step size) writes it
into the optimizer state for the next interval.

The forward pass can be stochastic and rescaled, each knob a traced hyperparameter:
`dropout=p` trains with inverted dropout of rate p (hyperparameter "dropout"; its mask
drawn from the run's key folded with the step), and `output_scale=alpha` trains the
centred model f_alpha(x; theta) = alpha (f(x; theta) - f(x; theta_0)) of Chizat,
Oyallon & Bach 2019 (hyperparameter "output_scale"; with `scale_loss` the objective is
L(f_alpha) / alpha^2, as theirs, so that alpha -> infinity is the lazy, linearized
limit at an alpha-independent time scale). Probes see the deterministic network (no
dropout) and f_alpha; `probes.with_dropout_mask` gives a curvature probe one fixed mask
per measurement instead.

The recorded `loss` is the data loss L(f) of the training set. The objective the
optimizer descends, whose gradient and Hessian the curvature probes measure, adds what
the optimizer asks for (coupled `l2/2 ||theta||^2`) and, with `scale_loss`, the
1/alpha^2; `diverge_above` and `converge_below` compare the objective.

Parameter snapshots: with `snapshots=[steps]` (record steps, e.g. log-spaced) a run
keeps theta at those steps, flattened, in its state (`RunState.snapshots`, [S, P]) and
returns them as `params_snapshot` beside its flags; `sim.unravel(row)` gives the pytree
back, for a loss-landscape slice or a dense Hessian after the fact. `engine.sweep.save`
writes them to their own file beside the results.

A run whose loss turns non-finite or exceeds `diverge_above` is frozen at that step and
flagged (`diverged`, `diverged_step`); its later records are NaN. With `converge_below`,
a run whose loss falls below it is frozen too (`converged`, `converged_step`): "train
until loss < tol". Frozen runs cost the same compute but never change, so a vmapped
batch of runs needs no Python control flow on values.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.flatten_util import ravel_pytree

from engine.data import Dataset, check_dataset, split_count
from engine.errors import FINITE, ConfigError, Range, require
from engine.init import Initializer, scaled
from engine.losses import loss_function, weighted
from engine.models import Model, layers
from engine.optim import Optimizer, gd, hyperparams, with_hyperparams
from engine.probes import Probe, Snapshot, chain, chain_of, scalar

FLAGS = ("diverged", "diverged_step", "converged", "converged_step")


class RunState(NamedTuple):
    """One run between steps; under a sweep every leaf has a leading `[runs]` axis.

    params: pytree, theta_t; opt_state: the optimizer's state, its hyperparameters
    included; probe_state: {probe name: its state}; forward: what the forward pass reads
    besides theta ({"dropout": rate, "output_scale": alpha, "params0": theta_0}, the
    keys in use only); snapshots: [S, P] theta (flattened) at the snapshot steps so far,
    zeros before (None without snapshots); step: int32 scalar, the next step to
    take; key: the run's PRNG key (minibatches, probe keys); diverged, converged: bool
    scalars; diverged_step, converged_step: int32 scalars, -1 if never."""
    params: Any
    opt_state: Any
    probe_state: dict
    forward: dict
    snapshots: jax.Array | None
    step: jax.Array
    key: jax.Array
    diverged: jax.Array
    diverged_step: jax.Array
    converged: jax.Array
    converged_step: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Simulation:
    """The pure pieces of one training run (see the module docstring).

    init(key, hparams, data) -> (RunState, {variable: value}) at step 0;
    advance(state, data, intervals, start=0) -> (RunState, {variable: [intervals, ...]}),
    `start` the index of the record `state` is at (an int32 scalar, not batched over
    runs: probes with their own cadence, `probes.every`, are measured when the record
    index is a multiple of it);
    hparams: {name: scalar}, `[runs]` under a sweep. data: the `Dataset` (passed to
    init and advance as an argument, not baked into the program); record_steps: [n]
    int; defaults / ranges: {hyperparameter: default / `errors.Range`}; probe: the
    chain of probes; probe_coords: {dim: coordinate values}; config: a JSON-able
    description; snapshot_steps: the steps whose theta a run keeps (`snapshots`), or
    None; unravel: flat [P] -> params pytree; loss_at(params) -> scalar: the data loss
    of the training set at any parameters (the deterministic network; for slices of the
    landscape, `engine.landscape`), refused under an output scale or a per-run split,
    whose loss needs the run's state; compiled: programs compiled for this simulation, keyed by how they
    were batched and the shapes they take (kept by `engine.sweep`, so an identical
    second sweep compiles nothing)."""
    init: Callable
    advance: Callable
    data: Dataset
    steps: int
    every: int
    record_steps: np.ndarray
    defaults: dict
    ranges: dict
    probe: Probe
    probe_coords: dict
    config: dict
    snapshot_steps: np.ndarray | None = None
    unravel: Callable | None = None
    loss_at: Callable | None = None
    compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def intervals(self) -> int:
        return len(self.record_steps) - 1

    def run(self, key, hparams=None):
        """The whole run: a dict of records `[len(record_steps), ...]` and flags."""
        state, rec0 = self.init(key, hparams or {}, self.data)
        state, recs = self.advance(state, self.data, self.intervals, 0)
        return trajectory(state, rec0, recs)

    def check_hparams(self, hparams: dict) -> None:
        """ConfigError for an unknown name or an out-of-range value (concrete values)."""
        for name, value in hparams.items():
            require(name in self.defaults, name, "not a hyperparameter of this simulation",
                    f"use one of {', '.join(sorted(self.defaults))}")
            allowed = self.ranges.get(name, FINITE)
            require(value in allowed, name, f"got {value!r}", f"use {allowed}")


def final_values(state: RunState) -> dict:
    """What a run reports once, at its end: its flags, and `params_snapshot` [S, P] when
    it keeps snapshots."""
    out = {f: getattr(state, f) for f in FLAGS}
    if state.snapshots is not None:
        out["params_snapshot"] = state.snapshots
    return out


def trajectory(state: RunState, rec0: dict, recs: dict) -> dict:
    """Join the t=0 records with later ones `[k, ...]` and attach the run's final values."""
    out = {k: jnp.concatenate([rec0[k][None], recs[k]], axis=0) for k in rec0}
    out.update(final_values(state))
    return out


def keep_snapshot(state: RunState, slots, record) -> RunState:
    """theta into row slots[record] of the state's snapshots (slots: [records] int, -1 for
    records without one; `record` is the same for every run, so this is a real branch)."""
    if state.snapshots is None:
        return state
    slot = jnp.asarray(slots)[record]
    put = lambda snaps: jax.lax.dynamic_update_slice(snaps, ravel_pytree(state.params)[0][None],
                                                        (slot, jnp.zeros_like(slot)))  # one index dtype, also under x64
    return state._replace(snapshots=jax.lax.cond(slot >= 0, put, lambda snaps: snaps, state.snapshots))


# ----------------------------------------------------------------------------- one step
def minibatch(data: Dataset, key, step, batch_size: int):
    """Examples of step `step`: epochs are random permutations drawn from `key`."""
    per_epoch = data.n // batch_size
    epoch, i = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), data.n)
    idx = jax.lax.dynamic_slice(perm, (i * batch_size,), (batch_size,))
    return data.x[idx], data.y[idx]


def stream(key, name: str):
    """The run's key for one named source of randomness (minibatches, dropout masks)."""
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def examples(state: RunState, data: Dataset, batch_size: int | None):
    """(x, y) the next step trains on: the full batch, or the minibatch of `state.step`
    drawn from the run's key."""
    if batch_size is None or batch_size == data.n:
        return data.x, data.y
    return minibatch(data, jax.random.fold_in(state.key, 0), state.step, batch_size)


def update(objective: Callable, tx: optax.GradientTransformation, params, opt_state, x, y):
    """One optimizer step on the examples (x, y): (loss before it, params, opt_state)."""
    loss_value, grads = jax.value_and_grad(objective)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return loss_value, optax.apply_updates(params, updates), opt_state


def freeze(state: RunState, loss_value, params, opt_state, steps: int, diverge_above=None,
           converge_below=None) -> RunState:
    """The run after a step that started at loss `loss_value` and proposes (params,
    opt_state): taken while the run is live; refused, and the run flagged, once the loss
    is non-finite or above `diverge_above` (diverged) or below `converge_below`
    (converged), or once `steps` are done."""
    t = state.step
    running = ~state.diverged & ~state.converged & (t < steps)
    bad = ~jnp.isfinite(loss_value)
    if diverge_above is not None:
        bad = bad | (loss_value > diverge_above)
    good = jnp.zeros((), bool) if converge_below is None else loss_value < converge_below
    diverging, converging = running & bad, running & ~bad & good
    move = running & ~bad & ~good
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(move, a, b), new, old)
    return state._replace(
        params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
        step=jnp.minimum(t + 1, steps),
        diverged=state.diverged | diverging, diverged_step=jnp.where(diverging, t, state.diverged_step),
        converged=state.converged | converging, converged_step=jnp.where(converging, t, state.converged_step))


def predictor(model: Model, forward: dict, key=None) -> Callable:
    """f(params, x [m, ...]) -> [m, d_out]: the model with the run's `forward` settings:
    dropout of rate forward["dropout"] with masks drawn from `key` (None: no dropout, the
    deterministic network), then, with forward["output_scale"] = alpha, the centred
    alpha (f(x; theta) - f(x; theta_0)) (one more forward pass, at theta_0)."""
    def predict(params, x):
        if key is not None and "dropout" in forward:
            out = model.train_apply(params, x, key, forward["dropout"])
        else:
            out = model.apply(params, x)
        if "output_scale" in forward:
            out = forward["output_scale"] * (out - model.apply(forward["params0"], x))
        return out
    return predict


def train_weights(data: Dataset, train_fraction) -> jax.Array:
    """[n] 1.0 for the examples a run trains on at `train_fraction` (rank below
    floor(f n), `engine.data.split_count`), 0.0 for its test examples."""
    return (data.rank < split_count(train_fraction, data.n)).astype(jnp.result_type(float))


def split_loss(loss_fn: Callable, forward: dict, n: int) -> Callable:
    """loss_fn, or under a per-run split (forward["train_weights"]) its mean over the
    run's training examples; such a loss takes all n examples, no subset."""
    if "train_weights" not in forward:
        return loss_fn
    mean = weighted(loss_fn, forward["train_weights"])

    def loss(y_pred, y):
        require(y.shape[0] == n, "probes", f"a probe measures the loss on {y.shape[0]} of the {n} examples, "
                "and the training set is drawn per run (train_fraction)", "drop the probe's `examples` option "
                "or minibatches, or split the data statically (x_test)")
        return mean(y_pred, y)
    return loss


def objective_of(model: Model, loss_fn: Callable, forward: dict, opt_state, scale_loss: bool = True,
                 key=None, n: int | None = None) -> Callable:
    """objective(params, x, y) -> scalar, what the run minimizes: the loss of the
    predictions (`predictor`; under a per-run split, `split_loss`, over the run's
    training examples of the n), divided by alpha^2 under an output scale with
    `scale_loss`, plus l2/2 ||theta||^2 when the optimizer holds a coupled L2
    coefficient `l2` (`engine.optim`)."""
    predict = predictor(model, forward, key)
    divide = scale_loss and "output_scale" in forward
    loss_fn = split_loss(loss_fn, forward, n)

    def objective(params, x, y):
        value = loss_fn(predict(params, x), y)
        return value / forward["output_scale"] ** 2 if divide else value

    h = hyperparams(opt_state)
    if "l2" not in h:
        return objective
    return lambda params, x, y: objective(params, x, y) + 0.5 * h["l2"] * sum(
        jnp.sum(p * p) for p in jax.tree.leaves(params))


def train_step(state: RunState, data: Dataset, model: Model, loss_fn: Callable, tx, steps: int,
               batch_size=None, diverge_above=None, converge_below=None, scale_loss=True) -> RunState:
    """examples -> update -> freeze; a dropout mask from the run's key and the step."""
    x, y = examples(state, data, batch_size)
    key = jax.random.fold_in(stream(state.key, "dropout"), state.step) if "dropout" in state.forward else None
    objective = objective_of(model, loss_fn, state.forward, state.opt_state, scale_loss, key, data.n)
    loss_value, params, opt_state = update(objective, tx, state.params, state.opt_state, x, y)
    return freeze(state, loss_value, params, opt_state, steps, diverge_above, converge_below)


# ----------------------------------------------------------------------------- records
def observe(state: RunState, data: Dataset, probe: Probe, model: Model, loss_fn, tx, steps: int, every: int,
            record, first: bool, batch_size: int | None = None, scale_loss: bool = True):
    """Measure the probe chain on the run at record `record` (an unbatched int32 scalar):
    (state with the probes' new states and the hyperparameters they set, records).
    After divergence a run's records are NaN: its frozen values are not a trajectory."""
    objective = objective_of(model, loss_fn, state.forward, state.opt_state, scale_loss, n=data.n)
    masked = None
    if "dropout" in state.forward:
        masked = lambda p, x, y, key: objective_of(model, loss_fn, state.forward, state.opt_state, scale_loss,
                                                   key, data.n)(p, x, y)
    w = state.forward.get("train_weights")
    snap = Snapshot(state.params, lambda p: objective(p, data.x, data.y), objective,
                    predictor(model, state.forward), data, loss_fn, state.opt_state, tx.update,
                    jax.random.fold_in(state.key, state.step), first, batch_size, record, every, masked,
                    None if w is None else (w, 1 - w))
    values, probe_state = probe.measure(snap, state.probe_state)
    opt_state = with_hyperparams(state.opt_state, **{h: values[h] for h in probe.sets})
    dead = state.diverged & (state.diverged_step < jnp.minimum(state.step, steps))
    values = {k: jnp.where(dead, jnp.nan, v) for k, v in values.items()}
    return state._replace(opt_state=opt_state, probe_state=probe_state), values


def run_hyperparameters(hparams: dict, defaults: dict, derive: Callable | None = None) -> dict:
    """A run's hyperparameters: the defaults (as floats) overridden by `hparams`, plus
    those `derive` computes from them."""
    hp = {**{k: jnp.asarray(v, jnp.result_type(float)) for k, v in defaults.items()}, **hparams}
    return {**hp, **derive(hp)} if derive is not None else hp


# ----------------------------------------------------------------------------- the run
def simulation(model: Model, data: Dataset, loss="mse", optimizer: Optimizer | None = None,
               init: Initializer | None = None, steps: int = 1000, every: int = 100,
               probes=("loss",), batch_size: int | None = None,
               diverge_above: float | None = None, converge_below: float | None = None,
               derive: Callable[[dict], dict] | None = None, dropout: float | None = None,
               output_scale: float | None = None, scale_loss: bool = True, snapshots=None,
               train_fraction: float | None = None) -> Simulation:
    """Build the pure pieces of one training run (see the module docstring).

    model: `engine.models.Model`; data: `engine.data.Dataset`; loss: a name of
    `engine.losses.LOSSES` ("mse", "cross_entropy", "stablemax_cross_entropy",
    "cross_entropy_float64", ...) or `f(y_pred, y) -> scalar`; optimizer: `engine.optim.Optimizer`
    (default GD); init: `engine.init.Initializer` (default `scaled(model)`); probes:
    names or `engine.probes.Probe`s, measured as one `probes.chain` (a
    `probes.step_size(...)` among them sets each run's lr for the next `every` steps);
    batch_size: minibatch size (None or the number of examples: full batch); derive:
    `hparams -> dict` of extra or replaced hyperparameters computed inside the run from
    the swept ones (e.g. a learning rate set from width and gamma); dropout: the default
    dropout rate in [0, 1) (None: no dropout in the program); output_scale: the default
    alpha > 0 of the centred model (None: the plain model); scale_loss: divide the loss
    by alpha^2 (see the module docstring); snapshots: record steps at which each run
    keeps theta (`params_snapshot`), or None; train_fraction: the default fraction f
    in (0, 1) of a ranked data set's examples each run trains on (hyperparameter
    "train_fraction"; `engine.data.ranked`, `modular_ranked`): those of rank below
    floor(f n); the rest are its test set (`test_loss`, `test_accuracy`). Each step
    then takes the loss over all n examples, the test ones weighted 0: 1/f the
    arithmetic of the static split (`Dataset(x, y, x_test, y_test)`), the price of one
    program for every fraction.
    """
    optimizer, init, loss_fn, probe, params_shape = _check_arguments(
        model, data, loss, optimizer, init, steps, every, probes, batch_size, diverge_above, converge_below,
        dropout, output_scale, scale_loss, train_fraction)
    record_steps = np.unique(np.minimum(np.arange(0, steps + every, every), steps))
    snapshot_steps = _check_snapshots(snapshots, record_steps)
    slots = np.full(len(record_steps), -1, np.int32)
    if snapshot_steps is not None:
        slots[np.searchsorted(record_steps, snapshot_steps)] = np.arange(len(snapshot_steps))

    def unravel(flat):
        return ravel_pytree(jax.tree.map(lambda l: jnp.zeros(l.shape, flat.dtype), params_shape))[1](jnp.asarray(flat))
    knobs = {k: v for k, v in (("dropout", dropout), ("output_scale", output_scale),
                               ("train_fraction", train_fraction)) if v is not None}
    defaults = {**init.defaults, **optimizer.defaults, **knobs}

    def measure(state, data, record, first):
        state = keep_snapshot(state, slots, record)
        return observe(state, data, probe, model, loss_fn, optimizer.tx, steps, every, record, first, batch_size,
                       scale_loss)

    def step(state, data):
        return train_step(state, data, model, loss_fn, optimizer.tx, steps, batch_size, diverge_above,
                          converge_below, scale_loss)

    def start(key, hparams, data):
        hp = run_hyperparameters(hparams, defaults, derive)
        k_init, k_run = jax.random.split(key)
        params = init.sample(k_init, hp)
        forward = {k: hp[k] for k in knobs}
        if train_fraction is not None:
            forward["train_weights"] = train_weights(data, hp["train_fraction"])
        if output_scale is not None:
            forward["params0"] = params
        flat = ravel_pytree(params)[0]
        snaps = None if snapshot_steps is None else jnp.zeros((len(snapshot_steps), flat.shape[0]), flat.dtype)
        state = RunState(params, optimizer.init(params, hp), probe.init(params), forward, snaps, jnp.int32(0), k_run,
                         jnp.bool_(False), jnp.int32(-1), jnp.bool_(False), jnp.int32(-1))
        return measure(state, data, jnp.int32(0), first=True)

    def advance(state, data, intervals: int, start=0):
        def interval(state, record):
            state = jax.lax.fori_loop(0, every, lambda _, s: step(s, data), state)
            return measure(state, data, record, first=False)
        records = jnp.asarray(start, jnp.int32) + 1 + jnp.arange(intervals, dtype=jnp.int32)
        return jax.lax.scan(interval, state, records)

    coords = {"layer": [name for name, _ in layers(params_shape)], **probe.coords}
    ranges = {**{k: FINITE for k in init.defaults}, **optimizer.ranges, **{k: KNOB_RANGES[k] for k in knobs},
              **{k: Range(0, steps) for k in (optimizer.schedule.steps if optimizer.schedule else ())}}
    config = {
        "model": model.name, "layer_shapes": model.layer_shapes or (),
        "n_params": int(sum(np.prod(l.shape) for l in jax.tree.leaves(params_shape))),
        "data_shape": list(data.x.shape), "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
        "optimizer": optimizer.name, **({"orthogonal": True} if optimizer.orthogonal else {}),
        "schedule": optimizer.schedule and optimizer.schedule.name,
        "init": init.name, "steps": steps, "every": every,
        "probes": [p.name for p in probe.members], "batch_size": batch_size,
        "diverge_above": diverge_above, "converge_below": converge_below, "defaults": dict(defaults),
        "dropout": dropout, "output_scale": output_scale, "scale_loss": scale_loss, "train_fraction": train_fraction,
        "snapshots": None if snapshot_steps is None else snapshot_steps.tolist(),
    }
    def loss_at(params):
        require(output_scale is None and train_fraction is None, "loss_at", "the loss under an output scale or "
                "a per-run split depends on the run (theta_0, its split)", "slice a simulation without them")
        return loss_fn(model.apply(params, data.x), data.y)

    return Simulation(start, advance, data, steps, every, record_steps, defaults, ranges, probe, coords, config,
                      snapshot_steps, unravel, loss_at)


def _check_snapshots(snapshots, record_steps: np.ndarray) -> np.ndarray | None:
    """The sorted snapshot steps, each a record step; ConfigError otherwise."""
    if snapshots is None:
        return None
    require(isinstance(snapshots, (list, tuple, np.ndarray)) and len(snapshots) >= 1, "snapshots",
            f"got {snapshots!r}", "give a list of record steps, e.g. [0, 100, 1000], or None")
    wrong = [t for t in snapshots if not (isinstance(t, (int, np.integer)) and t in record_steps)]
    require(not wrong, "snapshots", f"steps {wrong[:3]} are not record steps",
            f"use steps among 0, every, 2 every, ..., {int(record_steps[-1])}")
    return np.unique(np.asarray(snapshots, np.int64))


KNOB_RANGES = {"dropout": Range(0, 1, hi_open=True), "output_scale": Range(0, None, lo_open=True),
               "train_fraction": Range(0, 1, lo_open=True, hi_open=True)}


def _check_arguments(model, data, loss, optimizer, init, steps, every, probes, batch_size,
                     diverge_above, converge_below, dropout=None, output_scale=None, scale_loss=True,
                     train_fraction=None):
    """Every argument of `simulation` checked before anything is traced: (optimizer,
    initializer, loss function, probe chain, the shapes of params)."""
    require(isinstance(model, Model), "model", f"got {type(model).__name__}",
            "build one with engine.models.mlp(...) or engine.models.from_flax(...)")
    check_dataset(data)
    optimizer = gd() if optimizer is None else optimizer
    require(isinstance(optimizer, Optimizer), "optimizer", f"got {optimizer!r}",
            "use engine.optim.gd(lr=...), adam(...), ... or engine.optim.optimizer(name)")
    init = scaled(model) if init is None else init
    require(isinstance(init, Initializer), "init", f"got {init!r}",
            "use a scheme from engine.init, e.g. engine.init.width_power(model)")
    overlap = sorted(set(init.defaults) & set(optimizer.defaults))
    require(not overlap, "init", f"hyperparameter names {overlap} are used by both the initializer and the "
            "optimizer", "rename one")
    loss_fn = loss_function(loss) if isinstance(loss, str) else loss
    require(callable(loss_fn), "loss", f"got {loss!r}", "use 'mse', 'cross_entropy' or a function")
    for field, v in (("steps", steps), ("every", every)):
        require(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1, field,
                f"got {v!r}", "use an integer >= 1")
    require(every <= steps, "every", f"every={every} is larger than steps={steps}", "use every <= steps")
    require(batch_size is None or (isinstance(batch_size, int) and 1 <= batch_size <= data.n), "batch_size",
            f"got {batch_size!r} for {data.n} examples", f"use an integer in [1, {data.n}] or None for full batch")
    for field, v in (("diverge_above", diverge_above), ("converge_below", converge_below)):
        require(v is None or (isinstance(v, (int, float)) and v > 0), field, f"got {v!r}",
                "use a positive number or None")
    require(train_fraction is None or data.rank is not None, "train_fraction", "needs a ranked data set, whose "
            "examples it splits per run", "build the data with engine.data.ranked(x, y, seed) or modular_ranked(...)")
    require(train_fraction is not None or data.rank is None, "train_fraction", "the data is ranked (its split is "
            "drawn per run) and no fraction is set", "give simulation(train_fraction=f), f in (0, 1)")
    require(train_fraction is None or batch_size is None, "batch_size", "minibatches of a split drawn per run "
            "are not supported", "train on the full batch, or split the data statically (x_test)")
    for field, v in (("dropout", dropout), ("output_scale", output_scale), ("train_fraction", train_fraction)):
        require(v is None or v in KNOB_RANGES[field], field, f"got {v!r}", f"use {KNOB_RANGES[field]}, or None")
        require(v is None or field not in {*init.defaults, *optimizer.defaults}, field,
                "is also a hyperparameter of the initializer or optimizer", "rename that one")
    require(dropout is None or model.train_apply is not None, "dropout", f"model {model.name!r} has no dropout",
            "use engine.models.mlp, cnn or transformer, or a from_flax(..., dropout=True) module")
    require(isinstance(scale_loss, bool), "scale_loss", f"got {scale_loss!r}", "use True or False")
    probe = chain_of(probes)
    probe.check(data, optimizer, batch_size, dropout is not None)
    for m in probe.members:
        require(m.every is None or m.every % every == 0, "probes", f"probe {m.name!r} is measured every "
                f"{m.every} steps, not a whole multiple of every={every}",
                f"use a multiple of {every}, e.g. probes.every({every * max(1, round((m.every or every) / every))}, ...)")
    if optimizer.schedule is not None:
        require("lr" not in probe.sets, "probes", f"{', '.join(m.name for m in probe.members if 'lr' in m.sets)} "
                f"sets lr, but the optimizer follows the schedule {optimizer.schedule.name!r}",
                "drop the step-size probe or the schedule: a rate chosen from the curvature is not scheduled")
        for name in optimizer.schedule.steps:
            value = optimizer.defaults[name]
            require(value <= steps, name, f"{value:g} steps, longer than the run ({steps} steps)",
                    f"use {name} <= {steps}, or train for more steps")
        probe = chain(probe, scalar("scheduled_lr", lambda snap: optimizer.learning_rate(snap.opt_state)))
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    _check_model_fits(model, params_shape, data)
    return optimizer, init, loss_fn, probe, params_shape


def _check_model_fits(model: Model, params_shape, data: Dataset) -> None:
    """ConfigError unless the model takes the data's inputs and gives one output per
    target dimension."""
    features = data.x.shape[1:]
    if model.layer_shapes:
        d_in = model.layer_shapes[0][0]
        require(features == (d_in,), "data.x", f"has examples of shape {features} but the model takes "
                f"{d_in} input(s)", f"use widths starting with {int(np.prod(features))} (flatten images first), "
                f"or x of shape [n, {d_in}]")
    example = jax.ShapeDtypeStruct((1, *features), data.x.dtype)
    try:
        out = jax.eval_shape(model.apply, params_shape, example)
    except (TypeError, ValueError) as e:
        raise ConfigError("model", f"cannot be applied to examples of shape {features} "
                          f"({str(e).splitlines()[0][:120]})", "give x shaped as the model expects") from None
    if out.ndim == 3:  # logits per position (transformer readout "all"): one target token id per position
        require(out.shape[1] == data.y.shape[-1], "model",
                f"outputs logits at {out.shape[1]} positions but the targets hold {data.y.shape[-1]} token ids",
                "give y [n, seq_len] next-token ids (with next_token_cross_entropy), or readout='last'")
        return
    require(out.shape[-1] == data.y.shape[-1], "model",
            f"outputs {out.shape[-1]} values per example but the targets have {data.y.shape[-1]}",
            "make the last width equal the target dimension")
