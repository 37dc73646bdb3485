"""What is measured along a run, every `every` steps, inside the compiled loop.

A `Probe(name, measure, dims, init, needs)` measures one quantity of a `Snapshot` of the
run: `measure(snapshot, state) -> (value, state)`, where `state` (from
`init(params)`, or None) is what the probe carries from one measurement to the next
(e.g. a warm-start eigenvector). `dims` names the value's trailing dimensions, such
as ("layer",). Values are fixed-size arrays, so a whole trajectory is one array.

Built-in probes (names shared by every experiment):
    loss, test_loss            training / test loss
    accuracy, test_accuracy    argmax accuracy (classification targets)
    param_norm                 ||theta_t||
    grad_norm                  ||grad L(theta_t)||
    relative_change            ||theta_t - theta_0|| / ||theta_0||
    relative_change_layer      the same per layer, dims ("layer",)  (Luo et al. 2021:
                               RD(theta_w) of the input layer is layer "0")
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from engine import losses
from engine.errors import ConfigError
from engine.models import layers


class Snapshot(NamedTuple):
    """The run at a record step. `loss_fn(params) -> scalar` is the training loss on
    the full training set; `predict(params, x)` the model."""
    params: Any
    params0: Any
    loss_fn: Callable
    predict: Callable
    data: Any
    loss: Callable
    opt_state: Any
    hparams: dict
    key: jax.Array


class Probe(NamedTuple):
    name: str
    measure: Callable[[Snapshot, Any], tuple]
    dims: tuple = ()
    init: Callable[[Any], Any] | None = None
    needs: frozenset = frozenset()  # among {"test", "classification"}


def norm(tree) -> jax.Array:
    """Euclidean norm of a pytree viewed as one vector."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def relative_change(params, params0) -> jax.Array:
    """||theta - theta_0|| / ||theta_0||."""
    return norm(jax.tree.map(jnp.subtract, params, params0)) / norm(params0)


def stateless(fn):
    return lambda snap, state: (fn(snap), state)


BUILTIN = {
    "loss": Probe("loss", stateless(lambda s: s.loss_fn(s.params))),
    "test_loss": Probe("test_loss", stateless(
        lambda s: s.loss(s.predict(s.params, s.data.x_test), s.data.y_test)), needs=frozenset({"test"})),
    "accuracy": Probe("accuracy", stateless(
        lambda s: losses.accuracy(s.predict(s.params, s.data.x), s.data.y)),
        needs=frozenset({"classification"})),
    "test_accuracy": Probe("test_accuracy", stateless(
        lambda s: losses.accuracy(s.predict(s.params, s.data.x_test), s.data.y_test)),
        needs=frozenset({"classification", "test"})),
    "param_norm": Probe("param_norm", stateless(lambda s: norm(s.params))),
    "grad_norm": Probe("grad_norm", stateless(lambda s: norm(jax.grad(s.loss_fn)(s.params)))),
    "relative_change": Probe("relative_change", stateless(
        lambda s: relative_change(s.params, s.params0))),
    "relative_change_layer": Probe("relative_change_layer", stateless(
        lambda s: jnp.stack([relative_change(p, p0) for (_, p), (_, p0)
                             in zip(layers(s.params), layers(s.params0))])), dims=("layer",)),
}


def resolve(probes) -> tuple[Probe, ...]:
    """Probe objects from names or `Probe`s; a ConfigError for an unknown name."""
    out = []
    for p in probes:
        if isinstance(p, Probe):
            out.append(p)
        elif isinstance(p, str) and p in BUILTIN:
            out.append(BUILTIN[p])
        else:
            raise ConfigError("probes", f"unknown probe {p!r}",
                              f"use engine.probes.Probe or one of {', '.join(BUILTIN)}")
    names = [p.name for p in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError("probes", f"probe {sorted(dup)[0]!r} is listed twice", "list each probe once")
    return tuple(out)
