"""One training run as a pure function: `run(key, hparams) -> trajectory`.

`simulation(model, data, loss, optimizer, ...)` closes over the static physics of a run
(shapes, number of steps, what to record) the way `jax_md.simulate.nve` closes over an
energy, and returns a `Simulation` whose pieces are pure and jit-able:

    state, rec0 = sim.init(key, hparams, data)          # theta_0, optimizer state, probes at t=0
    state, recs = sim.advance(state, hparams, data, k)   # k record intervals of `every` steps
    traj        = sim.run(key, hparams)                  # both, for the whole run

`hparams` is a dict of scalars (traced in a sweep); names not given take the defaults
of the initializer and optimizer (`sim.defaults`). Records are taken at steps
0, every, 2 every, ..., steps (`sim.record_steps`).

A run whose loss turns non-finite or exceeds `diverge_above` is frozen at that step and
flagged (`diverged`, `diverged_step`); its later records are NaN. With `converge_below`,
a run whose loss falls below it is frozen too (`converged`, `converged_step`): "train
until loss < tol". Frozen runs cost the same compute but never change, so a vmapped
batch of runs needs no Python control flow on values.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from engine import losses as losses_module
from engine import probes as probes_module
from engine.data import Dataset
from engine.errors import ConfigError, require
from engine.init import Initializer, scaled
from engine.models import Model, layers
from engine.optim import PRECONDITIONED, Optimizer, check_hyperparameter, gd

FLAGS = ("diverged", "diverged_step", "converged", "converged_step")


class RunState(NamedTuple):
    params: Any
    params0: Any
    opt_state: Any
    probe_state: tuple
    step: jax.Array          # int32, the next step to take
    key: jax.Array
    diverged: jax.Array      # bool
    diverged_step: jax.Array  # int32, -1 if never
    converged: jax.Array
    converged_step: jax.Array


def _where(cond, new, old):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _minibatch(data: Dataset, key, step, batch_size):
    """Examples of step `step`: epochs are random permutations drawn from `key`."""
    per_epoch = data.n // batch_size
    epoch, i = step // per_epoch, step % per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), data.n)
    idx = jax.lax.dynamic_slice(perm, (i * batch_size,), (batch_size,))
    return data.x[idx], data.y[idx]


@dataclasses.dataclass(frozen=True)
class Simulation:
    init: Callable
    advance: Callable
    data: Dataset
    steps: int
    every: int
    record_steps: np.ndarray
    defaults: dict
    probes: tuple
    probe_coords: dict       # dim name -> coordinate values (layer names, eigen index)
    config: dict
    optimizer: Optimizer

    @property
    def intervals(self) -> int:
        return len(self.record_steps) - 1

    def run(self, key, hparams=None):
        """The whole run: a dict of records `[len(record_steps), ...]` and flags."""
        state, rec0 = self.init(key, hparams or {}, self.data)
        state, recs = self.advance(state, hparams or {}, self.data, self.intervals)
        return trajectory(state, rec0, recs)

    def check_hparams(self, hparams: dict) -> None:
        """ConfigError for an unknown name or an out-of-range value (concrete values)."""
        for name, value in hparams.items():
            if name not in self.defaults:
                raise ConfigError(name, "not a hyperparameter of this simulation",
                                  f"use one of {', '.join(sorted(self.defaults))}")
            self._check_value(name, value)

    def _check_value(self, name, value):
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise ConfigError(name, f"got {value!r} of type {type(value).__name__}",
                              "use a number")
        if not math.isfinite(float(value)):
            raise ConfigError(name, f"got {value!r}", "use a finite number")
        check_hyperparameter(self.optimizer, name, float(value))


def trajectory(state: RunState, rec0: dict, recs: dict) -> dict:
    """Join the t=0 records with later ones `[k, ...]` and attach the run's flags."""
    out = {k: jnp.concatenate([rec0[k][None], recs[k]], axis=0) for k in rec0}
    out.update({f: getattr(state, f) for f in FLAGS})
    return out


