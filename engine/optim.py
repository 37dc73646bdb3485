"""Optax optimizers whose hyperparameters live in their state, so a sweep can set them per run.

An `Optimizer(name, defaults, ranges, tx)` is built once: `tx` is the optax
transformation wrapped by `optax.inject_hyperparams`, so its state carries the
hyperparameters (`state.hyperparams`: {name: scalar}, `[runs]` under a sweep) and its
update reads them from there. `init(params, hparams)` starts a run with its own
(possibly traced) values; `with_hyperparams(state, lr=...)` changes them mid-run (the
step-size probe does, every record step); `preconditioner(state)` reads Adam's P from
the same state. Nothing rebuilds an optimizer from a dict.

    gd        theta <- theta - lr g                                   (optax.sgd)
    momentum  v <- g + momentum v;  theta <- theta - lr v             (heavy ball)
    nesterov  Nesterov momentum (optax.sgd(nesterov=True))
    adam      Kingma & Ba 2015 (b1, b2, eps, bias-corrected)
    adam_raw  Adam without bias correction: m <- b1 m + (1 - b1) g,
              v <- b2 v + (1 - b2) g^2, theta <- theta - lr m / (sqrt(v) + eps)
              (eps = 0 allowed; Bai et al. 2026 analyse it with eps = 0)
    adamw     adam + decoupled weight decay (Loshchilov & Hutter 2019)
    rmsprop   v <- decay v + (1 - decay) g^2; theta <- theta - lr g / (sqrt(v) + eps)
    adagrad   Duchi et al. 2011
    lion      Chen et al. 2023 (b1, b2, weight_decay)

Full batch by default; minibatch SGD is `gd` with `batch_size` set in
`engine.simulate.simulation` (a per-run key draws the batches).

A learning-rate schedule (`engine.schedules`) is given to the constructor,
`adam(lr=1e-3, schedule=schedules.wsd(...))`: the t-th update is multiplied by the
schedule's factor s(t) (optax's `scale_by_schedule`, counting updates), so it is taken
with lr_t = lr * s(t); the schedule's numbers are hyperparameters held in the state
beside `lr`, and `learning_rate(state)` gives the rate of the next update.

Weight decay, for every optimizer and traced like any hyperparameter:
    weight_decay=wd   decoupled (AdamW's rule, Loshchilov & Hutter 2019): the update gains
                      -lr_t wd theta; adamw and lion have it built in
    l2=c              coupled: the objective becomes L(theta) + c/2 ||theta||^2
                      (`engine.simulate`), so the gradient, the recorded `loss` and
                      every curvature probe's Hessian (H + c I) include it; `test_loss`
                      stays the data loss

Gradient clipping, for every optimizer, the threshold traced like any hyperparameter:
    clip_norm=c       the gradient g is rescaled to g min(1, c / ||g||) (its global norm
                      over every parameter, optax.clip_by_global_norm) before the
                      optimizer sees it; decoupled weight decay is not clipped

The ⊥Grad transform (Prieto et al. 2025), for every optimizer: `orthogonal=True`, e.g.
`adamw(lr=1e-3, orthogonal=True)` is ⊥AdamW. Before the optimizer sees it, each
parameter tensor's gradient loses its component along that tensor and is rescaled to
its own norm (`orthogonal_grad`), so no step grows or shrinks a tensor along itself
(the "naive loss minimization" direction that scales the logits). Weight decay is
applied afterwards, unprojected (as the reference wraps torch's AdamW); a coupled `l2`
gradient, parallel to each tensor, is projected out entirely.
"""
from __future__ import annotations

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from engine.errors import POSITIVE, UNIT, ConfigError, Range, choose
from engine.schedules import Schedule

NONNEGATIVE = Range(0)


class Optimizer(NamedTuple):
    """name; defaults: {hyperparameter: value}, the schedule's included; ranges:
    {hyperparameter: `errors.Range`}; tx: `optax.inject_hyperparams(factory)(**defaults)`,
    built once; schedule: the `engine.schedules.Schedule` of the learning rate, or None;
    orthogonal: whether the gradient passes through ⊥Grad (`orthogonal_grad`) first."""
    name: str
    defaults: dict
    ranges: dict
    tx: optax.GradientTransformation
    schedule: Schedule | None = None
    orthogonal: bool = False

    def learning_rate(self, opt_state):
        """The rate of the next update: lr times the schedule's s(t), t the updates taken."""
        h = hyperparams(opt_state)
        if self.schedule is None:
            return h["lr"]
        return h["lr"] * self.schedule.factor(opt_state.count, **{k: h[k] for k in self.schedule.defaults})

    def init(self, params, hparams: dict | None = None):
        """The optimizer state of a run starting at `params`, holding the values in
        `hparams` (scalars, traced in a sweep) of the hyperparameters this optimizer
        reads; the others keep their defaults."""
        own = {k: v for k, v in (hparams or {}).items() if k in self.defaults}
        return with_hyperparams(self.tx.init(params), **own)

    def check(self, name: str, value) -> None:
        """ConfigError unless `value` lies in the range of hyperparameter `name`."""
        allowed = self.ranges.get(name)
        if allowed is not None and value not in allowed:
            raise ConfigError(name, f"{self.name} got {value!r}", f"use {allowed}")


