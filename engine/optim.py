"""Optax optimizers whose hyperparameters are traced values of a sweep.

An `Optimizer(name, defaults, ranges, build)` builds an `optax.GradientTransformation`
from a dict of (possibly traced, vmapped) scalars: `build(hparams)`. The names in
`defaults` are the hyperparameters it reads; a sweep may set any of them per run.

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
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from engine.errors import ConfigError, choose, require


class Optimizer(NamedTuple):
    name: str
    defaults: dict
    ranges: dict  # name -> (low, high): the closed interval a value must lie in
    build: Callable[[dict], optax.GradientTransformation]


INF = math.inf
_LR = (0.0, INF)
_BETA = (0.0, 1.0)


def _make(name, build, defaults, ranges):
    def constructor(**overrides):
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ConfigError(f"optimizer.{sorted(unknown)[0]}",
                              f"'{name}' has no hyperparameter {sorted(unknown)[0]!r}",
                              f"use one of {', '.join(defaults)}")
        return Optimizer(name, {**defaults, **overrides}, ranges, build)
    constructor.__name__ = name
    constructor.__doc__ = f"The '{name}' optimizer; hyperparameters and defaults: {defaults}."
    return constructor


gd = _make("gd", lambda h: optax.sgd(h["lr"]), {"lr": 0.01}, {"lr": _LR})
momentum = _make("momentum", lambda h: optax.sgd(h["lr"], momentum=h["momentum"]),
                 {"lr": 0.01, "momentum": 0.9}, {"lr": _LR, "momentum": _BETA})
nesterov = _make("nesterov", lambda h: optax.sgd(h["lr"], momentum=h["momentum"], nesterov=True),
                 {"lr": 0.01, "momentum": 0.9}, {"lr": _LR, "momentum": _BETA})
adam = _make("adam", lambda h: optax.adam(h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"]),
             {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8},
             {"lr": _LR, "b1": _BETA, "b2": _BETA, "eps": (0.0, INF)})
adamw = _make("adamw", lambda h: optax.adamw(h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"],
                                             weight_decay=h["weight_decay"]),
              {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
              {"lr": _LR, "b1": _BETA, "b2": _BETA, "eps": (0.0, INF), "weight_decay": (0.0, INF)})
class RawAdamState(NamedTuple):
    mu: optax.Updates
    nu: optax.Updates


def _raw_adam(h) -> optax.GradientTransformation:
    """Adam's moment estimates without bias correction, scaled by -lr."""
    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return RawAdamState(zeros, zeros)

    def update(g, state, params=None):
        mu = jax.tree.map(lambda m, x: h["b1"] * m + (1 - h["b1"]) * x, state.mu, g)
        nu = jax.tree.map(lambda v, x: h["b2"] * v + (1 - h["b2"]) * x * x, state.nu, g)
        step = jax.tree.map(lambda m, v: -h["lr"] * m / (jnp.sqrt(v) + h["eps"]), mu, nu)
        return step, RawAdamState(mu, nu)

    return optax.GradientTransformation(init, update)


adam_raw = _make("adam_raw", _raw_adam, {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 0.0},
                 {"lr": _LR, "b1": _BETA, "b2": _BETA, "eps": (0.0, INF)})
rmsprop = _make("rmsprop", lambda h: optax.rmsprop(h["lr"], decay=h["decay"], eps=h["eps"]),
                {"lr": 1e-3, "decay": 0.9, "eps": 1e-8},
                {"lr": _LR, "decay": _BETA, "eps": (0.0, INF)})
adagrad = _make("adagrad", lambda h: optax.adagrad(h["lr"], eps=h["eps"]),
                {"lr": 1e-2, "eps": 1e-7}, {"lr": _LR, "eps": (0.0, INF)})
lion = _make("lion", lambda h: optax.lion(h["lr"], b1=h["b1"], b2=h["b2"],
                                          weight_decay=h["weight_decay"]),
             {"lr": 1e-4, "b1": 0.9, "b2": 0.99, "weight_decay": 0.0},
             {"lr": _LR, "b1": _BETA, "b2": _BETA, "weight_decay": (0.0, INF)})

OPTIMIZERS = {f.__name__: f for f in (gd, momentum, nesterov, adam, adamw, adam_raw, rmsprop, adagrad, lion)}


def optimizer(name: str, **defaults) -> Optimizer:
    """The optimizer called `name` with default hyperparameters overridden by `defaults`."""
    return choose(name, OPTIMIZERS, "optimizer")(**defaults)


def check_hyperparameter(opt: Optimizer, name: str, value: float) -> None:
    """ConfigError unless `value` lies in the optimizer's range for `name`."""
    if name not in opt.ranges:
        return
    lo, hi = opt.ranges[name]
    if not (isinstance(value, (int, float)) and lo <= value <= hi) or (name == "lr" and value <= 0):
        bound = "> 0" if name == "lr" else f"in [{lo}, {hi}]"
        raise ConfigError(name, f"{opt.name} got {value!r}", f"use a number {bound}")


# ----------------------------------------------------------------------------- preconditioners
PRECONDITIONED = ("adam", "adamw", "rmsprop", "adagrad")


def _find_state(opt_state, cls):
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, cls))
             if isinstance(s, cls)]
    return found[0] if found else None


def preconditioner(opt_state, hparams: dict):
    """The diagonal preconditioner P (a pytree like params) read from optax's own state,
    so that the optimizer's next update is -lr P^-1 m (m the momentum, or the gradient):

    adam/adamw (ScaleByAdamState):  P_t = (1 - b1^t) (sqrt(v_t / (1 - b2^t)) + eps)
                                    (Cohen et al. 2022); before the first step (t = 0)
                                    P is undefined and returned as NaN
    rmsprop (ScaleByRmsState):      P = sqrt(v + eps)
    adagrad (ScaleByRssState):      P = sqrt(sum g^2 + eps)

    `hparams` holds b1, b2, eps as the optimizer was built with.
    """
    adam = _find_state(opt_state, optax.ScaleByAdamState)
    if adam is not None:
        t = adam.count.astype(jnp.result_type(float))
        b1, b2, eps = hparams["b1"], hparams["b2"], hparams["eps"]
        defined = jnp.where(t > 0, 1.0, jnp.nan)
        return jax.tree.map(lambda v: defined * (1 - b1**t) * (jnp.sqrt(v / (1 - b2**t)) + eps), adam.nu)
    rms = _find_state(opt_state, optax.ScaleByRmsState)
    if rms is not None:
        return jax.tree.map(lambda v: jnp.sqrt(v + hparams["eps"]), rms.nu)
    rss = _find_state(opt_state, optax.ScaleByRssState)
    if rss is not None:
        return jax.tree.map(lambda v: jnp.sqrt(v + hparams["eps"]), rss.sum_of_squares)
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
    """
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