def simulation(model: Model, data: Dataset, loss="mse", optimizer: Optimizer | None = None,
               init: Initializer | None = None, steps: int = 1000, every: int = 100,
               probes=("loss",), batch_size: int | None = None,
               diverge_above: float | None = None, converge_below: float | None = None,
               derive: Callable[[dict], dict] | None = None,
               step_size: probes_module.Probe | None = None) -> Simulation:
    """Build the pure pieces of one training run (see the module docstring).

    model: `engine.models.Model`; data: `engine.data.Dataset`; loss: "mse",
    "cross_entropy" or `f(y_pred, y) -> scalar`; optimizer: `engine.optim.Optimizer`
    (default GD); init: `engine.init.Initializer` (default `scaled(model)`);
    batch_size: minibatch size (None = full batch); derive: `hparams -> dict` of
    extra or replaced hyperparameters computed inside the run from the swept ones
    (e.g. a learning rate set from width and gamma); step_size: a probe that keeps the
    learning rate it chooses in its state under "lr" (`engine.probes.step_size()`): at
    every record step it sets the optimizer's `lr` for the next `every` steps, and its
    variables are recorded like any probe's.
    """
    require(isinstance(model, Model), "model", f"got {type(model).__name__}",
            "build one with engine.models.mlp(...) or engine.models.from_flax(...)")
    require(isinstance(data, Dataset), "data", f"got {type(data).__name__}",
            "build one with engine.data (e.g. engine.data.luo_points())")
    optimizer = gd() if optimizer is None else optimizer
    require(isinstance(optimizer, Optimizer), "optimizer", f"got {optimizer!r}",
            "use engine.optim.gd(lr=...), adam(...), ... or engine.optim.optimizer(name)")
    init = scaled(model) if init is None else init
    require(isinstance(init, Initializer), "init", f"got {init!r}",
            "use a scheme from engine.init, e.g. engine.init.width_power(model)")
    loss_fn_ = losses_module.loss_function(loss) if isinstance(loss, str) else loss
    require(callable(loss_fn_), "loss", f"got {loss!r}", "use 'mse', 'cross_entropy' or a function")
    for field, v in (("steps", steps), ("every", every)):
        require(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1, field,
                f"got {v!r}", "use an integer >= 1")
    require(every <= steps, "every", f"every={every} is larger than steps={steps}",
            "use every <= steps")
    if batch_size is not None:
        require(isinstance(batch_size, int) and 1 <= batch_size <= data.n, "batch_size",
                f"got {batch_size!r} for {data.n} examples",
                f"use an integer in [1, {data.n}] or None for full batch")
    for field, v in (("diverge_above", diverge_above), ("converge_below", converge_below)):
        require(v is None or (isinstance(v, (int, float)) and v > 0), field, f"got {v!r}",
                "use a positive number or None")
    probe_list = probes_module.resolve(probes)
    if step_size is not None:
        require(isinstance(step_size, probes_module.Probe) and step_size.init is not None, "step_size",
                f"got {step_size!r}", "use engine.probes.step_size(...) or None")
        require("lr" in optimizer.defaults, "step_size", f"optimizer '{optimizer.name}' has no 'lr'",
                "use an optimizer with a learning rate, or step_size=None")
        probe_list = probes_module.resolve(probe_list + (step_size,))
    classification = data.y.ndim == 2 and data.y.shape[1] > 1
    for p in probe_list:
        if "preconditioner" in p.needs and optimizer.name not in PRECONDITIONED:
            raise ConfigError("probes", f"probe {p.name!r} needs a diagonal preconditioner and "
                              f"optimizer '{optimizer.name}' has none",
                              f"use one of {', '.join(PRECONDITIONED)}, or the unpreconditioned probe")
        if "test" in p.needs and data.x_test is None:
            raise ConfigError("probes", f"probe {p.name!r} needs a test set and the data has none",
                              "give data with x_test/y_test or drop the probe")
        if "classification" in p.needs and not classification:
            raise ConfigError("probes", f"probe {p.name!r} needs one-hot class targets, "
                              f"the data has {data.y.shape[1]} output(s)",
                              "drop the probe or use classification data")
    params_shape = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    out_shape = jax.eval_shape(model.apply, params_shape,
                               jax.ShapeDtypeStruct((1, *data.x.shape[1:]), data.x.dtype))
    require(out_shape.shape[-1] == data.y.shape[-1], "model",
            f"outputs {out_shape.shape[-1]} values per example but the targets have {data.y.shape[-1]}",
            "make the last width equal the target dimension")

    for name, value in optimizer.defaults.items():
        check_hyperparameter(optimizer, name, value)
    defaults = {**init.defaults, **optimizer.defaults}
    overlap = set(init.defaults) & set(optimizer.defaults)
    require(not overlap, "init", f"hyperparameter names {sorted(overlap)} are used by both "
            "the initializer and the optimizer", "rename one")
    record_steps = np.minimum(np.arange(0, steps + every, every), steps)
    record_steps = np.unique(record_steps)
    coords = {"layer": [name for name, _ in layers(params_shape)]}
    for p in probe_list:
        coords.update(p.coords)

    def resolve(hp):
        hp = {**{k: jnp.asarray(v, jnp.result_type(float)) for k, v in defaults.items()}, **hp}
        return {**hp, **derive(hp)} if derive is not None else hp

    def current(hp, state: RunState):
        """The hyperparameters of the next interval: the step-size probe's lr, if any."""
        return hp if step_size is None else {**hp, "lr": state.probe_state[-1]["lr"]}

    def objective(params, x, y):
        return loss_fn_(model.apply(params, x), y)

    def measure(state: RunState, hp, data, first: bool):
        def snapshot(hp):
            return probes_module.Snapshot(
                state.params, state.params0, lambda p: objective(p, data.x, data.y), objective,
                model.apply, data, loss_fn_, state.opt_state, optimizer, hp,
                jax.random.fold_in(state.key, state.step), first)

        values, new_states, todo = {}, list(state.probe_state), range(len(probe_list))
        if step_size is not None:  # first: the other probes see the lr the next interval uses
            v, new_states[-1] = probe_list[-1].measure(snapshot(hp), new_states[-1])
            values.update(v)
            hp, todo = {**hp, "lr": new_states[-1]["lr"]}, todo[:-1]
        snap = snapshot(hp)
        for i in todo:
            v, new_states[i] = probe_list[i].measure(snap, new_states[i])
            values.update(v)
        # After divergence a run's records are NaN: the frozen values are not a trajectory.
        dead = state.diverged & (state.diverged_step < jnp.minimum(state.step, steps))
        values = {k: jnp.where(dead, jnp.nan, v) for k, v in values.items()}
        return values, tuple(new_states)

    def init_state(key, hparams, data):
        hp = resolve(hparams)
        k_init, k_run = jax.random.split(key)
        params = init.sample(k_init, hp)
        opt = optimizer.build(hp)
        state = RunState(params, params, opt.init(params),
                         tuple(p.init(params) if p.init else None for p in probe_list),
                         jnp.int32(0), k_run, jnp.bool_(False), jnp.int32(-1),
                         jnp.bool_(False), jnp.int32(-1))
        values, probe_state = measure(state, hp, data, first=True)
        return state._replace(probe_state=probe_state), values

    def train_step(state: RunState, hp, data, opt):
        t = state.step
        if batch_size is None:
            x, y = data.x, data.y
        else:
            x, y = _minibatch(data, jax.random.fold_in(state.key, 0), t, batch_size)
        loss_value, grads = jax.value_and_grad(objective)(state.params, x, y)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        running = ~state.diverged & ~state.converged & (t < steps)
        bad = ~jnp.isfinite(loss_value)
        if diverge_above is not None:
            bad = bad | (loss_value > diverge_above)
        good = jnp.zeros((), bool) if converge_below is None else loss_value < converge_below
        diverging, converging = running & bad, running & ~bad & good
        move = running & ~bad & ~good
        return state._replace(
            params=_where(move, params, state.params),
            opt_state=_where(move, opt_state, state.opt_state),
            step=jnp.minimum(t + 1, steps),
            diverged=state.diverged | diverging,
            diverged_step=jnp.where(diverging, t, state.diverged_step),
            converged=state.converged | converging,
            converged_step=jnp.where(converging, t, state.converged_step))

    def advance(state: RunState, hparams, data, intervals: int):
        hp = resolve(hparams)
        opt_fixed = optimizer.build(hp)

        def interval(state, _):
            hp_now = current(hp, state)
            opt = optimizer.build(hp_now) if step_size is not None else opt_fixed
            state = jax.lax.fori_loop(0, every, lambda _, s: train_step(s, hp_now, data, opt), state)
            values, probe_state = measure(state, hp, data, first=False)
            return state._replace(probe_state=probe_state), values

        return jax.lax.scan(interval, state, length=intervals)

    config = {
        "model": model.name, "layer_shapes": model.layer_shapes or (), "n_params": int(sum(np.prod(l.shape) for l in jax.tree.leaves(params_shape))),
        "data_shape": list(data.x.shape), "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
        "optimizer": optimizer.name, "init": init.name, "steps": steps, "every": every,
        "probes": [p.name for p in probe_list], "batch_size": batch_size,
        "diverge_above": diverge_above, "converge_below": converge_below, "defaults": dict(defaults),
        "step_size": None if step_size is None else step_size.name,
    }
    return Simulation(init_state, advance, data, steps, every, record_steps, defaults,
                      probe_list, coords, config, optimizer)