def _keyword_signature(build, names):
    """`build` declaring `names` as its keyword arguments: inject_hyperparams finds a
    factory's hyperparameters in its signature."""
    build.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names])
    return build


def _decayed(factory):
    """`factory` with decoupled weight decay: the update gains -lr * weight_decay * theta
    (AdamW's rule, Loshchilov & Hutter 2019, for any optimizer; scheduled with lr)."""
    def build(**hp):
        weight_decay = hp.pop("weight_decay")
        return optax.chain(factory(**hp), optax.add_decayed_weights(-hp["lr"] * weight_decay))
    return _keyword_signature(build, [*inspect.signature(factory).parameters, "weight_decay"])


def _clipped(factory):
    """`factory` behind gradient clipping by global norm: chain(clip_by_global_norm(
    clip_norm), factory(...)), so the optimizer sees g min(1, clip_norm / ||g||)."""
    def build(**hp):
        clip_norm = hp.pop("clip_norm")
        return optax.chain(optax.clip_by_global_norm(clip_norm), factory(**hp))
    return _keyword_signature(build, [*inspect.signature(factory).parameters, "clip_norm"])


def _with_l2(factory):
    """`factory` holding `l2` among its hyperparameters without using it: coupled L2 is a
    term of the objective (`engine.simulate`), so its gradient and Hessian include it."""
    def build(**hp):
        hp.pop("l2")
        return factory(**hp)
    return _keyword_signature(build, [*inspect.signature(factory).parameters, "l2"])


def _scheduled(factory, schedule: Schedule):
    """`factory`, its update multiplied by the schedule's factor s(t) at update t."""
    def build(**hp):
        own = {k: hp.pop(k) for k in schedule.defaults}
        return optax.chain(factory(**hp), optax.scale_by_schedule(lambda t: schedule.factor(t, **own)))
    return _keyword_signature(build, [*inspect.signature(factory).parameters, *schedule.defaults])


