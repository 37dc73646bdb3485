"""Losses `loss(y_pred: [n, k], y: [n, k]) -> scalar`.

- `mse`: 0.5 * sum over outputs of the squared error, mean over examples,
  L = (1/n) sum_i 0.5 ||f(x_i) - y_i||^2, the convention of Cohen et al. 2021, so that
  the Hessian of a linear model is X^T X / n and GD is stable iff lambda_max < 2/eta.
- `cross_entropy`: softmax cross-entropy with one-hot (or soft) targets, mean over
  examples, computed from log-softmax (stable for large logits).
- `power(k)`: L = sum f^k / k, whatever the target: with `engine.models.scalar()` the
  degenerate polynomial x^k / k of one parameter (Bai et al. 2026; k = 2, a quadratic).
- `stablemax_cross_entropy`: cross-entropy through StableMax (Prieto et al. 2025),
  p_i = s(x_i) / sum_j s(x_j), s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0), computed in
  log space; it does not collapse where the softmax does.
- `cross_entropy_in(precision)` ("cross_entropy_float16" / "_float32" / "_float64"):
  softmax cross-entropy with the logits cast to that float type first, so Softmax
  Collapse (Prieto et al. 2025) can be shown: once the correct logit leads by more than
  the type resolves, its loss and gradient are exactly 0.
- `next_token_cross_entropy`: the softmax cross-entropy of per-position logits
  y_pred [n, L, V] (`engine.models.transformer(readout="all")`) against the next token
  ids y [n, L] (floats, as `engine.data` stores tokens), averaged over every position
  whose target id is >= 0 (a negative id masks a position out, e.g. a prompt).
- `weighted(fn, w)`: any of these (all means over examples) as the weighted mean
  sum_i w_i l_i / sum_i w_i; a split drawn per run (`simulation(train_fraction=...)`)
  weighs its training examples 1 and the rest 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import ConfigError, choose


def mse(y_pred, y):
    return 0.5 * jnp.mean(jnp.sum(jnp.square(y_pred - y), axis=-1))


def cross_entropy(y_pred, y):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(y_pred, axis=-1), axis=-1))


def next_token_cross_entropy(y_pred, y):
    """-mean over the unmasked positions (y >= 0) of log softmax(y_pred)[target]:
    y_pred [n, L, V] logits, y [n, L] target token ids as floats (negative: ignored)."""
    ids = y.astype(jnp.int32)
    keep = (ids >= 0).astype(y_pred.dtype)
    logp = jnp.take_along_axis(jax.nn.log_softmax(y_pred, axis=-1), jnp.maximum(ids, 0)[..., None], -1)[..., 0]
    return -jnp.sum(keep * logp) / jnp.maximum(jnp.sum(keep), 1.0)


def accuracy(y_pred, y):
    """Fraction of examples whose largest output is the target class (one-hot y)."""
    return jnp.mean(jnp.argmax(y_pred, -1) == jnp.argmax(y, -1))


def power(k: int):
    """The loss `sum(y_pred^k) / k` (targets ignored), named "power_k"."""
    def loss(y_pred, y):
        return jnp.sum(y_pred ** k) / k
    loss.__name__ = f"power_{k}"
    return loss


def log_stablemax(x, axis: int = -1):
    """log p_i of StableMax (Prieto et al. 2025): p_i = s(x_i) / sum_j s(x_j) with
    s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0. In log space for any finite x:
    log s(x) = log1p(x) (x >= 0), -log1p(-x) (x < 0), and log sum_j s(x_j) a logsumexp
    of those, so neither s nor its sum overflows (the reference code instead computes
    s / sum s in float64). Each branch sees only its own side of 0, so the gradient is
    finite everywhere (s is C^1: s'(0) = 1 from both sides). x: [..., k]; same shape."""
    log_s = jnp.where(x >= 0, jnp.log1p(jnp.where(x >= 0, x, 0)), -jnp.log1p(jnp.where(x < 0, -x, 0)))
    return log_s - jax.nn.logsumexp(log_s, axis=axis, keepdims=True)


def stablemax(x, axis: int = -1):
    """StableMax probabilities p_i = s(x_i) / sum_j s(x_j) (see `log_stablemax`)."""
    return jnp.exp(log_stablemax(x, axis))


def stablemax_cross_entropy(y_pred, y):
    """-mean_examples sum_i y_i log p_i with StableMax p (Prieto et al. 2025), one-hot (or
    soft) targets y: [n, k]; computed in the logits' float type."""
    return -jnp.mean(jnp.sum(y * log_stablemax(y_pred), axis=-1))


PRECISIONS = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32, "float64": jnp.float64}


def check_precision(precision: str):
    """The numpy float type called `precision`, if JAX computes in it as configured now;
    ConfigError otherwise (unknown name, or float64 while jax_enable_x64 is off, where
    JAX would silently compute in float32)."""
    dtype = np.dtype(choose(precision, PRECISIONS, "loss"))
    got = jax.dtypes.canonicalize_dtype(dtype)
    if got != dtype:
        raise ConfigError("loss", f"{precision} was asked for but JAX is configured to compute in {got} "
                          "(jax_enable_x64 is off)", "run under engine.sweep.sweep(..., x64=True) or "
                          "sweep.precision(True) (--x64 for an experiment), or pick float32")
    return dtype


def cross_entropy_in(precision: str):
    """Softmax cross-entropy computed in `precision` (float16, bfloat16, float32,
    float64): logits and targets cast to it before the log-softmax, as Prieto et al.
    2025 do to show Softmax Collapse; the loss is returned in the wider of that type and
    the logits' (so a float16 loss of a float32 model is recorded as float32, after
    its rounding). Named "cross_entropy_<precision>". Whether JAX computes in that type
    is checked when the loss is traced (`check_precision`), which `engine.sweep` does
    before compiling; float64 needs x64 (`sweep(..., x64=True)`)."""
    choose(precision, PRECISIONS, "loss")  # a bad name fails here, when the loss is built

    def loss(y_pred, y):
        dtype = check_precision(precision)
        logp = jax.nn.log_softmax(y_pred.astype(dtype), axis=-1)
        value = -jnp.mean(jnp.sum(y.astype(dtype) * logp, axis=-1))
        return value.astype(jnp.promote_types(dtype, y_pred.dtype))
    loss.__name__ = f"cross_entropy_{precision}"
    return loss


LOSSES = {"mse": mse, "cross_entropy": cross_entropy, "stablemax_cross_entropy": stablemax_cross_entropy,
          "next_token_cross_entropy": next_token_cross_entropy,
          **{f"cross_entropy_{k}": cross_entropy_in(k) for k in ("float16", "float32", "float64")}}


def weighted(fn, weights):
    """fn as a weighted mean over examples: (y_pred [n, d], y [n, d]) ->
    sum_i w_i fn(y_pred_i, y_i) / sum_i w_i, for an `fn` that is a mean over examples
    (every loss here, and `accuracy`); weights: [n] (0 / 1 for a split of the
    examples; 0 where every weight is 0)."""
    def mean(y_pred, y):
        per_example = jax.vmap(lambda a, b: fn(a[None], b[None]))(y_pred, y)
        per_example = per_example.astype(jnp.promote_types(per_example.dtype, jnp.float32))  # bool, float16
        w = weights.astype(per_example.dtype)
        return jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1e-30)
    return mean


def loss_function(name: str):
    return choose(name, LOSSES, "loss")
