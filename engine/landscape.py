"""Loss-landscape slices: the loss on a 1-D or 2-D grid of directions around saved
parameters (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the Loss Landscape
of Neural Nets"), the whole grid one compiled, batched evaluation.

    directions(key, params, count)          count random directions, filter-normalized
    along(params, vectors)                  given directions (e.g. top eigenvectors
                                            from `engine.curvature`), as pytrees
    slice_loss(loss_fn, params, dirs, grid) L(theta + sum_k a_k d_k) on the grid:
                                            [len(grid)] * len(dirs)
    curvature_at_centre(values, grid)       the second difference at a = 0 along each
                                            direction: ~ d^T H d
    stepped_curvature(values, fine)         the same at each step size of a symmetric
                                            grid: how d^T H d reads as the step shrinks
    kink_distance(params, d, x)             how far along d the first ReLU kink of a
                                            two-layer network on x lies

Filter normalization (their Section 4): a Gaussian direction d is rescaled filter by
filter so that each filter has the norm of the same filter of theta,
d_f <- d_f ||theta_f|| / ||d_f||; a filter is one output unit: the slice along the
last axis of a weight of two or more dimensions (a dense layer's column w[:, j] in
`engine.models.mlp`'s [fan_in, fan_out] layout, a convolution's output channel).
Directions are zero on one-dimensional leaves (biases, norms), as in their default,
so the slice compares networks of any scale: a direction moves each unit by its own
size. Saved parameters come from `simulation(snapshots=[...])`
(`params_snapshot`, `sim.unravel`) or `simulate.final_params`; `sim.loss_at(params)`
is the training loss to slice.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from engine.errors import require


def _filter_normalized(d, w):
    """d rescaled per output unit (last axis) to the norms of w's; zero on 1-D leaves."""
    if w.ndim < 2:
        return jnp.zeros_like(w)
    axes = tuple(range(w.ndim - 1))
    scale = jnp.linalg.norm(w, axis=axes, keepdims=True) / jnp.maximum(jnp.linalg.norm(d, axis=axes, keepdims=True),
                                                                        jnp.finfo(w.dtype).tiny)
    return d * scale


def directions(key, params, count: int = 2, normalize: str = "filter") -> list:
    """`count` random directions shaped like params: Gaussian, then filter-normalized
    (normalize="filter") or left as drawn ("none")."""
    require(isinstance(count, int) and not isinstance(count, bool) and count >= 1, "landscape.count",
            f"got {count!r}", "use 1 (a 1-D slice) or 2 (a 2-D slice)")
    require(normalize in ("filter", "none"), "landscape.normalize", f"unknown value {normalize!r}",
            "use 'filter' or 'none'")
    leaves, tree = jax.tree.flatten(params)
    out = []
    for k in jax.random.split(key, count):
        drawn = [jax.random.normal(kk, w.shape, w.dtype) for kk, w in zip(jax.random.split(k, len(leaves)), leaves)]
        if normalize == "filter":
            drawn = [_filter_normalized(d, w) for d, w in zip(drawn, leaves)]
        out.append(jax.tree.unflatten(tree, drawn))
    return out


def along(params, vectors) -> list:
    """Flat vectors [k, n] (e.g. `curvature.top_eigenvalues(...).vectors`) as direction pytrees."""
    unravel = ravel_pytree(params)[1]
    return [unravel(v) for v in jnp.atleast_2d(jnp.asarray(vectors))]


def saved_params(sim, ds, step: int, **run):
    """The parameters one run saved at `step` (`simulation(snapshots=[...])`): `run`
    picks the run by its coordinates (seed=0, lr=0.1, ...). ConfigError for a step that
    was not saved."""
    require("params_snapshot" in ds, "snapshots", "the results hold no parameter snapshots",
            "run the simulation with snapshots=[steps] and load them (sweep.load reads the .snapshots.nc beside)")
    saved = [int(t) for t in ds.snapshot_step.values]
    require(step in saved, "step", f"step {step} was not saved", f"use one of {saved}")
    row = ds.params_snapshot.sel(snapshot_step=step, **run)
    require(row.ndim == 1, "run", f"{dict(run)} leaves dims {[d for d in row.dims if d != 'parameter']}",
            "give a coordinate for every run dimension")
    return sim.unravel(jnp.asarray(row.values))