def orthogonal_grad(eps: float = 1e-30) -> optax.GradientTransformation:
    """⊥Grad (Prieto et al. 2025, "Grokking at the Edge of Numerical Stability"): for each
    parameter tensor w (a leaf of params, flattened) and its gradient g,
        g_perp = g - (w . g / (w . w + eps)) w,     g <- g_perp ||g|| / (||g_perp|| + eps),
    the part of g orthogonal to w at the norm of g, per tensor as the reference
    `OrthoGrad` does (not over the whole parameter vector); eps = 1e-30 as there. A
    stateless optax transformation that needs `params` in `update`."""
    def update(updates, state, params=None):
        if params is None:
            raise ValueError("orthogonal_grad needs params: call update(updates, state, params)")

        def project(g, w):
            gf, wf = g.ravel(), w.ravel().astype(g.dtype)
            perp = gf - jnp.dot(wf, gf) / (jnp.dot(wf, wf) + eps) * wf
            return (perp * (jnp.linalg.norm(gf) / (jnp.linalg.norm(perp) + eps))).reshape(g.shape)
        return jax.tree.map(project, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _orthogonal(factory):
    """`factory` behind ⊥Grad: chain(orthogonal_grad(), factory(...))."""
    def build(**hp):
        return optax.chain(orthogonal_grad(), factory(**hp))
    return _keyword_signature(build, list(inspect.signature(factory).parameters))


def _make(name, factory, defaults, ranges):
    """The constructor `name(schedule=None, orthogonal=False, **overrides) -> Optimizer`
    of the optax `factory`, whose keyword arguments are the hyperparameters.
    `weight_decay=` adds decoupled weight decay to an optimizer that has none of its
    own; `l2=` adds the coupled L2 coefficient the simulation puts into the objective;
    `orthogonal=True` puts ⊥Grad in front (`orthogonal_grad`)."""
    def constructor(schedule: Schedule | None = None, orthogonal: bool = False, **overrides):
        build, own_defaults, own_ranges = factory, dict(defaults), dict(ranges)
        if "clip_norm" in overrides:  # innermost: the gradient is clipped, decoupled weight decay is not
            build, own_defaults["clip_norm"], own_ranges["clip_norm"] = _clipped(build), 1.0, POSITIVE
        if "weight_decay" in overrides and "weight_decay" not in defaults:
            build, own_defaults["weight_decay"], own_ranges["weight_decay"] = _decayed(build), 0.0, NONNEGATIVE
        if "l2" in overrides:
            build, own_defaults["l2"], own_ranges["l2"] = _with_l2(build), 0.0, NONNEGATIVE
        unknown = sorted(set(overrides) - set(own_defaults))
        if unknown:
            raise ConfigError(f"optimizer.{unknown[0]}", f"'{name}' has no hyperparameter {unknown[0]!r}",
                              f"use one of {', '.join(dict.fromkeys([*own_defaults, 'weight_decay', 'l2', 'clip_norm']))}")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise ConfigError("schedule", f"got {schedule!r}",
                              "use one of engine.schedules (e.g. schedules.warmup(100)) or None")
        if schedule is not None:
            build, own_ranges = _scheduled(build, schedule), {**own_ranges, **schedule.ranges}
        if not isinstance(orthogonal, bool):
            raise ConfigError("orthogonal", f"got {orthogonal!r}", "use True (⊥Grad before the optimizer) or False")
        if orthogonal:
            build = _orthogonal(build)
        values = {**own_defaults, **overrides, **({} if schedule is None else schedule.defaults)}
        opt = Optimizer(name, values, own_ranges, None, schedule, orthogonal)
        for k, v in values.items():
            opt.check(k, v)
        return opt._replace(tx=optax.inject_hyperparams(build)(**{k: float(v) for k, v in values.items()}))
    constructor.__name__ = name
    constructor.__doc__ = (f"The '{name}' optimizer; hyperparameters and defaults: {defaults}"
                           + ("" if "weight_decay" in defaults else "; weight_decay= adds decoupled weight decay")
                           + "; l2= adds coupled L2 (l2/2 ||theta||^2 in the objective)"
                           + "; clip_norm= clips the gradient's global norm first"
                           + "; orthogonal=True applies ⊥Grad to the gradient first.")
    return constructor


def hyperparams(opt_state) -> dict:
    """{name: value} of the hyperparameters held in an optimizer state."""
    return opt_state.hyperparams


def with_hyperparams(opt_state, **values):
    """`opt_state` with the given hyperparameters replaced (each cast to the dtype the
    state holds it in): how a run's own values, and a learning rate chosen mid-run,
    reach the optimizer."""
    held = opt_state.hyperparams
    return opt_state._replace(hyperparams={**held, **{k: jnp.asarray(v, held[k].dtype) for k, v in values.items()}})


_ADAPTIVE = {"lr": POSITIVE, "b1": UNIT, "b2": UNIT, "eps": NONNEGATIVE}

gd = _make("gd", lambda lr: optax.sgd(lr), {"lr": 0.01}, {"lr": POSITIVE})
momentum = _make("momentum", lambda lr, momentum: optax.sgd(lr, momentum=momentum),
                 {"lr": 0.01, "momentum": 0.9}, {"lr": POSITIVE, "momentum": UNIT})
nesterov = _make("nesterov", lambda lr, momentum: optax.sgd(lr, momentum=momentum, nesterov=True),
                 {"lr": 0.01, "momentum": 0.9}, {"lr": POSITIVE, "momentum": UNIT})
adam = _make("adam", lambda lr, b1, b2, eps: optax.adam(lr, b1=b1, b2=b2, eps=eps),
             {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}, _ADAPTIVE)
adamw = _make("adamw", lambda lr, b1, b2, eps, weight_decay: optax.adamw(lr, b1=b1, b2=b2, eps=eps,
                                                                         weight_decay=weight_decay),
              {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
              {**_ADAPTIVE, "weight_decay": NONNEGATIVE})


class RawAdamState(NamedTuple):
    mu: optax.Updates
    nu: optax.Updates


def _raw_adam(lr, b1, b2, eps) -> optax.GradientTransformation:
    """Adam's moment estimates without bias correction, scaled by -lr."""
    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return RawAdamState(zeros, zeros)

    def update(g, state, params=None):
        mu = jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, state.mu, g)
        nu = jax.tree.map(lambda v, x: b2 * v + (1 - b2) * x * x, state.nu, g)
        step = jax.tree.map(lambda m, v: -lr * m / (jnp.sqrt(v) + eps), mu, nu)
        return step, RawAdamState(mu, nu)

    return optax.GradientTransformation(init, update)


adam_raw = _make("adam_raw", _raw_adam, {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 0.0}, _ADAPTIVE)
rmsprop = _make("rmsprop", lambda lr, decay, eps: optax.rmsprop(lr, decay=decay, eps=eps),
                {"lr": 1e-3, "decay": 0.9, "eps": 1e-8}, {"lr": POSITIVE, "decay": UNIT, "eps": NONNEGATIVE})
adagrad = _make("adagrad", lambda lr, eps: optax.adagrad(lr, eps=eps),
                {"lr": 1e-2, "eps": 1e-7}, {"lr": POSITIVE, "eps": NONNEGATIVE})
lion = _make("lion", lambda lr, b1, b2, weight_decay: optax.lion(lr, b1=b1, b2=b2, weight_decay=weight_decay),
             {"lr": 1e-4, "b1": 0.9, "b2": 0.99, "weight_decay": 0.0},
             {"lr": POSITIVE, "b1": UNIT, "b2": UNIT, "weight_decay": NONNEGATIVE})

OPTIMIZERS = {f.__name__: f for f in (gd, momentum, nesterov, adam, adamw, adam_raw, rmsprop, adagrad, lion)}


def optimizer(name: str, **defaults) -> Optimizer:
    """The optimizer called `name` with default hyperparameters overridden by `defaults`."""
    return choose(name, OPTIMIZERS, "optimizer")(**defaults)


# ----------------------------------------------------------------------------- preconditioners
PRECONDITIONED = ("adam", "adamw", "rmsprop", "adagrad")


def _find_state(opt_state, cls):
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, cls))
             if isinstance(s, cls)]
    return found[0] if found else None


