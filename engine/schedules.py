"""Learning-rate schedules whose numbers are traced hyperparameters.

A schedule is the factor s(t) that multiplies the optimizer's peak rate `lr`: the t-th
update (t = 0, 1, ...) is taken with lr_t = lr * s(t). Its numbers (`warmup_steps`,
`decay_start`, `final_lr_fraction`, ...) are hyperparameters of the run like `lr`
itself: they live in the optimizer state (`engine.optim`), so a grid over warmup length
x peak rate x seeds is one compiled program. optax's schedule functions check their
arguments in Python (`if decay_steps <= 0`), which a traced value cannot pass, so the
shapes are written here in `jnp` and tested against optax's, evaluated one run at a
time.

    constant()                                   s = 1
    warmup(warmup_steps)                         s = min(t / w, 1) (s = 1 for w = 0)
    warmup_cosine(warmup_steps, decay_steps,     warmup, then a cosine from 1 to f that
                  final_lr_fraction)             ends at t = decay_steps (optax's
                                                 warmup_cosine_decay_schedule)
    wsd(warmup_steps, decay_start, decay_steps,  warmup-stable-decay (Hägele et al. 2024,
        final_lr_fraction, shape)                Wen et al. 2024): warmup, 1 until
                                                 decay_start, then to f over decay_steps
                                                 with shape "linear", "cosine" or
                                                 "1-sqrt", then f
    step_decay(decay_every, decay_factor)        s = factor^floor(t / every)

`shape` is a name, not a number, so it is fixed when the schedule is built.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

from engine.errors import UNIT, Range, choose

STEPS = Range(0)  # a number of steps; simulation() also bounds it by the run's length


class Schedule(NamedTuple):
    """name; defaults: {hyperparameter: value}; ranges: {hyperparameter: `errors.Range`};
    steps: the hyperparameters that count steps (each must fit in the run);
    factor(t, **hyperparameters) -> s(t), the multiplier of the peak rate at update t."""
    name: str
    defaults: dict
    ranges: dict
    steps: tuple
    factor: Callable


def _ramp(t, start, length):
    """0 before `start`, rising linearly to 1 at start + length, 1 after (a step at
    `start` when length is 0)."""
    t = jnp.asarray(t, jnp.result_type(float))
    return jnp.where(length > 0, jnp.clip((t - start) / jnp.where(length > 0, length, 1.0), 0.0, 1.0),
                     (t >= start).astype(t.dtype))


def _warmup_factor(t, warmup_steps):
    return _ramp(t, 0.0, warmup_steps)


DECAY_SHAPES = {
    "linear": lambda s, f: 1.0 - (1.0 - f) * s,
    "cosine": lambda s, f: f + (1.0 - f) * 0.5 * (1.0 + jnp.cos(jnp.pi * s)),
    "1-sqrt": lambda s, f: 1.0 - (1.0 - f) * jnp.sqrt(s),
}


def constant() -> Schedule:
    return Schedule("constant", {}, {}, (), lambda t: jnp.ones((), jnp.result_type(float)))


def warmup(warmup_steps: float = 100.0) -> Schedule:
    """Linear warmup from 0 to the peak rate over `warmup_steps`, then constant."""
    return Schedule("warmup", {"warmup_steps": warmup_steps}, {"warmup_steps": STEPS}, ("warmup_steps",),
                    _warmup_factor)


def warmup_cosine(warmup_steps: float = 0.0, decay_steps: float = 1000.0,
                  final_lr_fraction: float = 0.0) -> Schedule:
    """Linear warmup over `warmup_steps`, then a cosine from 1 to `final_lr_fraction`
    reached at update `decay_steps` (counted from 0, warmup included), then constant."""
    def factor(t, warmup_steps, decay_steps, final_lr_fraction):
        s = _ramp(t, warmup_steps, decay_steps - warmup_steps)
        return _warmup_factor(t, warmup_steps) * DECAY_SHAPES["cosine"](s, final_lr_fraction)
    return Schedule("warmup_cosine", {"warmup_steps": warmup_steps, "decay_steps": decay_steps,
                                      "final_lr_fraction": final_lr_fraction},
                    {"warmup_steps": STEPS, "decay_steps": STEPS, "final_lr_fraction": UNIT},
                    ("warmup_steps", "decay_steps"), factor)


def wsd(warmup_steps: float = 0.0, decay_start: float = 800.0, decay_steps: float = 200.0,
        final_lr_fraction: float = 0.0, shape: str = "linear") -> Schedule:
    """Warmup-stable-decay: warmup over `warmup_steps`, the peak rate until
    `decay_start`, a decay of `shape` to `final_lr_fraction` over `decay_steps`, then
    constant."""
    decay = choose(shape, DECAY_SHAPES, "schedule.shape")

    def factor(t, warmup_steps, decay_start, decay_steps, final_lr_fraction):
        return _warmup_factor(t, warmup_steps) * decay(_ramp(t, decay_start, decay_steps), final_lr_fraction)
    return Schedule(f"wsd_{shape}", {"warmup_steps": warmup_steps, "decay_start": decay_start,
                                     "decay_steps": decay_steps, "final_lr_fraction": final_lr_fraction},
                    {"warmup_steps": STEPS, "decay_start": STEPS, "decay_steps": STEPS, "final_lr_fraction": UNIT},
                    ("warmup_steps", "decay_start", "decay_steps"), factor)


def step_decay(decay_every: float = 1000.0, decay_factor: float = 0.1) -> Schedule:
    """The peak rate times decay_factor^k after k * decay_every updates."""
    def factor(t, decay_every, decay_factor):
        return decay_factor ** jnp.floor(jnp.asarray(t, jnp.result_type(float)) / decay_every)
    return Schedule("step_decay", {"decay_every": decay_every, "decay_factor": decay_factor},
                    {"decay_every": Range(1), "decay_factor": Range(0, 1, lo_open=True)}, ("decay_every",), factor)


SCHEDULES = {f.__name__: f for f in (constant, warmup, warmup_cosine, wsd, step_decay)}


def schedule(name: str, **values) -> Schedule:
    """The schedule called `name` with its defaults overridden by `values`."""
    return choose(name, SCHEDULES, "schedule")(**values)