def check_grid(grid) -> np.ndarray:
    """The grid of step sizes along each direction, [m] with m >= 3 sorted values
    containing 0 (so the centre is on it); ConfigError otherwise."""
    g = np.asarray(grid, float)
    require(g.ndim == 1 and g.size >= 3, "landscape.grid", f"got {g.size} point(s)",
            "give at least 3 values, e.g. numpy.linspace(-1, 1, 21)")
    require(np.all(np.diff(g) > 0) and np.any(g == 0), "landscape.grid", "is not increasing through 0",
            "give increasing values that include 0, e.g. numpy.linspace(-1, 1, 21)")
    return g


def slice_loss(loss_fn: Callable, params, dirs: list, grid, batch_size: int | None = 64) -> jax.Array:
    """L(theta + sum_k a_k d_k) for every a in grid^len(dirs): [m] or [m, m]. Evaluated
    as one `lax.map` over the grid points, `batch_size` at a time (vmapped within)."""
    require(1 <= len(dirs) <= 2, "landscape.dirs", f"got {len(dirs)} directions", "give 1 or 2")
    g = jnp.asarray(check_grid(grid), ravel_pytree(params)[0].dtype)
    mesh = jnp.stack(jnp.meshgrid(*([g] * len(dirs)), indexing="ij"), -1).reshape(-1, len(dirs))

    def at(a):
        return loss_fn(jax.tree.map(lambda p, *ds: p + sum(ak * d for ak, d in zip(a, ds)), params, *dirs))

    values = jax.jit(lambda m: jax.lax.map(at, m, batch_size=batch_size))(mesh)
    return values.reshape((g.size,) * len(dirs))


def curvature_at_centre(values, grid) -> np.ndarray:
    """The second difference (L(h) - 2 L(0) + L(-h')) ... at the centre along each axis
    of `values` ([m] or [m, m] from `slice_loss`), with the grid's neighbours of 0:
    2 (h' L(h) + h L(-h') - (h + h') L(0)) / (h h' (h + h')), ~ d^T H d for direction d."""
    g = check_grid(grid)
    values = np.asarray(values, float)
    c = int(np.flatnonzero(g == 0)[0])
    require(0 < c < g.size - 1, "landscape.grid", "0 is at an end of the grid", "put 0 inside the grid")
    h, h_ = g[c + 1], -g[c - 1]
    out = []
    for axis in range(values.ndim):
        line = values[(c,) * axis + (slice(None),) + (c,) * (values.ndim - axis - 1)]
        out.append(2 * (h_ * line[c + 1] + h * line[c - 1] - (h + h_) * line[c]) / (h * h_ * (h + h_)))
    return np.asarray(out)


def stepped_curvature(values, fine) -> np.ndarray:
    """[steps, directions]: `curvature_at_centre` on each symmetric pair of the grid
    `fine` = (-h_m, ..., -h_1, 0, h_1, ..., h_m) around the centre of `values` ([m'] or
    [m', m'] from `slice_loss` on `fine`), from the smallest step h_1 to the largest: a
    smooth loss gives d^T H d at every step (to O(h^2)), a kink within h changes it."""
    g = check_grid(fine)
    values = np.asarray(values, float)
    c = g.size // 2
    require(g.size % 2 == 1 and g[c] == 0 and np.allclose(g[c + 1:], -g[:c][::-1]), "landscape.fine",
            "is not symmetric about a 0 at its centre", "use concatenate([-steps[::-1], [0], steps])")
    out = []
    for j in range(1, c + 1):
        pick = np.array([c - j, c, c + j])
        out.append(curvature_at_centre(values[np.ix_(*[pick] * values.ndim)], g[pick]))
    return np.asarray(out)


def kink_distance(params, d, x) -> float:
    """The parameter distance along direction d to the nearest ReLU kink of a training
    point in the first layer of an `engine.models.mlp` (params[0] = {"w", "b"}): the
    least a ||d|| over units k and examples i with w_k x_i + b_k + a (dw_k x_i + db_k) =
    0. A second difference with a step below it sees the loss as smooth."""
    pre = x @ params[0]["w"] + params[0]["b"]
    rate = x @ d[0]["w"] + d[0]["b"]
    a = jnp.abs(pre) / jnp.maximum(jnp.abs(rate), jnp.finfo(pre.dtype).tiny)
    return float(jnp.min(a) * jnp.linalg.norm(ravel_pytree(d)[0]))