def preconditioner(opt_state):
    """The diagonal preconditioner P (a pytree like params) read from optax's own state,
    so that the optimizer's next update is -lr P^-1 m (m the momentum, or the gradient):

    adam/adamw (ScaleByAdamState):  P_t = (1 - b1^t) (sqrt(v_t / (1 - b2^t)) + eps)
                                    (Cohen et al. 2022); before the first step (t = 0)
                                    P is undefined and returned as NaN
    rmsprop (ScaleByRmsState):      P = sqrt(v + eps)
    adagrad (ScaleByRssState):      P = sqrt(sum g^2 + eps)

    b1, b2 and eps are the values the state holds (`hyperparams`).
    """
    h = hyperparams(opt_state)
    adam = _find_state(opt_state, optax.ScaleByAdamState)
    if adam is not None:
        t = adam.count.astype(jnp.result_type(float))
        b1, b2, eps = h["b1"], h["b2"], h["eps"]
        defined = jnp.where(t > 0, 1.0, jnp.nan)
        return jax.tree.map(lambda v: defined * (1 - b1**t) * (jnp.sqrt(v / (1 - b2**t)) + eps), adam.nu)
    rms = _find_state(opt_state, optax.ScaleByRmsState)
    if rms is not None:
        return jax.tree.map(lambda v: jnp.sqrt(v + h["eps"]), rms.nu)
    rss = _find_state(opt_state, optax.ScaleByRssState)
    if rss is not None:
        return jax.tree.map(lambda v: jnp.sqrt(v + h["eps"]), rss.sum_of_squares)
    raise ConfigError("optimizer", "the optimizer state holds no diagonal preconditioner",
                      f"use one of {', '.join(PRECONDITIONED)}")


def stability_threshold(optimizer: Optimizer, hparams: dict):
    """The largest (preconditioned) sharpness at which the optimizer is stable on a
    quadratic:
        gd        2 / lr
        momentum  (2 + 2 beta) / lr                 (heavy ball)
        nesterov  (2 + 2 beta) / ((1 + 2 beta) lr)
        adam(w)   (2 + 2 b1) / ((1 - b1) lr)  = 38/lr at b1 = 0.9, for lambda_max(P^-1 H)
                  (Cohen et al. 2022); Bai et al. 2025 write the same condition as
                  lambda_max(H_hat) < 2/lr with H_hat = ((1 - b1)/(1 + b1)) P^-1 H
        rmsprop, adagrad  2 / lr  for lambda_max(P^-1 H)
    Under a schedule pass the rate in force (`learning_rate(state)`, recorded as
    `scheduled_lr`): the threshold moves with it, 2 / eta_t for GD. Under ⊥Grad
    (`orthogonal=True`) the step is not a (preconditioned) gradient step, so these
    thresholds do not apply: a ConfigError.
    """
    if optimizer.orthogonal:
        raise ConfigError("optimizer", f"'{optimizer.name}' with ⊥Grad has no known stability threshold",
                          "use the optimizer without orthogonal=True")
    h = {**optimizer.defaults, **hparams}
    lr = h["lr"]
    if optimizer.name == "gd":
        return 2 / lr
    if optimizer.name == "momentum":
        return (2 + 2 * h["momentum"]) / lr
    if optimizer.name == "nesterov":
        return (2 + 2 * h["momentum"]) / ((1 + 2 * h["momentum"]) * lr)
    if optimizer.name in ("adam", "adamw", "adam_raw"):
        return (2 + 2 * h["b1"]) / ((1 - h["b1"]) * lr)
    if optimizer.name in ("rmsprop", "adagrad"):
        return 2 / lr
    raise ConfigError("optimizer", f"no stability threshold is known for '{optimizer.name}'",
                      "use gd, momentum, nesterov, adam, adamw, rmsprop or adagrad")
